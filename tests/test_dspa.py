import copy

import pytest
import torch

from dspa_lite import DSPA, generate
from dspa_lite.method.cdmap import CDMap
from dspa_lite.method.dspa import LatentEdit, fit_cdmap, masks_from
from dspa_lite.method.hooks import decoder_layers
from dspa_lite.method.saes import sae_layer


def _hook_counts(model):
    return [len(layer._forward_hooks) for layer in decoder_layers(model)]


def test_sae_layers(world):
    assert sae_layer(world.sae_in) == world.l_in and sae_layer(world.sae_out) == world.l_out


def test_cdmap_records_provenance(world, cdmap):
    assert cdmap.meta["l_in"] == world.l_in and cdmap.meta["l_out"] == world.l_out
    assert cdmap.meta["model_id"] == world.model_id
    assert cdmap.A.shape == (world.sae_in.cfg.d_sae, world.sae_out.cfg.d_sae)
    assert cdmap.meta["n_triples"] == len(world.triples("train"))


def test_k0_is_token_identical_to_generate(world, cdmap):
    prompts = world.prompts("test", 8)
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=0)
    assert steerer.generate(prompts, max_new_tokens=40, seed=5) == generate(
        world.model, world.tokenizer, prompts, max_new_tokens=40, seed=5)


def test_empty_and_inactive_edits_are_identity(world):
    d_sae = world.sae_out.cfg.d_sae
    h = torch.randn(2, 5, world.model.config.hidden_size)
    none = torch.zeros(2, d_sae, dtype=torch.bool)
    assert torch.equal(LatentEdit(world.sae_out, none, none, "both", 3.0)(h), h)
    z = world.sae_out.encode(h)
    inactive = (z[:, -1] <= 0)  # per row, the latents inactive on the edited (last) position
    out = LatentEdit(world.sae_out, inactive, inactive, "both", 3.0)(h)
    assert torch.equal(out, h), "token-active gating must not touch latents that are off"


def test_gated_edit_matches_a_reference(world):
    sae = world.sae_out
    h = torch.randn(1, 4, world.model.config.hidden_size)
    z = sae.encode(h)
    active = (z[0, -1] > 0).nonzero().flatten()
    neg, pos = active[:2], active[2:4]
    ed = LatentEdit(sae, masks_from(neg[None], sae.cfg.d_sae), masks_from(pos[None], sae.cfg.d_sae), "both", 2.0)
    out = ed(h)
    z_new = z.clone()
    z_new[0, -1, neg] = 0
    z_new[0, -1, pos] *= 3.0
    ref = h + (z_new - z) @ sae.W_dec
    torch.testing.assert_close(out, ref)
    assert torch.equal(out[0, :-1], h[0, :-1]), "only the decision position is edited in the first call"
    out2 = ed(h)  # later calls (one new token each under generate) edit every position given
    assert not torch.equal(out2[0, 0], h[0, 0]) or (z[0, 0, torch.cat([neg, pos])] == 0).all()


def test_ungated_injects_inactive_latents(world, cdmap):
    sae = world.sae_out
    h = torch.randn(1, 3, world.model.config.hidden_size)
    z = sae.encode(h)
    off = (z[0, -1] == 0).nonzero().flatten()[:3]
    mask = masks_from(off[None], sae.cfg.d_sae)
    none = torch.zeros_like(mask)
    gated = LatentEdit(sae, none, mask, "augment", 1.0)(h)
    ungated = LatentEdit(sae, none, mask, "augment", 1.0, gate="none", latent_mean=cdmap.latent_mean)(h)
    assert torch.equal(gated, h) and not torch.equal(ungated, h)


def test_batched_prompts_get_their_own_latent_sets(world, cdmap):
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, mode="both", k=16, alpha=3.0)
    prompts = [world.prompts("test", 4)[i] for i in (2, 3)]  # a chat and a risky prompt
    batched = steerer.scores(prompts)
    single = [steerer.scores(p) for p in prompts]
    for i in range(2):
        assert set(batched["K_pos"][i].tolist()) == set(single[i]["K_pos"].tolist())
    assert set(single[0]["K_pos"].tolist()) != set(single[1]["K_pos"].tolist())
    together = steerer.generate(prompts, max_new_tokens=30, temperature=0.0)
    alone = [steerer.generate([p], max_new_tokens=30, temperature=0.0)[0] for p in prompts]
    assert together == alone


@pytest.mark.parametrize("prefill", [False, True])
def test_hooks_removed_when_generation_raises(world, cdmap, prefill):
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=8, prefill=prefill)
    before = _hook_counts(world.model)
    original = steerer._new_edit

    def exploding(start=None):
        ed = original(start)
        inner = ed.__call__

        class Boom:
            def __call__(self, h):
                if ed.calls >= 2:
                    raise RuntimeError("boom inside generation")
                return inner(h)

            def __getattr__(self, name):
                return getattr(ed, name)

        return Boom()

    steerer._new_edit = exploding
    with pytest.raises(RuntimeError, match="boom"):
        steerer.generate(world.prompts("test", 2), max_new_tokens=10)
    assert _hook_counts(world.model) == before


def test_bad_inputs(world, cdmap):
    W = world
    with pytest.raises(ValueError, match="k=5000 must be between 0 and d_sae"):
        DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, k=5000)
    with pytest.raises(ValueError, match="mode='shout'"):
        DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, mode="shout")
    with pytest.raises(ValueError, match=r"sae_in reads layer 1 .* but is used at layer 2: are sae_in and sae_out"):
        fit_cdmap(W.model, W.tokenizer, W.sae_in, W.sae_out, W.triples("train")[:4], l_in=2, l_out=1)
    with pytest.raises(ValueError, match="sae_in reads layer 2"):  # swapped SAEs with the right layers
        fit_cdmap(W.model, W.tokenizer, W.sae_out, W.sae_in, W.triples("train")[:4], l_in=1, l_out=2)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        fit_cdmap(W.model, W.tokenizer, W.sae_in, W.sae_out, W.triples("train")[:4], l_in=1, l_out=9)
    wrong = copy.deepcopy(W.sae_out)
    wrong.cfg.d_in = 64
    with pytest.raises(ValueError, match="sae_out expects d_in=64 but layer 2 .* has hidden size 128"):
        DSPA(W.model, W.tokenizer, W.sae_in, wrong, cdmap)


def test_map_refuses_the_wrong_sae(world, cdmap, tmp_path):
    cdmap.save(tmp_path / "map")
    loaded = CDMap.load(tmp_path / "map")
    torch.testing.assert_close(loaded.A, cdmap.A)
    swapped = copy.deepcopy(world.sae_in)
    swapped.cfg.metadata.hook_name = f"model.layers.{world.l_out}"  # the input SAE posing as the output one
    with pytest.raises(ValueError, match="sae_out_id"):
        DSPA(world.model, world.tokenizer, world.sae_in, swapped, loaded)


def test_nan_activations_are_a_clear_error(world, cdmap):
    from dspa_lite.method.hooks import edit

    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=4)
    before = _hook_counts(world.model)
    with edit(world.model, 0, lambda h: h * float("nan")), pytest.raises(FloatingPointError, match="NaN/inf"):
        steerer.scores(world.prompts("test", 1)[0])
    assert _hook_counts(world.model) == before

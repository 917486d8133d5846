"""The new chapter 01-04 checks (dspa_lite.notebook.exercises.ch01_04) accept correct solutions and diagnose the
typical mistakes; the chapters' own constructions agree with the package."""

import random

import pytest
import torch

from dspa_lite.notebook.exercises import ch01_04 as ex


# ---------------------------------------------------------------- check_sae_encode (chapter 01)
def good_encode(sae, h):
    x = h - sae.b_dec * sae.cfg.apply_b_dec_to_input
    pre = x @ sae.W_enc + sae.b_enc
    z = torch.relu(pre)
    return z * (pre > sae.threshold) if hasattr(sae, "threshold") else z


def _gate(sae, pre):
    return (pre > sae.threshold) if hasattr(sae, "threshold") else 1.0


@pytest.mark.parametrize("wrong, message", [
    (lambda s, h: (h - s.b_dec * s.cfg.apply_b_dec_to_input) @ s.W_enc + s.b_enc, "never below 0"),
    (lambda s, h: torch.relu((h - s.b_dec * s.cfg.apply_b_dec_to_input) @ s.W_enc), "b_enc"),
    (lambda s, h: torch.relu(h @ s.W_enc + s.b_enc), "apply_b_dec_to_input is True"),
    (lambda s, h: torch.relu((h - s.b_dec) @ s.W_enc + s.b_enc), "apply_b_dec_to_input is False"),
    (lambda s, h: torch.relu((h + s.b_dec * s.cfg.apply_b_dec_to_input) @ s.W_enc + s.b_enc), "added b_dec"),
    (lambda s, h: torch.relu((h - s.b_dec * s.cfg.apply_b_dec_to_input) @ s.W_dec.T + s.b_enc), "W_dec.T"),
    (lambda s, h: torch.relu((h - s.b_dec * s.cfg.apply_b_dec_to_input) @ s.W_enc + s.b_enc), "JumpReLU"),
    (lambda s, h: torch.relu((h - s.b_dec * s.cfg.apply_b_dec_to_input) @ s.W_enc + s.b_enc
                             - getattr(s, "threshold", 0.0)), "shifted"),
    (lambda s, h: good_encode(s, h).reshape(-1, s.cfg.d_sae), "leading dimensions"),
])
def test_sae_encode(wrong, message):
    ex.check_sae_encode(good_encode)
    with pytest.raises(AssertionError, match=message):
        ex.check_sae_encode(wrong)


def test_sae_encode_check_agrees_with_sae_lens(world):
    """The check's SAE encodes as sae-lens does: the chapter's solution passes the check and matches SAE.encode."""
    h = torch.randn(3, 9, world.sae_out.cfg.d_in)
    assert world.sae_out.cfg.apply_b_dec_to_input and world.sae_out.cfg.normalize_activations == "none"
    assert torch.allclose(good_encode(world.sae_out, h), world.sae_out.encode(h), atol=1e-5)


# ---------------------------------------------------------------- check_sae_edit (chapter 01)
def good_edit(sae, change):
    def edit(h):
        z = sae.encode(h)
        return h + (change(z) - z) @ sae.W_dec
    return edit


def test_sae_edit():
    ex.check_sae_edit(good_edit)
    ex.check_sae_edit(lambda sae, change: lambda h: h + sae.decode(change(sae.encode(h))) - sae.decode(sae.encode(h)))
    for wrong, message in [
        (lambda sae, change: lambda h: sae.decode(change(sae.encode(h))), "error term"),
        (lambda sae, change: lambda h: h + change(sae.encode(h)) @ sae.W_dec, "only the change"),
        (lambda sae, change: lambda h: h - (change(sae.encode(h)) - sae.encode(h)) @ sae.W_dec, "wrong sign"),
        (lambda sae, change: lambda h: h + (change(sae.encode(h)) - sae.encode(h)) @ sae.W_enc.T, "decoder row"),
        (lambda sae, change: sae.encode, "differs"),
        (lambda sae, change: None, "return a function"),
    ]:
        with pytest.raises(AssertionError, match=message):
            ex.check_sae_edit(wrong)


def test_sae_edit_matches_latent_edit(world):
    """The chapter's edit with 'ablate every active latent k' is what LatentEdit does in ablate mode."""
    from dspa_lite.method.dspa import LatentEdit

    sae = world.sae_out
    h = torch.randn(1, 6, sae.cfg.d_in) * 3
    k = int(sae.encode(h).sum((0, 1)).argmax())

    def ablate(z):
        z = z.clone()
        z[..., k] = 0.0
        return z

    mask = torch.zeros(1, sae.cfg.d_sae, dtype=torch.bool)
    mask[0, k] = True
    ours = good_edit(sae, ablate)(h)
    theirs = LatentEdit(sae, mask, torch.zeros_like(mask), mode="ablate", alpha=0.0, every_position=True)(h)
    assert torch.allclose(ours, theirs, atol=1e-5)


# ---------------------------------------------------------------- check_top_activating (chapter 02)
def good_top(Z, latent, n):
    col = Z[:, latent]
    vals, idx = col.topk(min(n, int((col > 0).sum())))
    return idx


def test_top_activating():
    ex.check_top_activating(good_top)
    ex.check_top_activating(lambda Z, k, n: [i for i in Z[:, k].argsort(descending=True).tolist()[:n] if Z[i, k] > 0])
    for wrong, message in [
        (lambda Z, k, n: Z[:, k].topk(min(n, int((Z[:, k] > 0).sum()))).values, "returned activations"),
        (lambda Z, k, n: Z[k].topk(n).indices, "one row per token"),
        (lambda Z, k, n: sorted(good_top(Z, k, n).tolist()), "strongest activation first"),
        (lambda Z, k, n: Z[:, k].topk(n).indices, "leave out rows where it is 0"),
        (lambda Z, k, n: Z[:, k].argsort()[:n], "weakest"),
        (lambda Z, k, n: [i for i in Z[:, k].argsort().tolist() if Z[i, k] > 0][:n], "weakest"),
    ]:
        with pytest.raises(AssertionError, match=message):
            ex.check_top_activating(wrong)


# ---------------------------------------------------------------- check_prompt_split (chapter 04)
def split_by_prompt(triples, test_fraction, seed):
    prompts = list(dict.fromkeys(t.prompt for t in triples))
    random.Random(seed).shuffle(prompts)
    test_prompts = set(prompts[:round(test_fraction * len(prompts))])
    return [t for t in triples if t.prompt not in test_prompts], [t for t in triples if t.prompt in test_prompts]


def split_by_prompt_sorted(triples, test_fraction, seed):  # another correct one: sorted prompts, int() cut
    prompts = sorted({t.prompt for t in triples})
    rng = random.Random(seed)
    rng.shuffle(prompts)
    test_prompts = set(prompts[:int(test_fraction * len(prompts))])
    return [t for t in triples if t.prompt not in test_prompts], [t for t in triples if t.prompt in test_prompts]


def by_triple(triples, test_fraction, seed):  # the leak: triples of one prompt on both sides
    order = list(triples)
    random.Random(seed).shuffle(order)
    cut = round(test_fraction * len(order))
    return order[cut:], order[:cut]


def one_per_prompt(triples, test_fraction, seed):  # drops the prompts' other triples
    return split_by_prompt(list({t.prompt: t for t in triples}.values()), test_fraction, seed)


def unshuffled(triples, test_fraction, seed):
    prompts = list(dict.fromkeys(t.prompt for t in triples))
    test_prompts = set(prompts[:round(test_fraction * len(prompts))])
    return [t for t in triples if t.prompt not in test_prompts], [t for t in triples if t.prompt in test_prompts]


def global_random(triples, test_fraction, seed):
    prompts = list(dict.fromkeys(t.prompt for t in triples))
    random.shuffle(prompts)
    test_prompts = set(prompts[:round(test_fraction * len(prompts))])
    return [t for t in triples if t.prompt not in test_prompts], [t for t in triples if t.prompt in test_prompts]


def triple_count(triples, test_fraction, seed):  # fills test up to a share of triples, not of prompts
    prompts = list(dict.fromkeys(t.prompt for t in triples))
    random.Random(seed).shuffle(prompts)
    test_prompts, n = set(), 0
    for p in prompts:
        if n >= test_fraction * len(triples):
            break
        test_prompts.add(p)
        n += sum(t.prompt == p for t in triples)
    return [t for t in triples if t.prompt not in test_prompts], [t for t in triples if t.prompt in test_prompts]


def in_place(triples, test_fraction, seed):
    random.Random(seed).shuffle(triples)
    return split_by_prompt(triples, test_fraction, seed)


def test_prompt_split():
    ex.check_prompt_split(split_by_prompt)
    ex.check_prompt_split(split_by_prompt_sorted)
    for wrong, message in [
        (by_triple, "both sides"),
        (one_per_prompt, "missing"),
        (unshuffled, "same test prompts"),
        (global_random, "two different splits"),
        (in_place, "in place"),
        (lambda triples, f, s: split_by_prompt(triples, f, s)[1], "pair"),
    ]:
        with pytest.raises(AssertionError, match=message):
            ex.check_prompt_split(wrong)


def test_prompt_split_by_triple_count_is_diagnosed():
    """Cutting at a share of the triples misses the prompt count on the check's data, and is told why."""
    with pytest.raises(AssertionError, match="distinct prompts are in test"):
        ex.check_prompt_split(triple_count)


def test_prompt_split_on_the_toy_world(world):
    """On the toy world's training triples, a split by triple leaks prompts and the split by prompt does not."""
    train = world.triples("train")[:300]
    fit, held = by_triple(train, 0.25, 0)
    assert {t.prompt for t in fit} & {t.prompt for t in held}
    fit, held = split_by_prompt(train, 0.25, 0)
    assert not {t.prompt for t in fit} & {t.prompt for t in held} and len(fit) + len(held) == len(train)


# ---------------------------------------------------------------- check_static_score (chapter 03)
def test_static_score():
    ex.check_static_score(lambda d, s: torch.where(s > 0, d / s.clamp_min(1e-12), torch.zeros_like(d)))
    for wrong, message in [
        (lambda d, s: d / s, "not NaN or inf"),
        (lambda d, s: d, "delta_mean itself"),
        (lambda d, s: torch.where(d != 0, s / d, torch.zeros_like(d)), "wrong way round"),
        (lambda d, s: d / s.clamp_min(1e-6), "clamping"),
        (lambda d, s: (d / s)[:3], "one score per latent"),
    ]:
        with pytest.raises(AssertionError, match=message):
            ex.check_static_score(wrong)


# ---------------------------------------------------------------- chapter 03: static steering without a map
def test_static_steering_from_delta_matches_static_sae(world):
    """Chapter 03 builds static steering from delta with LatentEdit; it is StaticSAE's edit on the same delta."""
    from dspa_lite.method import hooks
    from dspa_lite.method.baselines import StaticSAE
    from dspa_lite.method.cdmap import CDMap, select_latents
    from dspa_lite.method.dspa import LatentEdit, masks_from

    m_in, m_out = world.sae_in.cfg.d_sae, world.sae_out.cfg.d_sae
    g = torch.Generator().manual_seed(0)
    delta_mean, delta_std = torch.randn(m_out, generator=g), torch.rand(m_out, generator=g) + 0.1
    cdmap = CDMap(torch.zeros(m_in, m_out), delta_mean, delta_std, torch.ones(m_out), meta={"l_out": world.l_out})
    static = StaticSAE(world.model, world.tokenizer, world.sae_out, cdmap, "augment", 16, 6.0)
    k_neg, k_pos = select_latents(delta_mean / delta_std, 16)
    ours = LatentEdit(world.sae_out, masks_from(k_neg, m_out), masks_from(k_pos, m_out), mode="augment", alpha=6.0,
                      every_position=True)
    ids = torch.tensor([world.tokenizer("<start_of_turn>user\nhi !<end_of_turn>\n").input_ids])
    with torch.no_grad():
        with static.steer(["hi !"]), hooks.capture(world.model, [world.l_out]) as a:
            world.model(ids)
        with hooks.edit(world.model, world.l_out, ours), hooks.capture(world.model, [world.l_out]) as b:
            world.model(ids)
    assert torch.equal(a[world.l_out], b[world.l_out])

"""The sparse edit equals the dense one; u(x) from the prefill equals the separate prompt pass; no host syncs per step."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dspa_lite import DSPA
from dspa_lite.method import dspa as dspa_mod
from dspa_lite.method import prefill as prefill_mod
from dspa_lite.method.dspa import LatentEdit, masks_from
from dspa_lite.method.sparse import edit_path, mask_indices

D_IN, D_SAE = 24, 96


def random_sae(kind: str, seed: int = 0):
    """A sae-lens SAE of ``kind`` with random weights, biases (and thresholds): about a third of latents fire."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    cfgs = {"jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE)),
            "standard": (StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
            "topk": (TopKSAE, TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8))}
    cls, cfg = cfgs[kind]
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 1.0))
        if kind == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g))
    return sae


def random_sets(d_sae: int, rows: int, k: int, seed: int):
    """Per-row masks of ``k`` latents (row 1 empty in ``neg``, rows overlap in places)."""
    g = torch.Generator().manual_seed(seed)
    neg = torch.zeros(rows, d_sae, dtype=torch.bool)
    pos = torch.zeros(rows, d_sae, dtype=torch.bool)
    for r in range(rows):
        perm = torch.randperm(d_sae, generator=g)
        if r != 1:
            neg[r, perm[:k]] = True
        pos[r, perm[k - 2:2 * k]] = True  # two latents in both sets: K_pos wins, as in the dense edit
    return neg, pos


def both_paths(sae, neg, pos, h, calls: int = 2, **kw):
    out = {}
    for path in ("sparse", "dense"):
        ed = LatentEdit(sae, neg, pos, path=path, **kw)
        ed.record = True
        out[path] = ([ed(h if i == 0 else h[:, -1:]) for i in range(calls)], ed.trace)
    return out


SETTINGS = list(itertools.product(("ablate", "augment", "both"), ("active", "none"), ("last", "start", "all")))


@pytest.mark.parametrize("kind", ["jumprelu", "standard"])
@pytest.mark.parametrize(("mode", "gate", "where"), SETTINGS)
def test_sparse_edit_equals_dense_on_random_saes(kind, mode, gate, where):
    sae = random_sae(kind)
    assert edit_path(sae) == "sparse"
    h = torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    neg, pos = random_sets(D_SAE, 3, 12, seed=2)
    kw = dict(mode=mode, alpha=2.5, gate=gate, latent_mean=torch.rand(D_SAE) + 0.5,
              start=[2, 0, 5] if where == "start" else None, every_position=where == "all")
    out = both_paths(sae, neg, pos, h, **kw)
    for sparse, dense in zip(out["sparse"][0], out["dense"][0]):
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    assert [t.shape for t in out["sparse"][1]] == [t.shape for t in out["dense"][1]]
    assert all(torch.equal(a, b) for a, b in zip(*(out[p][1] for p in ("sparse", "dense"))))
    assert any(bool(t.any()) for t in out["dense"][1]), "the edit changed nothing: the test would prove nothing"


@pytest.mark.parametrize(("mode", "gate"), [(m, g) for m in ("ablate", "augment", "both") for g in ("active", "none")])
def test_sparse_edit_equals_dense_on_the_toy_sae(world, cdmap, mode, gate):
    sae = world.sae_out
    assert edit_path(sae) == "sparse"
    h = torch.randn(4, 6, world.model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    z = sae.encode(h)
    active = z[:, -1] > 0  # sets drawn among each row's active latents, different per row
    neg = active & (torch.rand(active.shape, generator=torch.Generator().manual_seed(4)) < 0.3)
    pos = active & ~neg & (torch.rand(active.shape, generator=torch.Generator().manual_seed(5)) < 0.3)
    pos[:, :40] |= True  # inactive latents too, for gate="none"
    out = both_paths(sae, neg, pos, h, mode=mode, alpha=6.0, gate=gate, latent_mean=cdmap.latent_mean, calls=3)
    for sparse, dense in zip(out["sparse"][0], out["dense"][0]):
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
        assert not torch.equal(dense, h[:, -dense.shape[1]:])


def test_paths_are_chosen_from_the_architecture(world, cdmap):
    from sae_lens import StandardSAE, StandardSAEConfig

    assert edit_path(random_sae("topk")) == "dense"  # Qwen-Scope's kind: the gate needs every pre-activation
    assert edit_path(StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, normalize_activations="layer_norm"))) == "dense"
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=8)
    steerer.generate(world.prompts("test", 2), max_new_tokens=2)
    assert steerer.last_edit.path == "sparse"
    dense = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=8, path="dense")
    dense.generate(world.prompts("test", 2), max_new_tokens=2)
    assert dense.last_edit.path == "dense"
    with pytest.raises(ValueError, match="path='fast'"):
        DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, path="fast")


def test_topk_sae_keeps_the_dense_edit():
    sae = random_sae("topk")
    h = torch.randn(2, 3, D_IN, generator=torch.Generator().manual_seed(6))
    active = sae.encode(h)[:, -1] > 0
    ed = LatentEdit(sae, active, torch.zeros_like(active), "ablate", 0.0)
    assert ed.path == "dense"
    z_new = sae.encode(h)
    z_new[:, -1][active] = 0
    torch.testing.assert_close(ed(h), h + (z_new - sae.encode(h)) @ sae.W_dec)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_one_mask_for_both_sets(world, path):
    """The same mask as neg and pos: ablate zeroes its active latents, augment scales them, both augments them."""
    sae = world.sae_out
    h = torch.randn(1, 3, world.model.config.hidden_size, generator=torch.Generator().manual_seed(8))
    z = sae.encode(h)
    mask = (z[0, -1] > 0)[None] & (torch.arange(sae.cfg.d_sae) < 400)[None]
    on = (z > 0) & mask[:, None]
    for mode, factor in (("ablate", -1.0), ("augment", 2.0), ("both", 2.0)):
        out = LatentEdit(sae, mask, mask, mode, 2.0, every_position=True, path=path)(h)
        torch.testing.assert_close(out, h + factor * (z * on) @ sae.W_dec, rtol=1e-4, atol=1e-4)


def test_mask_indices_round_trip():
    neg, _ = random_sets(D_SAE, 3, 5, seed=7)
    assert torch.equal(masks_from(mask_indices(neg), D_SAE), neg)


def test_the_edit_path_is_the_same_text(world, cdmap):
    """Greedy generation: the sparse and dense edits produce the same tokens on the toy world."""
    prompts = world.prompts("test", 6)
    texts = {p: DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, mode="both", k=32, alpha=6.0,
                     path=p).generate(prompts, max_new_tokens=24, temperature=0.0) for p in ("sparse", "dense")}
    assert texts["sparse"] == texts["dense"]


def _left_padded_prompts(world, n: int = 6) -> list[str]:
    """Prompts of as many different token lengths as there are (two of the shortest), so the batch is left-padded."""
    by_length: dict[int, list[str]] = {}
    for p in world.prompts("test", 200):
        by_length.setdefault(len(world.tokenizer(p).input_ids), []).append(p)
    lengths = sorted(by_length)
    picks = [by_length[lengths[0]][1]] + [by_length[n][0] for n in lengths]
    return picks[:n]


@pytest.mark.parametrize(("mode", "temperature", "positions"), [("both", 0.0, "generated"), ("augment", 1.0, "generated"),
                                                                 ("ablate", 0.0, "all")])
def test_prefill_u_equals_the_prompt_pass(world, cdmap, monkeypatch, mode, temperature, positions):
    prompts = _left_padded_prompts(world)
    lengths = {len(world.tokenizer(p).input_ids) for p in prompts}
    assert len(lengths) >= 3
    kw = dict(mode=mode, k=32, alpha=6.0, positions=positions)
    W = world
    two_pass = DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, prefill=False, **kw)
    one_pass = DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, prefill=True, **kw)
    ref = two_pass.generate(prompts, max_new_tokens=24, temperature=temperature, seed=3)
    ref_sets = (two_pass.last_edit.K_neg, two_pass.last_edit.K_pos)
    calls = []
    monkeypatch.setattr(dspa_mod, "prompt_features", lambda *a, **k: calls.append(1))  # the prompt pass must not run
    got = one_pass.generate(prompts, max_new_tokens=24, temperature=temperature, seed=3)
    assert not calls
    assert torch.equal(one_pass.last_edit.K_neg, ref_sets[0]) and torch.equal(one_pass.last_edit.K_pos, ref_sets[1])
    assert got == ref


def test_prefill_falls_back_when_ids_are_not_the_prompts(world, cdmap):
    """Input that is not the chat-formatted prompts (lm-eval's contexts): the separate prompt pass."""
    ids = torch.tensor([[5, 6, 7, 8]])
    assert prefill_mod.prompt_rows(world.tokenizer, ["hello there"], ids, torch.ones_like(ids)) is None
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=8)
    with steerer.steer(["hello there"], ids, torch.ones_like(ids)) as ed:
        assert ed.K_pos.shape[0] == 1 and ed.empty is False  # sets known before any forward pass


def _moves(args, kwargs) -> bool:
    """Whether a ``Tensor.to`` call changes the tensor's device (a blocking copy, on a GPU a synchronisation)."""
    src = args[0].device
    for a in (*args[1:], *(kwargs or {}).values()):
        if isinstance(a, torch.device | str) and torch.device(a) != src:
            return True
        if isinstance(a, torch.Tensor) and a.device != src:
            return True
    return False


class SyncCounter(TorchFunctionMode):
    """Counts calls that read a tensor's value on the host or copy between host and device (on a GPU: a device
    synchronisation each), and all calls."""

    HOST = {"__bool__", "item", "tolist", "cpu", "cuda", "numpy", "__int__", "__float__", "__index__", "nonzero",
            "tensor", "as_tensor"}

    def __init__(self):
        super().__init__()
        self.host: list[str] = []
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        self.calls += 1
        if name in self.HOST or (name == "to" and _moves(args, kwargs)):
            self.host.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("gate", ["active", "none"])
def test_no_host_reads_in_the_hooks(world, cdmap, monkeypatch, path, gate):
    """Every call of the edit (prefill and decoding steps) and of the prefill's u(x) hook runs without reading a
    tensor's value on the host; the NaN/inf flag is read once, after generation."""
    counters: list[tuple[str, int, SyncCounter]] = []

    def counted(cls, where):
        original = cls.__call__

        def call(self, h):
            with SyncCounter() as c:
                out = original(self, h)
            counters.append((where, h.shape[1], c))
            return out

        monkeypatch.setattr(cls, "__call__", call)

    counted(LatentEdit, "edit")
    counted(prefill_mod.PrefillSets, "prefill")
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=16, path=path, gate=gate)
    steerer.generate(_left_padded_prompts(world, 4), max_new_tokens=6)
    edits = [c for w, _, c in counters if w == "edit"]
    assert len(edits) == 6 and len([w for w, *_ in counters if w == "prefill"]) == 6
    assert all(c.calls > 3 for c in edits), "the counter saw nothing: the test would prove nothing"
    assert [(w, t, c.host) for w, t, c in counters if c.host] == []


@pytest.mark.parametrize("which", ["static", "dspa-all-positions"])
def test_no_host_reads_in_edits_that_start_after_the_padding(world, cdmap, monkeypatch, which):
    """Static steering and DSPA(positions="all") edit from a per-row start position on the first call: those
    positions reach the device before generation, so no call of the edit copies from the host."""
    from dspa_lite.method.baselines import StaticSAE

    counters: list[SyncCounter] = []
    original = LatentEdit.__call__

    def call(self, h):
        with SyncCounter() as c:
            out = original(self, h)
        counters.append(c)
        return out

    monkeypatch.setattr(LatentEdit, "__call__", call)
    if which == "static":
        steerer = StaticSAE(world.model, world.tokenizer, world.sae_out, cdmap, "augment", 16, 3.0)
    else:
        steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=16, positions="all")
    steerer.generate(_left_padded_prompts(world, 4), max_new_tokens=4)
    assert len(counters) == 4 and all(c.calls > 3 for c in counters)
    assert [c.host for c in counters if c.host] == []


def test_nonfinite_edits_are_reported_after_generation(world, cdmap):
    from dspa_lite.method.hooks import edit

    sae = world.sae_out
    h = torch.randn(1, 3, world.model.config.hidden_size)
    h[0, -1, 0] = float("nan")
    every = torch.ones(1, sae.cfg.d_sae, dtype=torch.bool)
    ed = LatentEdit(sae, every, every, "both", 1.0)
    ed(h)  # no host read: the flag waits on the device
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        ed.check_finite()
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        LatentEdit(sae, every, every, "both", 1.0, debug=True)(h)
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, k=4)
    with edit(world.model, 0, lambda x: x * float("nan")), pytest.raises(FloatingPointError, match="NaN/inf"):
        steerer.generate(world.prompts("test", 1), max_new_tokens=3, temperature=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_syncs_on_cuda(world, cdmap):  # pragma: no cover - no GPU on the CI runners
    import copy

    model, sae_in, sae_out = (copy.deepcopy(x).cuda() for x in (world.model, world.sae_in, world.sae_out))
    steerer = DSPA(model, world.tokenizer, sae_in, sae_out, cdmap, k=16)
    original = LatentEdit.__call__

    def strict(self, h):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, h)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    LatentEdit.__call__ = strict
    try:
        steerer.generate(world.prompts("test", 4), max_new_tokens=6)
    finally:
        LatentEdit.__call__ = original

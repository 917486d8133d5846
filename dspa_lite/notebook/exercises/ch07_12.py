"""Chapters 07-12: planning a real run, judge-free checks of the edit, FLOPs, audits, wide maps, TopK SAEs.

Each check runs the learner's function on cases with known answers, and when the answer is wrong it
recomputes the usual mistakes on the same case to say which one was made.
"""

from __future__ import annotations

import torch

from .core import passed

__all__ = [
    "check_edit_rate",
    "check_forward_flops",
    "check_kv_cache_bytes",
    "check_map_numbers",
    "check_reference_latents",
    "check_topk_codes",
]


def _hint(got, mistakes, want, close=lambda a, b: a == b) -> str:
    """The message of the first mistake whose value equals ``got`` (and differs from the right answer)."""
    return next((msg for value, msg in mistakes if close(got, value) and not close(value, want)), "")


# --- chapter 07: planning memory, and how often the edit acts ---------------------------------------


def _tiny_gemma(n_layers: int = 3, d: int = 48, heads: int = 4, kv: int = 2, head_dim: int = 16):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=64, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
                       num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                       max_position_embeddings=64, sliding_window=64)
    return Gemma2ForCausalLM(cfg).eval()


def check_kv_cache_bytes(fn) -> None:
    """``fn(shape, batch, seq, value_bytes) -> int``: the bytes of a key/value cache for ``batch`` sequences of
    ``seq`` tokens, ``shape`` a :class:`~dspa_lite.evaluation.flops.ModelShape`, each value ``value_bytes`` bytes."""
    from ...evaluation.flops import ModelShape
    from ...loading.colab import kv_cache_bytes

    cases = [(ModelShape.preset("gemma-2-9b"), 1, 100, 4), (ModelShape.preset("gemma-2-2b"), 16, 1024, 2),
             (ModelShape.preset("qwen3-8b"), 4, 512, 2)]
    for s, B, T, nb in cases:
        want = 2 * s.n_layers * s.n_kv_heads * s.head_dim * nb * B * T
        got = fn(s, B, T, nb)
        if got == want:
            continue
        per_layer = want // s.n_layers
        mistakes = [
            (want // 2, "a cache holds keys *and* values: two tensors per layer, so multiply by 2."),
            (want // s.n_kv_heads * s.n_heads,
             f"you used n_heads={s.n_heads}: with grouped-query attention only n_kv_heads={s.n_kv_heads} key and "
             "value heads are cached (several query heads share one)."),
            (2 * s.n_layers * s.d_model * nb * B * T,
             f"you used d_model={s.d_model} as the width of a cached key: it is n_kv_heads * head_dim = "
             f"{s.n_kv_heads * s.head_dim}."),
            (per_layer, f"that is one layer's cache: every one of the {s.n_layers} layers keeps its own."),
            (want * 8, "that is bits: value_bytes is already in bytes."),
            (want // nb, "multiply by value_bytes (2 for bfloat16, 4 for float32)."),
            (want // B, "the cache holds every sequence of the batch: multiply by batch."),
        ]
        hint = _hint(got, mistakes, want)
        raise AssertionError(f"{s.n_layers} layers, {s.n_kv_heads} of {s.n_heads} heads kept as key/value heads of "
                             f"head_dim {s.head_dim}, batch {B} x {T} tokens, {nb} bytes a value: expected "
                             f"{want:,} bytes, got {got!r}. {hint}".rstrip())
    model = _tiny_gemma()
    shape = ModelShape.from_config(model.config)
    ids = torch.randint(1, 64, (3, 10))
    measured = kv_cache_bytes(model, ids)
    if fn(shape, 3, 10, 4) != measured:
        raise AssertionError(f"on a small Gemma-2 model in float32, a forward pass over 3 x 10 tokens allocates a "
                             f"cache of {measured:,} bytes; your formula gives {fn(shape, 3, 10, 4)!r}.")
    passed("kv_cache_bytes")


def _edit_trace(prompt_positions: int) -> tuple[list[torch.Tensor], list[int]]:
    """Three rows, four latents: a prompt pass, then five generated steps; rows 1 and 2 end early."""
    first = torch.zeros(3, prompt_positions, 4, dtype=torch.bool)
    first[:, -1] = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    if prompt_positions > 1:
        first[:, 0, 3] = True  # an edited prompt position that decides no response token
    steps = [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
             [[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]],
             [[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]],  # row 2 ended after its third position: padding from here
             [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]],
             [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]]]
    trace = [first] + [torch.tensor(s, dtype=torch.bool)[:, None] for s in steps]
    return trace, [6, 4, 3]


def check_edit_rate(fn) -> None:
    """``fn(trace, lengths) -> float``: the share of decided positions where the edit changed at least one
    latent. ``trace`` is ``LatentEdit.trace``: the prompt pass ``(B, t, d_sae)`` (its last position decides
    the first response token), then ``(B, 1, d_sae)`` per generated token; row ``i`` has ``lengths[i]``
    decided positions, and any after them are padding."""
    for prompt_positions in (1, 3):
        trace, lengths = _edit_trace(prompt_positions)
        per_pos = torch.cat([trace[0][:, -1:]] + trace[1:], 1)  # (B, 6, d)
        keep = torch.arange(per_pos.shape[1])[None] < torch.tensor(lengths)[:, None]
        edited = per_pos.any(-1)
        want = float(edited[keep].float().mean())
        got = float(fn([t.clone() for t in trace], list(lengths)))
        if abs(got - want) < 1e-6:
            continue
        whole = torch.cat(trace, 1)  # every prompt position counted
        keep_whole = torch.arange(whole.shape[1])[None] < (torch.tensor(lengths) + prompt_positions - 1)[:, None]
        gen = per_pos[:, 1:].any(-1)
        keep_gen = torch.arange(gen.shape[1])[None] < (torch.tensor(lengths) - 1)[:, None]
        mistakes = [
            (float(edited.float().mean()), "you counted every position of the batch: a row that ended keeps being "
                                           "fed padding, so count only its first lengths[i] positions."),
            (float(torch.stack([edited[i, :n].float().mean() for i, n in enumerate(lengths)]).mean()),
             "you averaged per-row rates: pool the positions of all rows, then divide once, so that a long "
             "response counts for more positions than a short one."),
            (float(per_pos.sum(-1)[keep].float().mean()), "you counted edited latents: a position counts once "
                                                         "if the edit changed at least one latent there (any)."),
            (float(whole.any(-1)[keep_whole].float().mean()),
             "you counted every prompt position of trace[0]: only its last position decides a response token."),
            (float(gen[keep_gen].float().mean()), "you left out the prompt pass: its last position decides the "
                                                  "first response token, so it is a decided position too."),
        ]
        hint = _hint(got, mistakes, want, close=lambda a, b: abs(a - b) < 1e-6)
        raise AssertionError(f"with a prompt pass over {prompt_positions} position(s) and lengths {lengths}: "
                             f"expected {want:.4f}, got {got:.4f}. {hint}".rstrip())
    passed("edit_rate")


# --- chapter 09: a forward pass counted by hand ----------------------------------------------------


def check_forward_flops(fn) -> None:
    """``fn(config, B, T) -> int``: the matmul FLOPs of a full forward pass of a Gemma-2 model (given its Hugging
    Face config) over ``B`` sequences of ``T`` tokens, as ``torch.utils.flop_counter`` counts them."""
    from transformers import Gemma2Config

    from ...evaluation.flops import ModelShape, forward_flops

    for layers, d, heads, kv, hd, B, T in ((2, 64, 4, 2, 32, 2, 8), (3, 48, 6, 3, 8, 3, 5)):
        c = Gemma2Config(hidden_size=d, intermediate_size=3 * d, num_attention_heads=heads, num_key_value_heads=kv,
                         head_dim=hd, vocab_size=100, num_hidden_layers=layers)
        want = forward_flops(ModelShape.from_config(c), B * T, T)
        got = fn(c, B, T)
        if got == want:
            continue
        n, head = B * T, 2 * B * T * d * 100
        proj = 2 * n * d * hd * (2 * heads + 2 * kv)
        attn = 4 * B * heads * T * T * hd
        mlp = 3 * 2 * n * d * 3 * d
        mistakes = [
            (want // 2, "that is multiply-accumulates: a (m, k) @ (k, n) matmul is 2*m*k*n FLOPs."),
            (want + layers * 2 * n * d * hd * 2 * (heads - kv),
             f"k and v have n_kv_heads={kv} heads, not n_heads={heads} (grouped-query attention)."),
            (want - layers * proj + layers * 2 * n * d * d * 4,
             f"the q/k/v/o widths are heads * head_dim ({heads} x {hd}), not d_model={d}."),
            (want - layers * attn, "you left out the attention matmuls Q K^T and A V (activations by activations)."),
            (want - layers * attn + layers * attn // T * (T + 1) // 2,
             "eager attention computes all T x T scores and then masks the future: count T*T, not the causal half."),
            (want - layers * attn + layers * attn // T, "each query is scored against all T keys: attention grows "
                                                        "with T*T per sequence, not T."),
            (want - head, "you left out the LM head, 2 * B*T * d_model * vocab."),
            (want - layers * mlp // 3, "Gemma-2's MLP is gated: gate, up and down, three matrices."),
        ]
        hint = _hint(got, mistakes, want)
        raise AssertionError(f"{layers} layers, d_model {d}, {heads} heads ({kv} key/value) of head_dim {hd}, "
                             f"B={B}, T={T}: expected {want:,} FLOPs, got {got!r}. {hint}".rstrip())
    passed("forward_flops")


# --- chapter 10: the audit's ground truth ----------------------------------------------------------


def _profiles() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    p = torch.rand(4, 12, generator=g)
    p[:, 0] += 5.0  # a loud latent, active on every style
    p[0, 1] += 3.0  # style 0's own latent
    p[0, 2] += 1.5
    p[:, 3] *= 0.02
    p[0, 3] = 0.2  # faint, but ten times its mean elsewhere
    p[2, 4] += 4.0  # style 2's own latent
    return p


def _as_list(out) -> list[int]:
    return [int(i) for i in (out.flatten().tolist() if torch.is_tensor(out) else list(out))]


def check_reference_latents(fn) -> None:
    """``fn(profiles, style, k) -> latents``: the ``k`` latents whose mean activation on ``style`` (row of
    ``profiles``, shape ``(n_styles, d_sae)``) most exceeds their mean over all styles."""
    p = _profiles()
    for style, k in ((0, 3), (2, 2), (1, 4)):
        diff = p[style] - p.mean(0)
        want = set(torch.topk(diff, k).indices.tolist())
        items = _as_list(fn(p.clone(), style, k))
        got = set(items)
        if got == want and len(items) == k:
            continue
        if len(items) != k or len(got) != k:
            raise AssertionError(f"return exactly k={k} distinct latent indices, got {items}.")
        mistakes = [
            (set(torch.topk(p[style], k).indices.tolist()),
             "you ranked the raw activation on the style: latent 0 is loud on every style, so subtract each "
             "latent's mean over all styles and rank what is left."),
            (set(torch.topk(p[style] / p.mean(0), k).indices.tolist()),
             "you ranked the ratio to the mean: a faint latent (3) that is 10x its mean wins; rank the difference."),
            (set(torch.topk(-diff, k).indices.tolist()), "those are the latents the style uses *least*: take the "
                                                         "largest differences (torch.topk), not the smallest."),
            (set(torch.topk(p[:, style] - p.mean(1), min(k, p.shape[0])).indices.tolist()),
             "profiles has one row per style and one column per latent: index the row, compare within columns."),
        ]
        hint = _hint(got, mistakes, want)
        raise AssertionError(f"style {style}, k={k}: expected {sorted(want)}, got {sorted(got)}. {hint}".rstrip())
    passed("reference_latents")


# --- chapter 12: wide maps and TopK SAEs -----------------------------------------------------------


def check_map_numbers(fn) -> None:
    """``fn(d_in, d_out, n) -> (factored, numbers)``: whether ``CDMap`` keeps a map from ``n`` triples between
    SAEs of widths ``d_in``, ``d_out`` as two factors (``d_in * d_out > DENSE_MAX_ENTRIES``), and how many
    numbers it stores: ``d_in * d_out`` dense, ``n * (d_in + d_out)`` factored."""
    from ...method.cdmap import DENSE_MAX_ENTRIES

    cases = [(1024, 1024, 250), (16_384, 16_384, 1000), (65_536, 65_536, 1000), (65_536, 16_384, 10),
             (16_384, 16_385, 50_000)]
    for d_in, d_out, n in cases:
        factored = d_in * d_out > DENSE_MAX_ENTRIES
        want = (factored, n * (d_in + d_out) if factored else d_in * d_out)
        out = fn(d_in, d_out, n)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise AssertionError("return a pair (factored: bool, numbers: int).")
        got = (bool(out[0]), int(out[1]))
        if got == want:
            continue
        dense, low = d_in * d_out, n * (d_in + d_out)
        mistakes = [
            ((d_in * d_out >= DENSE_MAX_ENTRIES, low if d_in * d_out >= DENSE_MAX_ENTRIES else dense),
             f"{d_in} x {d_out} = {dense:,} is exactly DENSE_MAX_ENTRIES: the map is factored only *above* it."),
            ((low < dense, min(low, dense)), "the package does not pick the smaller form: it stays dense up to "
                                             "DENSE_MAX_ENTRIES entries, however few triples there are."),
            ((factored, n * d_in * d_out if factored else dense),
             "L is d_in x n and R is n x d_out: together n * (d_in + d_out) numbers, not their product."),
            ((factored, n * d_out if factored else dense), "both factors are stored: L (d_in x n) and R (n x d_out)."),
            ((True, low), f"a {d_in} x {d_out} map ({dense:,} entries) stays dense: only above "
                          f"DENSE_MAX_ENTRIES = {DENSE_MAX_ENTRIES:,} is it factored."),
        ]
        hint = _hint(got, mistakes, want)
        raise AssertionError(f"d_in={d_in}, d_out={d_out}, n={n}: expected {want}, got {got}. {hint}".rstrip())
    passed("map_numbers")


def check_topk_codes(fn) -> None:
    """``fn(pre, k) -> codes``: a TopK SAE's activation on pre-activations ``pre`` ``(n_tokens, d_sae)``: per
    token, its ``k`` largest pre-activations, passed through ReLU; every other latent 0."""
    g = torch.Generator().manual_seed(5)
    pre = torch.randn(5, 8, generator=g)
    pre[1] = -pre[1].abs() - 0.1  # a token whose pre-activations are all negative
    pre[2, :2] = torch.tensor([-6.0, -5.0])  # large negative values: largest in magnitude, smallest in value
    pre[[0, 3, 4]] = pre[[0, 3, 4]].abs() + 0.1  # tokens with every latent positive
    for k in (3, 1):
        values, idx = pre.topk(k, dim=-1)
        want = torch.zeros_like(pre).scatter(-1, idx, values.relu())
        got = torch.as_tensor(fn(pre.clone(), k)).float()
        if got.shape != pre.shape:
            raise AssertionError(f"return codes of the same shape as pre, {tuple(pre.shape)}; got {tuple(got.shape)}.")
        if torch.allclose(got, want):
            continue
        ai = pre.abs().topk(k, dim=-1).indices
        v0, i0 = pre.topk(k, dim=0)
        mistakes = [
            (torch.zeros_like(pre).scatter(-1, idx, values), "negative pre-activations among the top k stay 0: "
                                                             "apply ReLU to the kept values."),
            (torch.zeros_like(pre).scatter(-1, ai, pre.gather(-1, ai).relu()),
             "you ranked by magnitude: TopK keeps the largest values, and a large negative one is not among them."),
            (torch.zeros_like(pre).scatter(0, i0, v0.relu()),
             "you took the top k tokens of each latent (dim 0): TopK works per token, along the latent dim (-1)."),
            (pre.relu(), "that is a plain ReLU: keep only the k largest per token, so exactly k can be active."),
            ((want > 0).float(), "return the values, not a 0/1 mask: the decoder multiplies them."),
        ]
        hint = _hint(got, mistakes, want, close=lambda a, b: a.shape == b.shape and torch.allclose(a, b))
        raise AssertionError(f"k={k}: the codes differ from the TopK activation on "
                             f"{int((~torch.isclose(got, want)).any(-1).sum())} of {pre.shape[0]} tokens. "
                             f"{hint}".rstrip())
    passed("topk_codes")

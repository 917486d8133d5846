"""One GPU memory model for every gate and batch size: a profile's resident bytes plus the peak of its worst stage,
against the card's memory less a headroom.

Everything here is *modelled* from the model's shape (a profile's fields), not measured:

- **resident** for the whole run: the weights in the run's dtype, both SAEs in float32, and the fitted map on
  the GPU (dense ``d_sae x d_sae`` float32 up to ``cdmap.DENSE_MAX_ENTRIES`` entries, factored above);
- **one stage at a time** on top: generation (key/value cache for prompt + new tokens, the edit's SAE codes at
  prefill, fp32 logits of a step), fitting (eager attention scores and MLP activations of a forward batch, and
  three float32 copies of one row's SAE codes) or lm-eval (a ``(B, T, vocab)`` logits tensor in four copies: the model's
  output, Gemma-2's soft-capping, lm-eval's ``log_softmax`` and a float32 upcast);
- **headroom**: :data:`HEADROOM` of the card plus :data:`CONTEXT_BYTES` for the CUDA context, cuBLAS workspaces
  and allocator fragmentation stay free.

:func:`plan` is the gate: it derives each stage's batch from the same sums (:func:`batch_sizes`) and calls a run
that fits every stage at batch 1 or more a fit; :func:`gpu_dtype` gives the dtype a card runs
(bfloat16 only with compute capability >= 8.0: a T4 emulates it, and float16 overflows Gemma-2's residual stream).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["CONTEXT_BYTES", "GPUS", "HEADROOM", "Workload", "batch_sizes", "budget_bytes", "fits", "gpu_dtype",
           "n_params", "need_bytes", "parts", "plan", "resident_bytes", "table"]

GB = 1e9
HEADROOM = 0.10  # share of the card left free
CONTEXT_BYTES = 1.0e9  # CUDA context, cuBLAS workspace and allocator fragmentation
DENSE_MAX_ENTRIES = 2**28  # as dspa_lite.method.cdmap: wider maps stay factored
# Colab's cards (and an H100): memory as nvidia-smi reports it (MiB x 2**20) and compute capability (datasheet figures)
GPUS = {"T4 16 GB": (15360 * 2**20, (7, 5)), "L4 24 GB": (23034 * 2**20, (8, 9)),
        "A100 40 GB": (40960 * 2**20, (8, 0)), "A100 80 GB": (81920 * 2**20, (8, 0)),
        "H100 80 GB": (81559 * 2**20, (9, 0))}
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Workload:
    """The sizes one run uses; the defaults are ``dspa-lite pipeline``'s (384 new tokens, 250 triples...)."""

    gen_batch: int = 16
    prompt_tokens: int = 512
    new_tokens: int = 384
    fit_batch: int = 16  # CDMapConfig.batch_size
    fit_tokens: int = 768  # prompt + response of a triple under max_chars=2000
    lm_eval_batch: int = 8
    lm_eval_tokens: int = 256  # a 0-shot ARC / HellaSwag request with its longest option
    n_triples: int = 250


def gpu_dtype(profile: Any, capability: tuple[int, int] | None) -> str:
    """The dtype a card runs ``profile`` in: its own (bfloat16) with native support (capability >= 8.0), else
    float32; ``None`` (no GPU) is float32 too.

    >>> gpu_dtype(type("P", (), {"dtype": "bfloat16"})(), (7, 5))
    'float32'
    """
    if capability is None or profile.dtype == "float32":
        return "float32"
    return profile.dtype if tuple(capability) >= (8, 0) else "float32"


def n_params(p: Any) -> int:
    """Parameters from a profile's shape: attention (GQA), a gated MLP and the embedding (+ an untied head)."""
    attn = p.d_model * p.head_dim * (2 * p.n_heads + 2 * p.n_kv_heads)
    return p.n_layers * (attn + 3 * p.d_model * p.d_mlp) + p.vocab_size * p.d_model * (1 if p.tied_embeddings else 2)


def parts(profile: Any, dtype: str | None = None, work: Workload = Workload()) -> dict[str, float]:
    """Bytes of each resident part and of each stage's peak on top of them (keys ``"stage: ..."``)."""
    p, b = profile, _BYTES[dtype or profile.dtype]
    sae = (2 * p.d_model * p.d_sae + 2 * p.d_sae + p.d_model) * 4
    dense = p.d_sae * p.d_sae <= DENSE_MAX_ENTRIES
    kv_per_token = 2 * p.n_layers * p.n_kv_heads * p.head_dim * b
    g, t = work.gen_batch, work.prompt_tokens + work.new_tokens
    f, ft = work.fit_batch, work.fit_tokens
    lm, lt = work.lm_eval_batch, work.lm_eval_tokens
    return {
        "weights": n_params(p) * b,
        "two SAEs (fp32)": 2 * sae,
        "map (fp32)": (p.d_sae * p.d_sae if dense else 2 * p.d_sae * work.n_triples) * 4,
        "stage: generation": kv_per_token * g * t + 3 * g * work.prompt_tokens * p.d_sae * 4 + g * p.vocab_size * 4,
        "stage: fitting": (f * p.n_heads * ft * ft * 4 * 2 + f * ft * (p.d_mlp * 3 + p.d_model * 4) * b
                           + 3 * ft * p.d_sae * 4),  # codes are computed one row at a time
        "stage: lm-eval": lm * lt * p.vocab_size * (3 * b + 4) + kv_per_token * lm * lt,
    }


def need_bytes(profile: Any, dtype: str | None = None, work: Workload = Workload(), stage: str | None = None) -> float:
    """Resident bytes plus the peak of ``stage`` (``"generation"``, ``"fitting"``, ``"lm-eval"``; default the
    largest)."""
    ps = parts(profile, dtype, work)
    resident = resident_bytes(profile, dtype, work)
    peaks = {k.removeprefix("stage: "): v for k, v in ps.items() if k.startswith("stage: ")}
    return resident + (peaks[stage] if stage else max(peaks.values()))


def budget_bytes(total_bytes: float) -> float:
    """What a card of ``total_bytes`` may hold: less :data:`HEADROOM` and :data:`CONTEXT_BYTES`."""
    return total_bytes * (1 - HEADROOM) - CONTEXT_BYTES


_BATCH_FIELD = {"generation": "gen_batch", "fitting": "fit_batch", "lm-eval": "lm_eval_batch"}


def batch_sizes(profile: Any, total_bytes: float, dtype: str | None = None, work: Workload = Workload(),
                most: int = 64) -> dict[str, int]:
    """Per stage, the largest power-of-two batch (at most ``most``) that fits with the headroom; 0: not even 1."""
    out = {}
    for stage, field in _BATCH_FIELD.items():
        batch, size = 0, 1
        while size <= most and need_bytes(profile, dtype, replace(work, **{field: size}), stage) <= budget_bytes(
                total_bytes):
            batch, size = size, size * 2
        out[stage] = batch
    return out


def resident_bytes(profile: Any, dtype: str | None = None, work: Workload = Workload()) -> float:
    """Weights, SAEs and map: what stays on the card for the whole run."""
    return sum(v for k, v in parts(profile, dtype, work).items() if not k.startswith("stage: "))


def plan(profile: Any, total_bytes: float, capability: tuple[int, int] | None,
         work: Workload = Workload()) -> dict[str, Any]:
    """The gate every chapter and the pipeline use: the card's dtype, resident GB, budget GB, each stage's batch
    size and whether the run fits (every stage at batch >= 1)."""
    dtype = gpu_dtype(profile, capability)
    batches = batch_sizes(profile, total_bytes, dtype, work)
    return {"dtype": dtype, "resident_gb": resident_bytes(profile, dtype, work) / GB,
            "budget_gb": budget_bytes(total_bytes) / GB, "batch": batches, "fits": min(batches.values()) >= 1}


def fits(profile: Any, total_bytes: float, capability: tuple[int, int] | None = (8, 0),
         work: Workload = Workload()) -> bool:
    """Whether every stage fits a card of ``total_bytes`` at batch 1 or more, with the headroom."""
    return plan(profile, total_bytes, capability, work)["fits"]


def table(profiles: list[Any], gpus: dict[str, tuple[float, tuple[int, int]]] | None = None,
          work: Workload = Workload()) -> str:
    """The modelled plan per profile and card: dtype, resident GB, budget GB, fits, batch sizes per stage."""
    rows = [f"{'profile':14s} {'GPU':11s} {'dtype':8s} {'resident':>8s} {'budget':>7s} {'fits':>5s}  "
            "batch generate/fit/lm-eval"]
    for p in profiles:
        for gpu, (total, cap) in (gpus or GPUS).items():
            pl = plan(p, total, cap, work)
            bs = pl["batch"]
            rows.append(f"{p.name:14s} {gpu:11s} {pl['dtype']:8s} {pl['resident_gb']:8.1f} {pl['budget_gb']:7.1f} "
                        f"{'yes' if pl['fits'] else 'no':>5s}  {bs['generation']}/{bs['fitting']}/{bs['lm-eval']}")
    return "\n".join(rows)

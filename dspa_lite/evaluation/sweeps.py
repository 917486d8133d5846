"""Choosing DSPA's edit strength on a model without a judge: a sweep over ``(k, alpha)`` (chapter 07).

On the toy world the exact judge says which ``(k, alpha)`` helps (``experiment.DEFAULTS`` were picked
that way). On a real model there is no such judge until chapter 8, but four numbers need none, and they
are what :func:`sweep` measures for every setting on one fixed prompt set, one sampling seed:

- the **edit rate**: the share of decided positions (the last prompt position and each generated token
  up to the end of the response) where the edit changed at least one latent (read from
  ``LatentEdit.trace``); 0 means the edit does nothing;
- **distinct-2** and the **repetition rate** of the responses (``evals.text_metrics``): steering that
  breaks the text shows here first;
- the **length-cap rate**: the share of responses that reach ``max_new_tokens`` without ending their
  turn, counted as ``experiment.compare`` counts it.

:func:`choose` applies a stated rule to the table. A run of :func:`sweep` on Gemma-2-2B is recorded in
``benchmarks/results/gemma2_2b_sweep.json`` (:data:`RECORDING`) by ``python -m dspa_lite.evaluation.sweeps``
or by chapter 07 on a GPU; :func:`recorded` reads it back, or returns ``None`` when no run was recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from ..loading import repository
from ..method.dspa import DSPA
from ..method.generation import generate
from .evals import text_metrics

__all__ = ["GRID", "RECORDING", "TOLERANCE", "choose", "decided_positions", "edit_counts", "edit_rate", "recorded",
           "save", "sweep", "table"]

RECORDING = "gemma2_2b_sweep.json"
GRID = ((16, 1.0), (16, 3.0), (16, 6.0), (64, 1.0), (64, 3.0), (64, 6.0), (64, 10.0), (128, 3.0), (128, 6.0),
        (128, 10.0))
"""The ``(k, alpha)`` settings swept by default: ``k`` latents per set, ``alpha`` the augmentation."""
TOLERANCE = {"distinct_2": 0.05, "repetition_rate": 0.05, "length_cap_rate": 0.10}
"""How far a setting's text statistics may move from the unsteered model's in the harmful direction."""
COLUMNS = ("edit_rate", "latents_per_position", "distinct_2", "repetition_rate", "length_cap_rate", "mean_words")


def edit_counts(trace: Sequence[torch.Tensor], lengths: Sequence[int]) -> tuple[int, int, int]:
    """``(edited positions, decided positions, edited latents)`` of one batch's ``LatentEdit.trace``.

    ``trace[0]`` covers the prompt pass, whose last position decides the first response token; each
    later entry is ``(B, 1, d_sae)`` for one generated token. Row ``i`` counts its first ``lengths[i]``
    decided positions: positions after a response ended are padding the batch kept generating.

    >>> t = [torch.tensor([[[True, False]], [[False, False]]]), torch.tensor([[[True, True]], [[True, False]]])]
    >>> edit_counts(t, [2, 1])
    (2, 3, 3)
    """
    per_position = torch.cat([trace[0][:, -1:]] + list(trace[1:]), 1).sum(-1)  # (B, decided positions)
    if len(lengths) != per_position.shape[0]:
        raise ValueError(f"{len(lengths)} lengths for a batch of {per_position.shape[0]} rows")
    keep = torch.arange(per_position.shape[1])[None, :] < torch.as_tensor(list(lengths))[:, None]
    kept = per_position[keep]
    return int((kept > 0).sum()), int(keep.sum()), int(kept.sum())


def edit_rate(trace: Sequence[torch.Tensor], lengths: Sequence[int]) -> float:
    """The share of decided positions where the edit changed at least one latent (see :func:`edit_counts`)."""
    edited, decided, _ = edit_counts(trace, lengths)
    return edited / max(1, decided)


def decided_positions(tokenizer, texts: Sequence[str], max_new_tokens: int) -> list[int]:
    """Per response, its decided positions: its tokens and the one that ended it, at most ``max_new_tokens``.

    The count re-tokenizes the returned text, which drops special tokens; a tokenizer whose decode and
    encode do not round-trip may be off by a token or two on a response.
    """
    return [min(len(tokenizer(t, add_special_tokens=False).input_ids) + 1, max_new_tokens) for t in texts]


def _stats(tokenizer, texts: list[str], max_new_tokens: int) -> dict[str, float]:
    m = text_metrics(texts)
    capped = sum(len(tokenizer(t).input_ids) >= max_new_tokens - 1 for t in texts)  # as experiment.compare counts
    return {"distinct_2": m["distinct_2"], "repetition_rate": m["repetition_rate"], "mean_words": m["mean_words"],
            "length_cap_rate": capped / max(1, len(texts))}


def _steered(steerer: DSPA, prompts: list[str], kw: dict) -> tuple[list[str], tuple[int, int, int]]:
    """Generate under ``steerer`` and count its edits batch by batch (each batch's trace is dropped after)."""
    batches: list = []

    @contextlib.contextmanager
    def steer(batch_prompts, input_ids=None, attention_mask=None, start=None) -> Iterator:
        with steerer.steer(batch_prompts, input_ids, attention_mask, start) as ed:
            batches.append(ed)
            yield ed

    steerer.record = True
    texts = generate(steerer.model, steerer.tokenizer, prompts, steer=steer, **kw)
    totals = [0, 0, 0]
    for b, ed in enumerate(batches):
        rows = texts[b * kw["batch_size"]:(b + 1) * kw["batch_size"]]
        lengths = decided_positions(steerer.tokenizer, rows, kw["max_new_tokens"])
        counts = edit_counts(ed.trace, lengths) if ed.trace else (0, sum(lengths), 0)  # no trace: empty sets
        totals = [a + c for a, c in zip(totals, counts)]
        ed.trace.clear()
    return texts, (totals[0], totals[1], totals[2])


def sweep(model, tokenizer, sae_in, sae_out, cdmap, prompts: Sequence[str], settings=GRID, *, mode: str = "augment",
          max_new_tokens: int = 80, temperature: float = 1.0, seed: int = 0, batch_size: int = 50) -> dict:
    """Generate with DSPA at every ``(k, alpha)`` of ``settings`` on the same prompts and seed.

    Returns ``{"settings": {...}, "unsteered": {...}, "rows": [...]}``: the run's settings, the unsteered
    model's text statistics, and per setting ``k``, ``alpha``, ``edit_rate``, ``latents_per_position``
    (edited latents per decided position), ``distinct_2``, ``repetition_rate``, ``length_cap_rate``,
    ``mean_words`` and ``changed`` (the share of responses that differ from the unsteered ones).
    """
    prompts = list(prompts)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size)
    t0 = time.perf_counter()
    base = generate(model, tokenizer, prompts, **kw)
    rows = []
    for k, alpha in settings:
        steerer = DSPA(model, tokenizer, sae_in, sae_out, cdmap, mode, int(k), float(alpha))
        texts, (edited, decided, latents) = _steered(steerer, prompts, kw)
        rows.append({"k": int(k), "alpha": float(alpha), "edit_rate": edited / max(1, decided),
                     "latents_per_position": latents / max(1, decided), **_stats(tokenizer, texts, max_new_tokens),
                     "changed": sum(a != b for a, b in zip(base, texts)) / max(1, len(texts))})
    meta = {key: cdmap.meta.get(key) for key in ("model_id", "sae_in_id", "sae_out_id", "l_in", "l_out", "n_triples",
                                                  "data_hash")}
    return {"settings": {**meta, "mode": mode, "n_prompts": len(prompts), **kw},
            "unsteered": _stats(tokenizer, base, max_new_tokens), "rows": rows,
            "seconds": time.perf_counter() - t0}


def choose(result: dict, tolerance: dict | None = None) -> dict:
    """The strongest setting whose text statistics stay within ``tolerance`` of the unsteered model's.

    Within tolerance: distinct-2 at most ``tolerance["distinct_2"]`` below the unsteered model's, the
    repetition and length-cap rates at most their tolerance above it. Strongest: the largest
    ``alpha * latents_per_position`` (how much the edit amplifies, per decided position). ``None`` when
    no setting stays within tolerance.
    """
    tol = {**TOLERANCE, **(tolerance or {})}
    base = result["unsteered"]
    ok = [r for r in result["rows"]
          if r["distinct_2"] >= base["distinct_2"] - tol["distinct_2"]
          and r["repetition_rate"] <= base["repetition_rate"] + tol["repetition_rate"]
          and r["length_cap_rate"] <= base["length_cap_rate"] + tol["length_cap_rate"]]
    return max(ok, key=lambda r: (r["alpha"] * r["latents_per_position"], r["k"]), default=None)


def table(result: dict) -> str:
    """The sweep as a plain-text table, the unsteered model first."""
    head = f"{'k':>4} {'alpha':>5} {'edit rate':>9} {'latents/pos':>11} {'distinct-2':>10} {'repetition':>10} " \
           f"{'length cap':>10} {'words':>6}"
    lines = [head]
    u = result["unsteered"]
    lines.append(f"{'unsteered':>10} {'':>9} {'':>11} {u['distinct_2']:10.3f} {u['repetition_rate']:10.3f} "
                 f"{u['length_cap_rate']:10.2f} {u['mean_words']:6.1f}")
    for r in result["rows"]:
        lines.append(f"{r['k']:4d} {r['alpha']:5g} {r['edit_rate']:9.2f} {r['latents_per_position']:11.2f} "
                     f"{r['distinct_2']:10.3f} {r['repetition_rate']:10.3f} {r['length_cap_rate']:10.2f} "
                     f"{r['mean_words']:6.1f}")
    return "\n".join(lines)


def _results_dir(start: Path | None = None) -> Path | None:
    here = Path.cwd() if start is None else Path(start)
    return next((f / "benchmarks" / "results" for f in (here, *here.parents)
                 if (f / "benchmarks" / "results").is_dir()), None)


def recorded(name: str = RECORDING, start: Path | None = None, repo_url: str | None = None) -> dict | None:
    """The recorded sweep ``benchmarks/results/<name>``: from the clone above ``start`` (default: the working
    folder), else, given ``repo_url``, downloaded from that repository (Colab installs the package without
    the repository); ``None`` when neither has it."""
    folder = _results_dir(start)
    path = folder / name if folder else None
    if path and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if repo_url is None:
        return None
    try:
        return repository.fetch_json(f"benchmarks/results/{name}", repo_url)
    except (OSError, ValueError):  # no network, no such file (HTTPError is an OSError), not JSON
        return None


def save(result: dict, path: str | Path | None = None, start: Path | None = None) -> Path:
    """Write ``result`` with the machine and date; default path: ``benchmarks/results/<RECORDING>`` of the clone
    above ``start``, else ``./<RECORDING>``."""
    if path is None:
        folder = _results_dir(start)
        path = (folder if folder else Path.cwd()) / RECORDING
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    record = {**result, "machine": f"{platform.machine()}, GPU: {gpu}, Python {platform.python_version()}, "
                                   f"torch {torch.__version__}",
              "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    path = Path(path)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m dspa_lite.evaluation.sweeps``: fit on UltraFeedback, sweep on its test prompts, record."""
    from ..loading import models
    from ..loading.data import load_preferences
    from ..method.dspa import fit_cdmap

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="gemma-2-2b")
    ap.add_argument("--triples", type=int, default=250)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default=None, help=f"default: benchmarks/results/{RECORDING} of this clone")
    a = ap.parse_args(argv)
    model, tokenizer, sae_in, sae_out = models.load_all(a.profile)
    triples = load_preferences("ultrafeedback", split="train", n=a.triples, seed=0, max_chars=2000)
    cdmap = fit_cdmap(model, tokenizer, sae_in, sae_out, triples, progress=True)
    prompts = [t.prompt for t in load_preferences("ultrafeedback", split="test", n=a.prompts, seed=0, max_chars=2000)]
    result = sweep(model, tokenizer, sae_in, sae_out, cdmap, prompts, max_new_tokens=a.max_new_tokens,
                   temperature=a.temperature, batch_size=16)
    result["settings"]["profile"] = a.profile
    print(table(result), file=sys.stderr)
    return save(result, a.out)


if __name__ == "__main__":
    print(main())

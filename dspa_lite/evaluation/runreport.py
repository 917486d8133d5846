"""The tables ``dspa-lite pipeline`` writes and prints at the end of a run: text statistics of the answers,
lm-eval scores, each stage's recorded wall time (``timings.json``, kept across resumed runs) and the judge
commands."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..method.files import atomic_write

__all__ = ["machine", "record_time", "summary", "print_summary"]

TIMINGS = "timings.json"


def machine() -> dict[str, Any]:
    """What ran the stages: the GPU (or CPU) and the library versions that set the speed."""
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"device": gpu or "cpu", "torch": torch.__version__, "transformers": transformers.__version__}


def record_time(out: Path, stage: str, seconds: float, batch: int | None, where: dict[str, Any]) -> None:
    """Add one finished stage's wall time to ``out/timings.json`` (measured, with its machine and batch size)."""
    path = out / TIMINGS
    rows = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    rows[stage] = {"seconds": round(seconds, 2), "batch_size": batch, "finished": time.strftime("%Y-%m-%d %H:%M"),
                   **where}
    atomic_write(path, json.dumps(rows, indent=1) + "\n")


def summary(todo: list[tuple[str, Path]], s: Any, seconds: dict, out: Path) -> dict:
    from .evals import text_metrics
    from .formats import read_alpaca_outputs, read_mt_bench_answers

    gen, lm = {}, {}
    for name, path in todo:
        kind, _, method = name.partition(":")
        if kind in ("mt_bench", "alpaca"):
            texts = ([t for a in read_mt_bench_answers(path) for t in a.turns] if kind == "mt_bench"
                     else [row["output"] for row in read_alpaca_outputs(path)])
            gen[name] = {"n_texts": len(texts), **text_metrics(texts)}
        elif kind == "lm_eval":
            lm[method] = json.loads(path.read_text(encoding="utf-8"))["scores"]
    timings = out / TIMINGS
    recorded = json.loads(timings.read_text(encoding="utf-8")) if timings.exists() else {}
    return {"settings": asdict(s), "generation": gen, "lm_eval": lm, "seconds": seconds,
            "stage_seconds": {name: row["seconds"] for name, row in recorded.items()},
            "timings": recorded, "files": {name: str(path) for name, path in todo}}


def print_summary(summary: dict, out: Path, name: str, methods: tuple[str, ...]) -> None:
    _log(f"\n{'answers':16s} {'texts':>6s} {'words':>7s} {'distinct-2':>10s} {'repetition':>10s}")
    for stage, g in summary["generation"].items():
        _log(f"{stage:16s} {g['n_texts']:6d} {g['mean_words']:7.1f} {g['distinct_2']:10.3f} {g['repetition_rate']:10.3f}")
    for method, scores in summary["lm_eval"].items():
        _log(f"lm-eval {method:5s} " + ", ".join(f"{t} {m} {v:.3f}" for t, ms in scores.items() for m, v in ms.items()))
    for stage, row in summary["timings"].items():
        _log(f"measured {stage:16s} {row['seconds'] / 60:6.1f} min on {row['device']} (batch {row['batch_size']})")
    ids = " ".join(f"{name}-{m}" for m in methods)
    _log(f"\nJudge the answers (a judge model; a judge other than the benchmarks' own makes the numbers incomparable "
         f"with their leaderboards):\n  MT-Bench: copy {out / 'mt_bench' / 'model_answer'}/*.jsonl into FastChat's "
         f"fastchat/llm_judge/data/mt_bench/model_answer/, then\n    python -m fastchat.llm_judge.gen_judgment "
         f"--model-list {ids}\n    python -m fastchat.llm_judge.show_result --model-list {ids}\n  AlpacaEval: "
         f"alpaca_eval --model_outputs {out / 'alpaca_eval' / f'{name}-dspa.json'} --reference_outputs "
         f"{out / 'alpaca_eval' / f'{name}-none.json'}\n  or any OpenAI-compatible judge: dspa_lite.evaluation.judges")




def _log(*parts) -> None:
    import sys

    print(*parts, file=sys.stderr, flush=True)

"""``dspa-lite pipeline``: DSPA on a real model (Gemma-2-2B-it by default) end to end, resumable.

In Colab (a GPU runtime; accept the Gemma licence on huggingface.co and log in first with ``notebook_login()``,
or, for a token kept as the Colab secret ``HF_TOKEN``, ``dspa_lite.loading.colab.export_hf_token()``: a ``!``
command is a subprocess, which cannot read Colab secrets; see book chapter 07)::

    !pip install -q "dspa-lite[eval] @ git+https://github.com/dspa-lite/dspa-lite@main"   # eval: lm-eval
    !dspa-lite pipeline --dry-run                                  # the plan; loads nothing
    !dspa-lite pipeline --out /content/drive/MyDrive/dspa-run      # the same line again resumes

Each stage writes one file into ``--out`` (the map: one folder), atomically, and is skipped when it is there:

    triples.jsonl                             preference triples (UltraFeedback, or --data)
    mt_bench/question.jsonl                   MT-Bench questions, a subset balanced over categories
    alpaca_eval/instructions.json             a seeded subset of AlpacaEval's 805 instructions
    cdmap/                                    the fitted conditional-difference map (loads the model)
    mt_bench/model_answer/<profile>-M.jsonl   MT-Bench answers (both turns) for M = none, static, dspa
    alpaca_eval/<profile>-M.json              AlpacaEval outputs for M
    lm_eval/M.json                            lm-eval multiple-choice accuracy for M = none, dspa
    timings.json                              each finished stage's wall time, GPU and batch size (measured)
    summary.json                              the tables (rewritten by every run)

``settings.json`` keeps the settings that change results; a rerun with others stops and asks for a new ``--out``.
Judging needs a judge model, so the run ends by printing the FastChat and alpaca_eval commands. ``--quick`` is a
smoke run. Batch sizes come from the memory model for the GPU (``dspa_lite.loading.memory``, printed by the dry
run); each finished stage's wall time, GPU and batch size go into ``timings.json`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import random
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ..loading.profiles import Profile, get_profile
from ..method.files import atomic_write
from . import runreport

__all__ = ["LM_EVAL_METHODS", "METHODS", "PipelineError", "Settings", "add_arguments", "plan", "run", "stages"]

METHODS = ("none", "static", "dspa")
LM_EVAL_METHODS = ("none", "dspa")
MT_BENCH_URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/mt_bench/question.jsonl"
ALPACA_TEMPERATURE = 0.7
QUICK = dict(n_triples=32, mt_bench_n=8, alpaca_n=8, max_new_tokens=64, tasks="arc_easy", lm_eval_limit=20)


def _log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


class PipelineError(ValueError):
    """A run folder, setting or input the pipeline cannot use; the message says what to do."""


@dataclass(frozen=True)
class Settings:
    """Everything that changes the results; kept in ``settings.json`` in the run's folder."""

    profile: str = "gemma-2-2b-it"  # -it: MT-Bench and AlpacaEval ask chat questions
    data: str = "ultrafeedback"
    n_triples: int = 250
    max_chars: int = 2000
    mt_bench_n: int = 80
    alpaca_n: int = 100
    mode: str = "augment"
    k: int = 64
    alpha: float = 6.0
    max_new_tokens: int = 384
    tasks: str = "arc_easy,arc_challenge,hellaswag"
    lm_eval_limit: int = 300
    seed: int = 0


HELP = dict(
    profile="gemma-2-2b-it, gemma-2-2b, gemma-2-9b or qwen3-8b",
    data="preference data: ultrafeedback, a hub dataset, a .jsonl or a save_to_disk folder",
    n_triples="triples to fit on", max_chars="drop longer triples", mt_bench_n="MT-Bench questions (0 skips)",
    alpaca_n="AlpacaEval instructions (0 skips)", mode="the edit", k="latents per set", alpha="augment scale",
    max_new_tokens="answer length cap", tasks="lm-eval tasks, comma-separated ('' skips)",
    lm_eval_limit="documents per lm-eval task", seed="seed of the subsets and of sampling")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The subcommand's options: one per :class:`Settings` field, then how to run (not recorded)."""
    for f in fields(Settings):
        quick = f"; --quick {QUICK[f.name]!r}" if f.name in QUICK else ""
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), help=f"{HELP[f.name]} (default "
                       f"{f.default!r}{quick})", **({"choices": ("ablate", "augment", "both")} if f.name == "mode" else {}))
    p.add_argument("--out", default="dspa-run", help="output folder; run again with the same one to resume")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (the --quick sizes above)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and which files exist; load nothing")
    p.add_argument("--batch-size", type=int, help="every stage's batch (default: from the memory model for this GPU)")
    p.add_argument("--model-path", help="a local copy of the model (hub layout) instead of downloading it")
    p.add_argument("--mt-bench-questions", default=MT_BENCH_URL, help="FastChat's question.jsonl: a path or URL")
    p.add_argument("--alpaca-file", help="a local alpaca_eval.json instead of the hub's (tatsu-lab/alpaca_eval)")
    p.add_argument("--lm-eval-include", help="a folder of lm-eval task YAMLs; only these are indexed (offline)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")


def settings_from(args: argparse.Namespace) -> Settings:
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name, None) is not None}
    s = replace(Settings(), **{**(QUICK if getattr(args, "quick", False) else {}), **given})
    if min(s.n_triples, s.max_new_tokens) < 1 or min(s.mt_bench_n, s.alpaca_n, s.lm_eval_limit) < 0:
        raise PipelineError("--n-triples and --max-new-tokens must be at least 1, the other sizes at least 0")
    return replace(s, tasks=",".join(t.strip() for t in s.tasks.split(",") if t.strip()))


def stages(s: Settings, out: Path, name: str) -> list[tuple[str, Path]]:
    """``(stage, output)`` in the order they run; ``name`` (the profile's) names the answer files."""
    mt, alp = out / "mt_bench", out / "alpaca_eval"
    return [("triples", out / "triples.jsonl"), *[("questions", mt / "question.jsonl")] * bool(s.mt_bench_n),
            *[("instructions", alp / "instructions.json")] * bool(s.alpaca_n), ("fit", out / "cdmap"),
            *[(f"mt_bench:{m}", mt / "model_answer" / f"{name}-{m}.jsonl") for m in METHODS if s.mt_bench_n],
            *[(f"alpaca:{m}", alp / f"{name}-{m}.json") for m in METHODS if s.alpaca_n],
            *[(f"lm_eval:{m}", out / "lm_eval" / f"{m}.json") for m in LM_EVAL_METHODS if s.tasks]]


def _settings_clash(out: Path, s: Settings) -> str | None:
    path = out / "settings.json"
    before, now = (json.loads(path.read_text(encoding="utf-8")) if path.exists() else asdict(s)), asdict(s)
    diff = [f"{k}: {before.get(k)!r} there, {now.get(k)!r} now" for k in {**before, **now} if before.get(k) != now.get(k)]
    return f"{out} holds a run with other settings ({'; '.join(diff)}): pass a new --out" if diff else None


def plan(s: Settings, out: Path, profile: Profile) -> dict:
    """What a run would do, from the settings and the files alone (nothing is loaded)."""
    saes = {layer: str(profile.sae_path(layer) or f"{profile.sae_release}/{profile.sae_id(layer)}")
            for layer in (profile.l_in, profile.l_out)}
    from ..loading.memory import GPUS, Workload
    from ..loading.memory import plan as memory_plan

    work = Workload(new_tokens=s.max_new_tokens, n_triples=s.n_triples)
    memory = {gpu: memory_plan(profile, total, cap, work) for gpu, (total, cap) in GPUS.items()}
    return {"profile": profile.name, "model": profile.model_path or profile.model_id, "layers": [profile.l_in, profile.l_out],
            "saes": saes, "d_sae": profile.d_sae, "memory_modelled": memory, "out": str(out),

            "settings": asdict(s), "settings_clash": _settings_clash(out, s),
            "stages": [{"stage": n, "file": str(p), "exists": p.exists()} for n, p in stages(s, out, profile.name)]}


def _print_plan(p: dict) -> None:
    s = p["settings"]
    _log(f"DSPA on {p['model']}, layers {p['layers'][0]} -> {p['layers'][1]}, SAEs {' -> '.join(p['saes'].values())} "
         f"({p['d_sae']} wide)")
    fits = [f"{gpu} ({m['dtype']}, batch {'/'.join(map(str, m['batch'].values()))})"
            for gpu, m in p["memory_modelled"].items() if m["fits"]]
    fits = ", ".join(fits) or "none of " + ", ".join(p["memory_modelled"])
    _log(f"  memory (modelled by dspa_lite.loading.memory): fits {fits}. No time is predicted: a run records each "
         "stage's wall time on its GPU in timings.json")
    _log(f"  fit on {s['n_triples']} triples of {s['data']}; {s['mode']} k={s['k']} alpha={s['alpha']}; MT-Bench "
         f"{s['mt_bench_n']} x 2 turns and AlpacaEval {s['alpaca_n']}, <= {s['max_new_tokens']} new tokens; lm-eval "
         f"{s['tasks'] or 'skipped'} (limit {s['lm_eval_limit']}); seed {s['seed']}")
    for row in p["stages"]:
        _log(f"  {'done ' if row['exists'] else 'to do'}  {row['stage']:15s} {row['file']}")
    if p["settings_clash"]:
        _log(f"  this run would stop: {p['settings_clash']}")


class _Run:
    """The model, SAEs, map and steerers, loaded when a stage first needs them (a finished run loads nothing)."""

    def __init__(self, s: Settings, profile: Profile, files: dict[str, Path], args: argparse.Namespace):
        self.s, self.profile, self.files, self.args = s, profile, files, args

    @functools.cached_property
    def loaded(self) -> tuple:
        import torch

        from ..loading import models
        from ..loading.hub import ModelLoadError

        if not torch.cuda.is_available():
            _log("warning: no CUDA GPU: this will be very slow (it is meant for a GPU runtime)")
        try:
            return models.load_all(self.profile)
        except ModelLoadError as e:
            raise PipelineError(str(e)) from e

    @functools.cached_property
    def batches(self) -> dict[str, int]:
        """``--batch-size`` for every stage, else the memory model's for this GPU (generation and fitting capped at
        16, so that every card that fits them samples the same batches), else 16 / 16 / 8 without a GPU."""
        from ..loading.colab import gpu_plan
        from ..loading.memory import Workload

        if self.args.batch_size:
            return dict.fromkeys(("generation", "fitting", "lm-eval"), self.args.batch_size)
        plan = gpu_plan(self.profile, Workload(new_tokens=self.s.max_new_tokens, n_triples=self.s.n_triples))
        if plan is None:
            return {"generation": 16, "fitting": 16, "lm-eval": 8}
        if not plan["fits"]:
            raise PipelineError(f"{self.profile.name} does not fit {plan['gpu']} ({plan['total_gb']:.0f} GB) in "
                                f"{plan['dtype']} by the memory model (dspa_lite.loading.memory): use a larger GPU")
        b = plan["batch"]
        return {"generation": min(b["generation"], 16), "fitting": min(b["fitting"], 16), "lm-eval": b["lm-eval"]}

    def batch_of(self, stage: str) -> int | None:
        key = {"mt_bench": "generation", "alpaca": "generation", "fit": "fitting", "lm_eval": "lm-eval"}.get(
            stage.partition(":")[0])
        return self.batches[key] if key else None

    @functools.cached_property
    def steerers(self) -> dict:
        from ..method.baselines import StaticSAE, Unsteered
        from ..method.cdmap import CDMap
        from ..method.dspa import DSPA

        (model, tok, sae_in, sae_out), s = self.loaded, self.s
        cdmap = CDMap.load(self.files["fit"])
        return {"none": Unsteered(model, tok), "static": StaticSAE(model, tok, sae_out, cdmap, s.mode, s.k, s.alpha),
                "dspa": DSPA(model, tok, sae_in, sae_out, cdmap, s.mode, s.k, s.alpha)}


def _triples(r: _Run, path: Path, _: str) -> None:
    from ..loading.data import load_preferences, write_jsonl

    s = r.s
    write_jsonl(load_preferences(s.data, split="train", n=s.n_triples, seed=s.seed, max_chars=s.max_chars), path)


def _fit(r: _Run, path: Path, _: str) -> None:
    from ..loading.data import read_jsonl
    from ..method.cdmap import CDMapConfig
    from ..method.dspa import fit_cdmap

    model, tok, sae_in, sae_out = r.loaded
    triples = read_jsonl(r.files["triples"])
    config = replace(CDMapConfig.default(), batch_size=r.batches["fitting"])
    fit_cdmap(model, tok, sae_in, sae_out, triples, config, progress=True).save(path)


def _questions(r: _Run, path: Path, _: str) -> None:
    from .formats import MTBenchQuestion

    src = r.args.mt_bench_questions
    if Path(src).expanduser().is_file():
        text = Path(src).expanduser().read_text(encoding="utf-8")
    else:
        with urllib.request.urlopen(src, timeout=60) as f:  # noqa: S310 - a URL the user chose (default FastChat's)
            text = f.read().decode("utf-8")
    by_cat: dict[str, list] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            q = MTBenchQuestion.from_row(json.loads(line), f"{src}:{i}")
            by_cat.setdefault(q.category, []).append(q)
    picked = [q for row in itertools.zip_longest(*by_cat.values()) for q in row if q][: r.s.mt_bench_n]  # round-robin
    rows = [{k: v for k, v in asdict(q).items() if v is not None} for q in picked]
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _instructions(r: _Run, path: Path, _: str) -> None:
    if r.args.alpaca_file:
        source = Path(r.args.alpaca_file).expanduser()
    else:
        from huggingface_hub import hf_hub_download

        from ..loading.hub import hub_env

        with hub_env():
            source = Path(hf_hub_download("tatsu-lab/alpaca_eval", "alpaca_eval.json", repo_type="dataset"))
    rows = json.loads(source.read_text(encoding="utf-8"))
    keep = sorted(random.Random(r.s.seed).sample(range(len(rows)), min(r.s.alpaca_n, len(rows))))
    picked = [{"instruction": rows[i]["instruction"], "dataset": rows[i].get("dataset"), "index": i} for i in keep]
    atomic_write(path, json.dumps(picked, indent=1, ensure_ascii=False) + "\n")


def _mt_bench(r: _Run, path: Path, method: str) -> None:
    from .formats import generate_mt_bench_answers, read_mt_bench_questions, write_mt_bench_answers

    model, tok, _, _ = r.loaded
    steer = None if method == "none" else r.steerers[method].steer
    answers = generate_mt_bench_answers(model, tok, read_mt_bench_questions(r.files["questions"]), path.stem,
                                        steer=steer, max_new_tokens=r.s.max_new_tokens, seed=r.s.seed,
                                        batch_size=r.batches["generation"], progress=True)
    write_mt_bench_answers(answers, path.parent)


def _alpaca(r: _Run, path: Path, method: str) -> None:
    from .formats import write_alpaca_outputs

    rows = json.loads(r.files["instructions"].read_text(encoding="utf-8"))
    instructions = [row["instruction"] for row in rows]
    outputs = r.steerers[method].generate(instructions, max_new_tokens=r.s.max_new_tokens, temperature=ALPACA_TEMPERATURE,
                                          seed=r.s.seed, batch_size=r.batches["generation"], progress=True)
    write_alpaca_outputs(path, instructions, outputs, path.stem, [row.get("dataset") for row in rows])


def _lm_eval(r: _Run, path: Path, method: str) -> None:
    from lm_eval.tasks import TaskManager

    from .lmeval import run_lm_eval, task_scores

    model, tok, _, _ = r.loaded
    include = r.args.lm_eval_include
    tasks = TaskManager(include_path=str(Path(include).expanduser()), include_defaults=False) if include else None
    res = run_lm_eval(model, tok, r.s.tasks.split(","), steerer=None if method == "none" else r.steerers[method],
                      limit=r.s.lm_eval_limit, batch_size=r.batches["lm-eval"], random_seed=r.s.seed, task_manager=tasks)
    keep = {k: res.get(k) for k in ("n-shot", "versions", "n-samples")}
    atomic_write(path, json.dumps({"scores": task_scores(res), "limit": r.s.lm_eval_limit, **keep}, indent=1,
                                  default=str) + "\n")


STAGES = {"triples": _triples, "fit": _fit, "questions": _questions, "instructions": _instructions,
          "mt_bench": _mt_bench, "alpaca": _alpaca, "lm_eval": _lm_eval}


def run(args: argparse.Namespace) -> dict:
    """Run (or, with ``args.dry_run``, plan) the pipeline; returns the plan or the summary."""
    s = settings_from(args)
    profile, out = get_profile(s.profile), Path(args.out).expanduser()
    profile = profile.with_paths(model_path=args.model_path) if getattr(args, "model_path", None) else profile
    p = plan(s, out, profile)
    _print_plan(p)
    if args.dry_run:
        return p
    if p["settings_clash"]:
        raise PipelineError(p["settings_clash"])
    todo = stages(s, out, profile.name)
    if any(n.startswith("lm_eval") and not f.exists() for n, f in todo) and not importlib.util.find_spec("lm_eval"):
        raise PipelineError("lm-eval is not installed: pip install 'dspa-lite[eval]' (or, in a new --out, "
                            "pass --tasks '' to skip it)")
    atomic_write(out / "settings.json", json.dumps(asdict(s), indent=1) + "\n")
    r, seconds, where = _Run(s, profile, dict(todo), args), {}, runreport.machine()
    for i, (name, path) in enumerate(todo, 1):
        if path.exists():
            continue
        _log(f"\n== [{i}/{len(todo)}] {name} -> {path}")
        t0 = time.perf_counter()
        STAGES[name.partition(":")[0]](r, path, name.partition(":")[2])
        seconds[name] = time.perf_counter() - t0
        runreport.record_time(out, name, seconds[name], r.batch_of(name), where)
        _log(f"== {name} done in {seconds[name] / 60:.1f} min")
    result = runreport.summary(todo, s, seconds, out)
    atomic_write(out / "summary.json", json.dumps(result, indent=1, default=str) + "\n")
    runreport.print_summary(result, out, profile.name, METHODS)
    return result

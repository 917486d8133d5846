"""Gemma-2-2B end to end on one GPU: fit DSPA, write MT-Bench and AlpacaEval answers, run lm-eval (not run in CI).

In Colab (a GPU runtime; accept the Gemma licence on huggingface.co and log in first, see book chapter 07):

    !pip install -q "dspa-lite[eval] @ git+https://github.com/dspa-lite/dspa-lite"   # with lm-eval
    !python benchmarks/gemma2_2b_colab.py --dry-run                     # the plan and the estimate, nothing loaded
    !python benchmarks/gemma2_2b_colab.py --out /content/drive/MyDrive/dspa-gemma2-2b   # resumable
    !python benchmarks/gemma2_2b_colab.py --quick --out /content/quick  # a smoke run of a few minutes

Stages, each written atomically into ``--out`` and skipped when its output is already there (so an
interrupted run, or a Colab session that timed out, continues where it stopped):

    triples         UltraFeedback preference triples                    triples.jsonl
    fit             the conditional-difference map                      cdmap/
    calibrate       a few timed decoding steps: the measured estimate   calibration.json
    questions       FastChat's 80 MT-Bench questions                    mt_bench/question.jsonl
    instructions    a seeded subset of AlpacaEval's 805 instructions     alpaca_eval/instructions.json
    mt_bench:M      MT-Bench answers (both turns) for M = none, static, dspa   mt_bench/model_answer/<profile>-M.jsonl
    alpaca:M        AlpacaEval outputs for M                            alpaca_eval/<profile>-M.json
    lm_eval:M       lm-eval multiple-choice accuracy for M = none, dspa lm_eval/M.json
    summary         the tables                                          summary.json (timings: stats/)

Judging is not run here (it needs a judge model): the script prints the FastChat and alpaca_eval commands.
The default sizes (250 triples; 80 MT-Bench questions and 100 AlpacaEval instructions for each of none, static
and DSPA, at most 384 new tokens; three lm-eval tasks of 300 documents, without and with DSPA) are meant to
finish in about 30 minutes on one A100; on a T4, whose missing bf16 tensor cores slow the lm-eval stages most,
plan on about an hour. ``--dry-run`` prints the modelled estimate for a T4, L4, A100 and H100, and a real run
prints an estimate measured on your GPU before the long stages. ``--json`` ends stdout with one JSON object
(the plan for ``--dry-run``, else the summary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import urllib.request
from pathlib import Path

from dspa_lite.evaluation import flops
from dspa_lite.evaluation.formats import atomic_write
from dspa_lite.loading.profiles import PROFILES, Profile

MT_BENCH_URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data/mt_bench/question.jsonl"
ALPACA_REPO, ALPACA_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval.json"
METHODS = ("none", "static", "dspa")
LM_EVAL_METHODS = ("none", "dspa")
# Datasheet figures: memory (GB), dense bf16 tensor TFLOP/s (the T4 has no bf16 tensor cores: PyTorch emulates
# bf16 there, so its fp32 rate), memory bandwidth (GB/s).
GPUS = {"T4 16 GB": (16, 8.1, 320), "L4 24 GB": (24, 121, 300), "A100 40 GB": (40, 312, 1555),
        "A100 80 GB": (80, 312, 2039), "H100 80 GB": (80, 989, 3350)}
# Assumptions of the modelled estimate (the calibrate stage replaces the decoding ones by measurements).
ASSUME = dict(mfu=0.4, step_overhead_s=0.04, download_mb_s=100, load_s=30, data_s=60, cpu_gflops=20,
              chars_per_token=4, lm_eval_tokens=100, lm_eval_choices=4, lm_eval_setup_s=60)
ASSUME_NOTES = {
    "mfu": "share of the dense bf16 peak reached by batched forward passes",
    "step_overhead_s": "Python and kernel launches per decoding step of transformers' generate (eager attention)",
    "download_mb_s": "download speed from the Hugging Face hub (0 s when cached)",
    "cpu_gflops": "float64 GFLOP/s of the CPU that estimates the map",
    "lm_eval_tokens": "tokens per multiple-choice request (context + option)",
}
FULL = dict(n_triples=250, mt_bench_n=80, alpaca_n=100, max_new_tokens=384,
            tasks="arc_easy,arc_challenge,hellaswag", lm_eval_limit=300)
QUICK = dict(n_triples=32, mt_bench_n=8, alpaca_n=8, max_new_tokens=64, tasks="arc_easy", lm_eval_limit=20)
# Which settings change what a kind of stage writes: a resumed run may change a setting only if no stage
# that depends on it has finished (e.g. add lm-eval tasks later, but not change k after answers exist).
_STEERING = ("mode", "k", "alpha")
SETTINGS = {"profile": ("*",), "seed": ("*",), "data": ("triples",), "n_triples": ("triples",),
            "max_chars": ("triples",), **{k: ("calibrate", "mt_bench", "alpaca", "lm_eval") for k in _STEERING},
            "batch_size": ("calibrate", "mt_bench", "alpaca"), "max_new_tokens": ("mt_bench", "alpaca"),
            "mt_bench_n": ("mt_bench",), "alpaca_n": ("instructions", "alpaca"), "alpaca_temperature": ("alpaca",),
            "tasks": ("lm_eval",), "lm_eval_limit": ("lm_eval",), "methods": ()}


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=("gemma-2-2b", "gemma-2-2b-it"), default="gemma-2-2b-it",
                   help="model; -it by default, because MT-Bench and AlpacaEval ask chat questions (default: %(default)s)")
    p.add_argument("--out", default="dspa_gemma2_2b_run", help="output folder; rerun with it to resume")
    p.add_argument("--quick", action="store_true", help="a smoke run: few triples, questions and tokens")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimate; load and write nothing")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    p.add_argument("--n-triples", type=int, help=f"preference triples to fit on (default {FULL['n_triples']})")
    p.add_argument("--max-chars", type=int, default=2000, help="drop longer triples (default %(default)s)")
    p.add_argument("--data", help="local preference data instead of UltraFeedback (.jsonl or save_to_disk folder)")
    p.add_argument("--mt-bench-n", type=int, help="MT-Bench questions, balanced over categories (0 skips; max 80)")
    p.add_argument("--mt-bench-questions", default=MT_BENCH_URL, help="question.jsonl path or URL (FastChat's)")
    p.add_argument("--alpaca-n", type=int, help="AlpacaEval instructions, a seeded subset of 805 (0 skips)")
    p.add_argument("--alpaca-file", help="local alpaca_eval.json instead of the hub's")
    p.add_argument("--alpaca-temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, help="answer length cap (FastChat uses 1024: slower)")
    p.add_argument("--tasks", help="lm-eval tasks, comma-separated ('' skips)")
    p.add_argument("--lm-eval-limit", type=int, help="documents per lm-eval task")
    p.add_argument("--lm-eval-include", help="a folder of local lm-eval task YAMLs (only these are indexed: offline)")
    p.add_argument("--methods", default=",".join(METHODS), help="generation methods (default %(default)s)")
    p.add_argument("--mode", default="augment", choices=("ablate", "augment", "both"))
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--alpha", type=float, default=6.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", choices=[*GPUS, "auto"], default="auto", help="GPU to estimate for (default: detect)")
    p.add_argument("--model-path", help="a local copy of the model (hub layout) instead of downloading it")
    p.add_argument("--sae-path", action="append", default=[], metavar="LAYER=DIR",
                   help="a local SAE folder (sae-lens layout) for a layer; repeat for both layers")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m for m in args.methods.split(",") if m]
    if bad := [m for m in args.methods if m not in METHODS]:
        p.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    args.task_list = [t for t in args.tasks.split(",") if t.strip()]
    for key in ("n_triples", "batch_size", "max_new_tokens"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if not 0 <= args.mt_bench_n <= 80:
        p.error("--mt-bench-n must be between 0 and 80 (MT-Bench has 80 questions)")
    return args


def settings(args) -> dict:
    return {k: getattr(args, k) for k in SETTINGS}


# --- files -------------------------------------------------------------------------------------------------


def write_json(path: Path, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


class Layout:
    """Where each stage writes; a stage is done when its output exists."""

    def __init__(self, out: Path, profile: Profile):
        self.out, self.name = out, profile.name

    def model_id(self, method: str) -> str:
        return f"{self.name}-{method}"  # FastChat names the model after its answer file

    def path(self, stage: str) -> Path:
        kind, _, method = stage.partition(":")
        return {"triples": self.out / "triples.jsonl", "fit": self.out / "cdmap", "calibrate": self.out / "calibration.json",
                "questions": self.out / "mt_bench" / "question.jsonl",
                "instructions": self.out / "alpaca_eval" / "instructions.json",
                "mt_bench": self.out / "mt_bench" / "model_answer" / f"{self.model_id(method)}.jsonl",
                "alpaca": self.out / "alpaca_eval" / f"{self.model_id(method)}.json",
                "lm_eval": self.out / "lm_eval" / f"{method}.json"}[kind]

    def stats(self, stage: str) -> Path:  # timings and length-cap rates, kept out of the answer folders
        return self.out / "stats" / f"{stage.replace(':', '-')}.json"

    def done(self, stage: str) -> bool:
        return self.path(stage).exists()


NEEDS_MODEL = ("fit", "calibrate", "mt_bench", "alpaca", "lm_eval")


class RunError(Exception):
    """A problem with the run's folder or settings; the message says what to do."""


def stage_names(args) -> list[str]:
    names = ["triples", "fit", "calibrate"]
    names += ["questions"] * bool(args.mt_bench_n) + ["instructions"] * bool(args.alpaca_n)
    names += [f"mt_bench:{m}" for m in args.methods if args.mt_bench_n]
    names += [f"alpaca:{m}" for m in args.methods if args.alpaca_n]
    names += [f"lm_eval:{m}" for m in LM_EVAL_METHODS if args.task_list]
    return names


# --- the modelled estimate -----------------------------------------------------------------------------------


def n_params(s: flops.ModelShape) -> int:
    """Weights of every matmul plus the embedding (the same count as book chapter 07)."""
    attn = s.d_model * s.head_dim * (2 * s.n_heads + 2 * s.n_kv_heads)
    mlp = (3 if s.gated_mlp else 2) * s.d_model * s.d_mlp
    return s.n_layers * (attn + mlp) + s.vocab * s.d_model * (1 if s.tied_embeddings else 2)


def sae_bytes(d_model: int, d_sae: int) -> int:
    return (2 * d_model * d_sae + 2 * d_sae + d_model) * 4  # float32 W_enc, W_dec, b_enc, threshold, b_dec


def mt_bench_batches(n_questions: int, batch: int) -> int:
    """Batches per turn: ``n`` questions balanced over MT-Bench's 8 categories, one batch group per temperature
    (FastChat samples writing/roleplay at 0.7, stem/humanities at 0.1, the other four greedily)."""
    per_cat = [n_questions // 8 + (i < n_questions % 8) for i in range(8)]  # the order of balanced_questions
    groups = [per_cat[0] + per_cat[1], per_cat[2] + per_cat[3], sum(per_cat[4:])]
    return sum(math.ceil(g / batch) for g in groups if g)


CATEGORY_ORDER = ("writing", "roleplay", "stem", "humanities", "reasoning", "math", "coding", "extraction")


def estimate(args, profile: Profile, gpu: str, prompt_tokens: int = 150, response_tokens: int = 350,
             measured_step: dict | None = None) -> dict[str, float]:
    """Seconds per stage on ``gpu``: fitting from its FLOPs (``dspa_lite.evaluation.flops``), decoding from bytes read per
    step plus a fixed overhead (or ``measured_step`` seconds), lm-eval from its forward FLOPs."""
    _, tflops, bandwidth = GPUS[gpu]
    a, shape = ASSUME, flops.ModelShape.preset("gemma-2-2b")  # gemma-2-2b and -it share the architecture
    weights, sae = 2 * n_params(shape), sae_bytes(shape.d_model, profile.d_sae)
    peak = tflops * 1e12 * a["mfu"]
    step = {m: a["step_overhead_s"] + (weights + (m != "none") * sae) / (bandwidth * 1e9) for m in METHODS}
    step.update(measured_step or {})
    fit = flops.dspa_fit(shape, profile.d_sae, profile.d_sae, args.n_triples, prompt_tokens, response_tokens,
                         profile.l_in, profile.l_out)["total"]
    est = {"load": (weights + 2 * sae) / (a["download_mb_s"] * 1e6) + a["load_s"], "triples": a["data_s"],
           "fit": fit / peak + 2 * args.n_triples * profile.d_sae ** 2 / (a["cpu_gflops"] * 1e9),
           "calibrate": sum(52 * step[m] for m in METHODS) + 10, "questions": 5, "instructions": 5}
    for m in args.methods:
        est[f"mt_bench:{m}"] = 2 * mt_bench_batches(args.mt_bench_n, args.batch_size) * args.max_new_tokens * step[m]
        est[f"alpaca:{m}"] = math.ceil(args.alpaca_n / args.batch_size) * args.max_new_tokens * step[m]
    requests = len(args.task_list) * args.lm_eval_limit * a["lm_eval_choices"]
    tokens = requests * a["lm_eval_tokens"]
    forward = flops.forward_flops(shape, tokens, a["lm_eval_tokens"])
    edit = tokens * flops.decode_overhead(shape, profile.d_sae, "dspa")["edit_per_token"]
    for m in LM_EVAL_METHODS:
        est[f"lm_eval:{m}"] = ((forward + (m == "dspa") * edit) / peak + requests / args.batch_size
                               * a["step_overhead_s"] + a["lm_eval_setup_s"])
    return {s: est[s] for s in ["load", *stage_names(args)]}


def detect_gpu() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name, mem = torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory / 1e9
    for key in ("T4", "L4", "H100"):
        if key in name:
            return next(g for g in GPUS if g.startswith(key))
    if "A100" in name:
        return "A100 80 GB" if mem > 60 else "A100 40 GB"
    return "A100 40 GB"  # an unknown GPU: A100 figures, said in the plan


def triple_lengths(path: Path) -> tuple[int, int]:
    """Mean prompt and response tokens of saved triples (characters / 4), or the assumed 150 + 350."""
    if not path.exists():
        return 150, 350
    from dspa_lite.loading.data import read_jsonl

    rows = read_jsonl(path)
    c = ASSUME["chars_per_token"]
    prompt = sum(len(t.prompt) for t in rows) / len(rows) / c
    response = sum(len(t.chosen) + len(t.rejected) for t in rows) / (2 * len(rows)) / c
    return max(1, round(prompt)), max(1, round(response))


def plan(args, profile: Profile, layout: Layout, gpu: str | None) -> dict:
    lengths = triple_lengths(layout.path("triples"))
    minutes = {g: {s: sec / 60 for s, sec in estimate(args, profile, g, *lengths).items()} for g in GPUS}
    todo = [s for s in stage_names(args) if not layout.done(s)]
    needs_model = any(s.partition(":")[0] in NEEDS_MODEL for s in todo)
    for g in minutes:
        minutes[g]["total (stages to run)"] = sum(minutes[g][s] for s in (["load"] * needs_model + todo))
    stages = [{"stage": s, "done": layout.done(s), "output": str(layout.path(s))} for s in stage_names(args)]
    return {"profile": profile.name, "model_id": profile.model_id, "out": str(layout.out), "settings": settings(args),
            "stages": stages, "estimate_minutes": minutes, "gpu": gpu, "assumptions": ASSUME,
            "tokens_per_triple": {"prompt": lengths[0], "response": lengths[1]}}


def print_plan(p: dict) -> None:
    s = p["settings"]
    print(f"DSPA on {p['model_id']} -> {p['out']}")
    print(f"  fit on {s['n_triples']} triples (<= {s['max_chars']} chars); {s['mode']}, k={s['k']}, alpha={s['alpha']}; "
          f"methods {', '.join(s['methods'])}")
    print(f"  MT-Bench {s['mt_bench_n']} questions x 2 turns, AlpacaEval {s['alpaca_n']} instructions, "
          f"<= {s['max_new_tokens']} new tokens, batch {s['batch_size']}; lm-eval {s['tasks'] or 'skipped'} "
          f"(limit {s['lm_eval_limit']})")
    gpus = list(GPUS)
    print(f"\n{'stage':16s} {'status':7s}" + "".join(f" {g:>11s}" for g in gpus) + "   (modelled minutes)")
    for row in [{"stage": "load", "done": False}, *p["stages"]]:  # load: whenever a stage needs the model
        print(f"{row['stage']:16s} {'done' if row['done'] else 'to do':7s}"
              + "".join(f" {p['estimate_minutes'][g][row['stage']]:11.1f}" for g in gpus))
    print(f"{'total':24s}" + "".join(f" {p['estimate_minutes'][g]['total (stages to run)']:11.1f}" for g in gpus))
    here = f"this machine's GPU: {p['gpu']}" if p["gpu"] else "no GPU on this machine"
    print(f"\n{here}. Modelled from datasheet figures and these assumptions (the calibrate stage measures decoding):")
    for key, note in ASSUME_NOTES.items():
        print(f"  {key} = {ASSUME[key]}: {note}")
    print(f"  triples of ~{p['tokens_per_triple']['prompt']} + {p['tokens_per_triple']['response']} tokens; decoding "
          "assumes every batch runs to the length cap (an upper bound)")


# --- stages --------------------------------------------------------------------------------------------------


class Session:
    """The loaded model, SAEs, map and methods, loaded on first use (a finished run loads nothing)."""

    def __init__(self, args, profile: Profile, layout: Layout):
        self.args, self.profile, self.layout = args, profile, layout
        self._loaded = self._methods = None

    @property
    def loaded(self):
        if self._loaded is None:
            import torch

            from dspa_lite.loading import models

            if torch.cuda.is_available():
                have = torch.cuda.get_device_properties(0).total_memory / 1e9
                if have < self.profile.est_gpu_memory_gb:
                    log(f"warning: this GPU has {have:.0f} GB, the plan needs about {self.profile.est_gpu_memory_gb:g}"
                        " GB: lower --batch-size if it runs out of memory")
            else:
                log("warning: no CUDA GPU: this will be very slow (it is meant for a GPU runtime)")
            t0 = time.perf_counter()
            self._loaded = models.load_all(self.profile)
            log(f"loaded {self.profile.model_id} and its SAEs in {time.perf_counter() - t0:.0f} s")
        return self._loaded

    def cdmap(self):
        from dspa_lite.method.cdmap import CDMap

        return CDMap.load(self.layout.path("fit"))

    def methods(self) -> dict:
        if self._methods is None:
            from dspa_lite import DSPA
            from dspa_lite.method.baselines import StaticSAE, Unsteered

            model, tok, sae_in, sae_out = self.loaded
            cdmap, a = self.cdmap(), self.args
            self._methods = {"none": Unsteered(model, tok),
                             "static": StaticSAE(model, tok, sae_out, cdmap, a.mode, a.k, a.alpha),
                             "dspa": DSPA(model, tok, sae_in, sae_out, cdmap, a.mode, a.k, a.alpha)}
        return self._methods


def run_triples(s: Session) -> dict:
    from dspa_lite.loading.data import load_preferences, write_jsonl

    a = s.args
    source = a.data or "ultrafeedback"
    triples = load_preferences(source, split="train", n=a.n_triples, seed=a.seed, max_chars=a.max_chars)
    write_jsonl(triples, s.layout.path("triples"))
    return {"source": source, "n": len(triples)}


def run_fit(s: Session) -> dict:
    from dspa_lite import fit_cdmap
    from dspa_lite.loading.data import read_jsonl
    from dspa_lite.method.cdmap import CDMapConfig

    model, tok, sae_in, sae_out = s.loaded
    triples = read_jsonl(s.layout.path("triples"))
    cdmap = fit_cdmap(model, tok, sae_in, sae_out, triples, CDMapConfig.default(), progress=True)
    cdmap.save(s.layout.path("fit"))
    return {"n_triples": len(triples), "supported_rows": int(cdmap.active_rows().sum()), "A": type(cdmap.A).__name__}


def _timed_generate(method, prompts, n_new: int, tokenizer) -> tuple[float, int]:
    """Wall time and decoding steps (the longest answer, in tokens) of one greedy batch."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    outs = method.generate(prompts, max_new_tokens=n_new, temperature=0.0, batch_size=len(prompts))
    sync()
    return time.perf_counter() - t0, max(len(tokenizer(o, add_special_tokens=False).input_ids) for o in outs) + 1


def run_calibrate(s: Session) -> dict:
    """Seconds per decoding step for each method: two greedy batches of different lengths, differenced."""
    from dspa_lite.loading.data import read_jsonl

    _, tok, _, _ = s.loaded
    prompts = [t.prompt for t in read_jsonl(s.layout.path("triples"))][: s.args.batch_size]
    step = {}
    for name, method in s.methods().items():
        _timed_generate(method, prompts[:2], 4, tok)  # warm-up: kernels, caches
        (t1, n1), (t2, n2) = (_timed_generate(method, prompts, n, tok) for n in (8, 40))
        step[name] = (t2 - t1) / (n2 - n1) if n2 > n1 else t2 / max(1, n2)
        log(f"calibrate: {name} {1e3 * step[name]:.1f} ms per decoding step (batch {len(prompts)})")
    return {"step_s": step, "batch": len(prompts)}


def balanced_questions(questions: list, n: int) -> list:
    """``n`` questions taken round-robin over the categories (in CATEGORY_ORDER), so a subset covers them all."""
    by_cat: dict[str, list] = {}
    for q in questions:
        by_cat.setdefault(q.category, []).append(q)
    cats = sorted(by_cat, key=lambda c: CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else len(CATEGORY_ORDER))
    picked, i = [], 0
    while len(picked) < min(n, len(questions)):
        for c in cats:
            if i < len(by_cat[c]) and len(picked) < n:
                picked.append(by_cat[c][i])
        i += 1
    return picked


def _fetch(source: str) -> str:
    if Path(source).expanduser().exists():
        return Path(source).expanduser().read_text(encoding="utf-8")
    with urllib.request.urlopen(source, timeout=60) as r:  # noqa: S310 - a URL the user chose (default FastChat's)
        return r.read().decode("utf-8")


def run_questions(s: Session) -> dict:
    from dspa_lite.evaluation.formats import read_mt_bench_questions

    path = s.layout.path("questions")
    tmp = path.with_name(".question.jsonl.check")
    atomic_write(tmp, _fetch(s.args.mt_bench_questions))
    try:
        questions = read_mt_bench_questions(tmp)  # validated before it counts as done
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return {"n": len(questions), "source": s.args.mt_bench_questions}


def run_instructions(s: Session) -> dict:
    a = s.args
    if a.alpaca_file:
        rows = json.loads(Path(a.alpaca_file).expanduser().read_text(encoding="utf-8"))
    else:
        from huggingface_hub import hf_hub_download

        rows = read_json(Path(hf_hub_download(ALPACA_REPO, ALPACA_FILE, repo_type="dataset")))
    keep = sorted(random.Random(a.seed).sample(range(len(rows)), min(a.alpaca_n, len(rows))))
    picked = [{"instruction": rows[i]["instruction"], "dataset": rows[i].get("dataset"), "index": i} for i in keep]
    write_json(s.layout.path("instructions"), picked)
    return {"n": len(picked), "of": len(rows)}


def _cap_rate(tokenizer, texts: list[str], cap: int) -> float:
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) >= cap - 1 for t in texts) / max(1, len(texts))


def run_mt_bench(s: Session, method: str) -> dict:
    from dspa_lite.evaluation.formats import generate_mt_bench_answers, read_mt_bench_questions, write_mt_bench_answers

    _, tok, _, _ = s.loaded
    a, m = s.args, s.methods()[method]
    questions = balanced_questions(read_mt_bench_questions(s.layout.path("questions")), a.mt_bench_n)
    answers = generate_mt_bench_answers(m.model, tok, questions, s.layout.model_id(method),
                                        steer=None if method == "none" else m.steer, max_new_tokens=a.max_new_tokens,
                                        seed=a.seed, batch_size=a.batch_size, progress=True)
    write_mt_bench_answers(answers, s.layout.path(f"mt_bench:{method}").parent)
    return {"n": len(answers), "length_cap_rate": _cap_rate(tok, [t for x in answers for t in x.turns],
                                                            a.max_new_tokens)}


def write_alpaca(path: Path, instructions: list[str], outputs: list[str], generator: str, datasets: list) -> None:
    """AlpacaEval ``model_outputs``: a JSON list of ``{instruction, output, generator, dataset?}``."""
    try:
        from dspa_lite.evaluation.formats import write_alpaca_outputs
    except ImportError:  # an older dspa-lite: the documented format, written here
        rows = [{"instruction": i, "output": o, "generator": generator, **({"dataset": d} if d else {})}
                for i, o, d in zip(instructions, outputs, datasets, strict=True)]
        write_json(path, rows)
        return
    write_alpaca_outputs(path, instructions, outputs, generator, datasets)


def run_alpaca(s: Session, method: str) -> dict:
    _, tok, _, _ = s.loaded
    a, m = s.args, s.methods()[method]
    rows = read_json(s.layout.path("instructions"))
    instructions = [r["instruction"] for r in rows]
    outputs = m.generate(instructions, max_new_tokens=a.max_new_tokens, temperature=a.alpaca_temperature, seed=a.seed,
                         batch_size=a.batch_size, progress=True)
    write_alpaca(s.layout.path(f"alpaca:{method}"), instructions, outputs, s.layout.model_id(method),
                 [r.get("dataset") for r in rows])
    return {"n": len(outputs), "length_cap_rate": _cap_rate(tok, outputs, a.max_new_tokens)}


def run_lm_eval_stage(s: Session, method: str) -> dict | None:
    try:
        import lm_eval  # noqa: F401

        from dspa_lite.evaluation.lmeval import run_lm_eval, task_scores
    except ImportError as e:
        log(f"skipped lm_eval:{method}: {e}. Install lm-eval (pip install 'lm-eval>=0.4.5,<0.5') and a dspa-lite with "
            "dspa_lite.evaluation.lmeval, then rerun with the same --out (the finished stages are kept)")
        return None
    model, tok, _, _ = s.loaded
    a = s.args
    steerer = None if method == "none" else s.methods()[method]
    tasks = None
    if a.lm_eval_include:
        from lm_eval.tasks import TaskManager

        tasks = TaskManager(include_path=str(Path(a.lm_eval_include).expanduser()), include_defaults=False)
    res = run_lm_eval(model, tok, a.task_list, steerer=steerer, limit=a.lm_eval_limit, batch_size=a.batch_size,
                      random_seed=a.seed, task_manager=tasks)
    keep = {k: res.get(k) for k in ("n-shot", "versions", "n-samples")}
    write_json(s.layout.path(f"lm_eval:{method}"), {"scores": task_scores(res), "limit": a.lm_eval_limit, **keep})
    return {"scores": task_scores(res)}


def run_stage(s: Session, stage: str) -> dict | None:
    kind, _, method = stage.partition(":")
    runner = {"triples": run_triples, "fit": run_fit, "calibrate": run_calibrate, "questions": run_questions,
              "instructions": run_instructions}.get(kind)
    if runner is not None:
        result = runner(s)
        if kind == "calibrate":
            write_json(s.layout.path(stage), result)
        return result
    return {"mt_bench": run_mt_bench, "alpaca": run_alpaca, "lm_eval": run_lm_eval_stage}[kind](s, method)


# --- summary -------------------------------------------------------------------------------------------------


def summarize(args, layout: Layout) -> dict:
    from dspa_lite.evaluation.evals import text_metrics

    out: dict = {"generation": {}, "lm_eval": {}, "seconds": {}, "files": {}}
    for stage in stage_names(args):
        if (st := layout.stats(stage)).exists():
            out["seconds"][stage] = read_json(st).get("seconds")
        kind, _, method = stage.partition(":")
        path = layout.path(stage)
        if not path.exists() or kind not in ("mt_bench", "alpaca", "lm_eval"):
            continue
        out["files"][stage] = str(path)
        if kind == "lm_eval":
            out["lm_eval"][method] = read_json(path)["scores"]
            continue
        if kind == "mt_bench":
            from dspa_lite.evaluation.formats import read_mt_bench_answers

            texts = [t for ans in read_mt_bench_answers(path) for t in ans.turns]
        else:
            texts = [row["output"] for row in read_json(path)]
        stats = read_json(layout.stats(stage)) if layout.stats(stage).exists() else {}
        out["generation"][stage] = {**text_metrics(texts), "n_texts": len(texts),
                                    "length_cap_rate": stats.get("length_cap_rate")}
    return out


def print_tables(summary: dict, args, layout: Layout) -> None:
    if summary["generation"]:
        print(f"\n{'answers':18s} {'texts':>6s} {'words':>7s} {'distinct-2':>10s} {'repetition':>10s} {'at cap':>7s}")
        for stage, g in summary["generation"].items():
            cap = "-" if g["length_cap_rate"] is None else f"{100 * g['length_cap_rate']:.0f}%"
            print(f"{stage:18s} {g['n_texts']:6d} {g['mean_words']:7.1f} {g['distinct_2']:10.3f} "
                  f"{g['repetition_rate']:10.3f} {cap:>7s}")
    lm = summary["lm_eval"]
    if lm:
        tasks = sorted({t for scores in lm.values() for t in scores})
        print(f"\n{'lm-eval task':22s} {'metric':9s}" + "".join(f" {m:>7s}" for m in LM_EVAL_METHODS) + "  dspa-none")
        for t in tasks:
            for metric in ("acc", "acc_norm"):
                vals = [lm.get(m, {}).get(t, {}).get(metric) for m in LM_EVAL_METHODS]
                if all(v is None for v in vals):
                    continue
                cells = "".join(f" {v:7.3f}" if v is not None else f" {'-':>7s}" for v in vals)
                diff = f" {vals[1] - vals[0]:+9.3f}" if None not in vals else ""
                print(f"{t:22s} {metric:9s}{cells}{diff}")
    if summary["seconds"]:
        print("\nstage times (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in summary["seconds"].items() if v))
    ids = " ".join(layout.model_id(m) for m in args.methods)
    print("\nNext, judge the answers (not done here; a judge other than the benchmarks' own makes the numbers "
          "incomparable with their leaderboards):")
    print(f"  MT-Bench: copy {layout.out / 'mt_bench' / 'model_answer'}/*.jsonl into FastChat's "
          f"fastchat/llm_judge/data/mt_bench/model_answer/, then\n"
          f"    python -m fastchat.llm_judge.gen_judgment --model-list {ids}\n"
          f"    python -m fastchat.llm_judge.show_result --model-list {ids}")
    alp = layout.out / "alpaca_eval"
    print(f"  AlpacaEval (DSPA against the unsteered model, on the {args.alpaca_n}-instruction subset):\n"
          f"    alpaca_eval --model_outputs {alp / (layout.model_id('dspa') + '.json')} "
          f"--reference_outputs {alp / (layout.model_id('none') + '.json')}")
    print("  or any OpenAI-compatible judge: dspa_lite.evaluation.judges (see book chapter 08)")


# --- main ----------------------------------------------------------------------------------------------------


def _profile(args) -> Profile:
    profile = PROFILES[args.profile]
    if args.model_path or args.sae_path:
        paths = {}
        for item in args.sae_path:
            layer, sep, folder = item.partition("=")
            if not sep or not layer.isdigit():
                raise SystemExit(f"--sae-path {item!r}: expected LAYER=DIR, e.g. {profile.l_in}=/data/sae_{profile.l_in}")
            paths[int(layer)] = folder
        profile = profile.with_paths(model_path=args.model_path, sae_paths=paths)
    return profile


def _check_settings(layout: Layout, args) -> None:
    """Refuse to resume a run whose finished stages used other settings; record the settings in plan.json."""
    path, now = layout.out / "plan.json", settings(args)
    before = read_json(path)["settings"] if path.exists() else {}
    finished = {st.partition(":")[0] for st in (*stage_names(args), *(f"lm_eval:{m}" for m in LM_EVAL_METHODS))
                if layout.done(st)}
    clash = {k: (before[k], v) for k, v in now.items() if k in before and before[k] != v
             and (finished if "*" in SETTINGS[k] else finished & set(SETTINGS[k]))}
    if clash:
        lines = "; ".join(f"{k}: {b!r} there, {v!r} now" for k, (b, v) in clash.items())
        raise RunError(f"{layout.out} holds a run with other settings ({lines}) whose stages have finished: pass "
                       "the same settings to resume it, or another --out for a new run")
    write_json(path, {"settings": now, "updated": time.strftime("%Y-%m-%d %H:%M:%S")})


def main(argv=None, profile: Profile | None = None) -> int:
    """Run the pipeline; ``profile`` replaces ``--profile`` (the tests pass tiny hub-layout checkpoints)."""
    from tqdm.auto import tqdm

    args = parse_args(argv)
    profile = profile or _profile(args)
    layout = Layout(Path(args.out).expanduser(), profile)
    gpu = detect_gpu() if args.gpu == "auto" else args.gpu
    p = plan(args, profile, layout, gpu)
    print_plan(p)
    if args.dry_run:
        if args.json:
            print(json.dumps({"dry_run": True, **p}, default=str))
        return 0
    from dspa_lite.loading.data import DataError
    from dspa_lite.loading.hub import ModelLoadError

    errors: tuple = (ModelLoadError, DataError, RunError, OSError)
    try:
        from dspa_lite.evaluation.formats import FormatError

        errors += (FormatError,)
    except ImportError:
        pass
    try:
        _check_settings(layout, args)
        session = Session(args, profile, layout)
        todo = [st for st in stage_names(args) if not layout.done(st)]
        for st in stage_names(args):
            if layout.done(st):
                log(f"skip {st}: found {layout.path(st)}")
        for stage in tqdm(todo, desc="stages", file=sys.stderr):
            log(f"\n== {stage}")
            t0 = time.perf_counter()
            result = run_stage(session, stage)
            if result is None:
                continue
            seconds = time.perf_counter() - t0
            write_json(layout.stats(stage), {**result, "seconds": seconds})
            log(f"== {stage} done in {seconds / 60:.1f} min")
            if stage == "calibrate":
                measured = estimate(args, profile, gpu or "A100 40 GB", *triple_lengths(layout.path("triples")),
                                    measured_step=result["step_s"])
                left = sum(v for st, v in measured.items() if st in todo[todo.index(stage) + 1:])
                log(f"measured estimate for the remaining stages: {left / 60:.0f} min (decoding measured here, "
                    "lm-eval modelled; batches that stop early at end-of-turn are faster)")
    except errors as e:
        log(f"error: {e}")
        return 2
    summary = {"settings": settings(args), "out": str(layout.out), **summarize(args, layout)}
    write_json(layout.out / "summary.json", summary)
    print_tables(summary, args, layout)
    if args.json:
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

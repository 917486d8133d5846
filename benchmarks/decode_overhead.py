"""Decoding overhead of steering: wall time per generated token and per decoding step, steered vs unsteered.

Methods, in one run, interleaved: unsteered (``none``), CAA, static SAE steering, DSPA as shipped (``dspa``: the sparse
edit where the SAE allows it and ``u(x)`` from the prefill), DSPA with the dense edit and a separate prompt pass
(``dspa_dense``: the previous implementation), and the ``steering-vectors`` peer where ``import steering_vectors``
works (transformers < 5: ``.venv-peer``, benchmarks/requirements-peer.txt; section ``decode_overhead_peer``). Each
generates through its ``.generate`` with the same prompts, seed and batch and exactly ``k`` new tokens
(``min_new_tokens = k``) for each ``k`` in ``(1, *new_tokens)``. Timing: one call per method, length and repeat
(``time.perf_counter``, garbage collection off), the methods rotated each repeat, after one untimed 1-token call of
each; a decoding step is ``(T(k_max) - T(1)) / (k_max - 1)``; ratios are medians of per-repeat ratios to unsteered.
The same ratios of the process's CPU time (``time.process_time``; with one thread, time the machine's other jobs
take from this one is not counted, though their cache and memory traffic still is) are the cross-check on a shared
machine.
Parts: one ``torch.profiler`` call per method, read by the ``record_function`` labels in ``dspa_lite.method``
(``LABELS``). Models: ``toy`` (the shipped world, methods at ``experiment.DEFAULTS``) and ``gemma`` (random fp32
weights in google/gemma-2-2b's shape, random 16k JumpReLU SAEs at layers 12/20, a synthetic random map: speed only;
about 12 GB of RAM; benchmarks/_gemma_shape.py). The ``--json`` line's ``hook_share`` (profiled edit-hook ms per call
over an unsteered step) and ``end_to_end_ratio`` (per new-token count) are keyed by model, then method.

    OMP_NUM_THREADS=1 python benchmarks/decode_overhead.py [--quick] [--models toy gemma] [--json]
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils import benchmark
from torch.utils.benchmark.utils.common import Measurement, TaskSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from _gemma_shape import GEMMA_LAYERS, gemma2_2b_config, gemma_world, random_jumprelu, random_model  # noqa: E402,F401

from dspa_lite.evaluation import flops  # noqa: E402
from dspa_lite.evaluation.experiment import DEFAULTS  # noqa: E402
from dspa_lite.method.baselines import CAA, StaticSAE, Unsteered, mean_difference  # noqa: E402
from dspa_lite.method.dspa import DSPA  # noqa: E402
from dspa_lite.method.generation import format_prompts  # noqa: E402

FULL = {"toy": dict(batch=8, new_tokens=(16, 256), repeats=7), "gemma": dict(batch=1, new_tokens=(16,), repeats=3)}
QUICK = {"toy": dict(batch=8, new_tokens=(16, 32), repeats=3), "gemma": dict(batch=1, new_tokens=(8,), repeats=2)}
LABELS = {"hooks.edit": "edit hook", "dspa.LatentEdit": "LatentEdit", "dspa.LatentEdit.encode": "SAE encode in the edit",
          "dspa.prefill_u": "u(x) in the prefill", "dspa.prompt_features": "prompt pass u(x)",
          "dspa.map_lookup": "map lookup + K selection"}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)  # sys.stderr looked up per call, so a redirected stream is honoured


class SteeringVectorsPeer(CAA):
    """CAA's vector added at every position by the ``steering-vectors`` library (``SteeringVector.apply``)."""

    def __init__(self, model, tokenizer, vector, layer: int, multiplier: float):
        from steering_vectors import SteeringVector

        super().__init__(model, tokenizer, vector, layer, multiplier)
        self.sv = SteeringVector({layer: vector}, "decoder_block")

    def steer(self, prompts, input_ids=None, attention_mask=None, start=None):
        return self.sv.apply(self.model, multiplier=self.multiplier, min_token_index=0)


def peer_version() -> str | None:
    try:
        import steering_vectors  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import version

    return version("steering-vectors")


def _call(m, prompts, k: int) -> tuple[float, float]:
    """Wall time and this process's CPU time (s) of one ``generate`` of exactly ``k`` new tokens."""
    m.model.generation_config.min_new_tokens = k  # no early stop: exactly k new tokens
    gc.collect()
    gc.disable()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        m.generate(prompts, max_new_tokens=k, temperature=1.0, seed=0, batch_size=len(prompts))
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        gc.enable()


def time_interleaved(methods: dict, prompts, lengths: tuple, repeats: int, label: str) -> tuple[dict, dict]:
    """``{(method, k): [Measurement per repeat]}`` of wall times for ``k`` in ``(1, *lengths)``, the methods rotated
    per repeat, and ``{(method, k): [CPU seconds per repeat]}`` (with one thread, robust to other processes' load)."""
    ks, names, runs, cpu = (1, *lengths), list(methods), defaultdict(list), defaultdict(list)
    for name in names:  # warm-up: one untimed call each
        _call(methods[name], prompts, 1)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for k in ks:
                spec = TaskSpec(f"{name}.generate", "", label=label, sub_label=name, description=f"new tokens={k}",
                                num_threads=torch.get_num_threads())
                wall, cpu_s = _call(methods[name], prompts, k)
                runs[name, k].append(Measurement(1, [wall], spec))
                cpu[name, k].append(cpu_s)
        log(f"  {label} repeat {r + 1}/{repeats}: " + ", ".join(f"{x} {runs[x, ks[-1]][-1].median:.3f} s" for x in names))
    return runs, cpu


def ratios(runs: dict, cpu: dict, name: str, lengths: tuple, batch: int) -> dict:
    """One method's medians (ms) and per-repeat ratios to unsteered (median and range), per new-token count; the same
    ratios of CPU time."""
    n = lengths[-1]

    def walls(x, k):
        return [m.median for m in runs[x, k]]

    steps = {x: [(a - b) / (n - 1) for a, b in zip(walls(x, n), walls(x, 1))] for x in (name, "none")}
    if min(steps[name] + steps["none"]) <= 0:  # a difference of two walls: noise can exceed a few steps' time
        log(f"  {name}: a per-step time came out <= 0 ({n} new tokens vs 1); the step ratios are noise - "
            "raise --repeats or the new-token count")
    r_step = [a / b for a, b in zip(steps[name], steps["none"])]
    e2e = {k: [a / b for a, b in zip(walls(name, k), walls("none", k))] for k in lengths}
    return {"ms_per_token": 1e3 * statistics.median(walls(name, n)) / (batch * n),
            "ms_per_step": 1e3 * statistics.median(steps[name]),
            "first_token_ms": 1e3 * statistics.median(walls(name, 1)),
            "ratio_e2e": {str(k): statistics.median(v) for k, v in e2e.items()},
            "ratio_e2e_range": {str(k): [min(v), max(v)] for k, v in e2e.items()},
            "ratio_step": statistics.median(r_step), "ratio_step_range": [min(r_step), max(r_step)],
            "raw_s": {str(k): walls(name, k) for k in (1, *lengths)},
            "ratio_e2e_cpu": {str(k): statistics.median(a / b for a, b in zip(cpu[name, k], cpu["none", k]))
                              for k in lengths},
            "ratio_step_cpu": statistics.median(
                (a1 - b1) / (a0 - b0) for a1, b1, a0, b0 in zip(cpu[name, n], cpu[name, 1], cpu["none", n], cpu["none", 1])),
            "raw_cpu_s": {str(k): cpu[name, k] for k in (1, *lengths)}}


def modelled_e2e(res: dict, name: str, k: int) -> float:
    """End-to-end ratio at ``k`` new tokens from the measured medians: (first token + (k - 1) steps) over unsteered's."""
    def t(x):
        return res[x]["first_token_ms"] + (k - 1) * res[x]["ms_per_step"]

    return t(name) / t("none")


def profile_call(method, prompts, n: int) -> tuple[dict, list[str]]:
    """One profiled ``generate`` call: calls, total and median ms per call of each label in ``LABELS``; the texts."""
    method.model.generation_config.min_new_tokens = n
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = method.generate(prompts, max_new_tokens=n, temperature=1.0, seed=0, batch_size=len(prompts))
    durations = defaultdict(list)
    for e in prof.events():
        if e.name in LABELS:
            durations[e.name].append(e.cpu_time_total / 1e3)
    return {e.key: {"calls": e.count, "total_ms": e.cpu_time_total / 1e3, "median_ms": statistics.median(durations[e.key])}
            for e in prof.key_averages() if e.key in LABELS}, out


def measure(methods: dict, prompts, s: dict, l_in: int, label: str, title: str) -> dict:
    """Timed (interleaved) and profiled calls of every method (``methods`` starts with ``"none"``), and the analytic
    FLOP share of each edit in a decoding step at mid-generation (``flops.decode_overhead``)."""
    lengths, model, tok = tuple(s["new_tokens"]), methods["none"].model, methods["none"].tokenizer
    n, old = lengths[-1], model.generation_config.min_new_tokens
    try:
        runs, cpu = time_interleaved(methods, prompts, lengths, s["repeats"], label)
        profiled = {name: profile_call(m, prompts, n) for name, m in methods.items() if name != "none"}
    finally:
        model.generation_config.min_new_tokens = old
    compare = benchmark.Compare([m for ms in runs.values() for m in ms])
    log(str(compare))
    res = {name: ratios(runs, cpu, name, lengths, len(prompts)) for name in methods}
    plen = max(len(tok(t, add_special_tokens=False).input_ids) for t in format_prompts(tok, prompts))
    for name, (parts, _) in profiled.items():
        res[name]["parts"] = parts
        if name != "steering-vectors" and parts["hooks.edit"]["calls"] != n:
            raise RuntimeError(f"{name}: {parts['hooks.edit']['calls']} edit-hook calls for {n} new tokens")
        res[name]["hook_share_of_step"] = parts.get("hooks.edit", {}).get("median_ms", 0.0) / res["none"]["ms_per_step"]
        if name in ("dspa", "dspa_dense", "static", "caa"):
            res[name]["analytic_share"] = flops.decode_overhead(
                flops.ModelShape.from_config(model.config), methods["dspa"].sae_out.cfg.d_sae, name.split("_")[0],
                context_len=plen + n // 2, prompt_len=plen, l_in=l_in, latents=edited_latents(methods[name]))["ratio"]
    for name in res:
        res[name]["ratio_e2e_modelled_256"] = modelled_e2e(res, name, 256)
    if "steering-vectors" in profiled:
        res["steering-vectors"]["same_text_as_caa"] = profiled["steering-vectors"][1] == profiled["caa"][1]
    return {**s, "title": title, "compare": str(compare), "results": res}


def edited_latents(method) -> int | None:
    """How many latents the sparse edit encodes and decodes per token (``None``: the dense edit, every latent)."""
    from dspa_lite.method.sparse import edit_path

    if not hasattr(method, "sae_out") or getattr(method, "path", "auto") == "dense" or edit_path(method.sae_out) == "dense":
        return None
    return method.k * (2 if method.mode == "both" else 1)


def steerers(model, tokenizer, sae_in, sae_out, cdmap, vector, layer: int, peer: bool) -> dict:
    p = DEFAULTS
    methods = {"none": Unsteered(model, tokenizer),
               "dspa": DSPA(model, tokenizer, sae_in, sae_out, cdmap, p["mode"], p["k"], p["alpha"]),
               "dspa_dense": DSPA(model, tokenizer, sae_in, sae_out, cdmap, p["mode"], p["k"], p["alpha"], path="dense",
                                  prefill=False),
               "static": StaticSAE(model, tokenizer, sae_out, cdmap, p["mode"], p["k"], p["alpha"]),
               "caa": CAA(model, tokenizer, vector, layer, p["caa_multiplier"])}
    if peer:
        methods["steering-vectors"] = SteeringVectorsPeer(model, tokenizer, vector, layer, p["caa_multiplier"])
    return methods


def run_toy(world, cdmap, s: dict, peer: bool = False, triples: int | None = None) -> dict:
    """The shipped toy world's model and SAEs, ``cdmap``, CAA's mean-difference vector over the first ``triples``
    training triples (all: as ``experiment.build_methods``)."""
    vector = mean_difference(world.model, world.tokenizer, world.triples("train")[:triples], world.l_out)
    methods = steerers(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, vector, world.l_out, peer)
    params = sum(p.numel() for p in world.model.parameters())
    return measure(methods, world.prompts("test", 200)[:s["batch"]], s, world.l_in, "toy",
                   f"Toy world model ({params / 1e6:.2f}M parameters, SAEs of width {world.sae_out.cfg.d_sae} at "
                   f"layers {world.l_in}/{world.l_out})")


def run_gemma(tokenizer, prompts, s: dict, peer: bool) -> dict:
    """Random-weight Gemma-2-2B-shape model, random 16k JumpReLU SAEs, a synthetic CDMap (random ``A``)."""
    model, sae_in, sae_out, cdmap, vector = gemma_world(tokenizer, prompts)
    l_in, l_out = GEMMA_LAYERS
    methods = steerers(model, tokenizer, sae_in, sae_out, cdmap, vector, l_out, peer)
    params = sum(x.numel() for x in model.parameters())
    return measure(methods, prompts, s, l_in, "gemma", f"Random weights in google/gemma-2-2b's shape ({params / 1e9:.2f}B "
                   f"parameters, fp32, eager attention), random 16k JumpReLU SAEs at layers {l_in}/{l_out}, a "
                   "synthetic random map")


def summary(models: dict) -> dict:
    """The issue's two figures, keyed by model then method: ``hook_share`` and ``end_to_end_ratio`` (per new-token
    count; ``"256"`` is measured where 256 was timed, else modelled from the first-token and per-step medians)."""
    share, e2e, how, e2e_cpu = {}, {}, {}, {}
    for model, d in models.items():
        res = d["results"]
        share[model] = {m: r.get("hook_share_of_step", 0.0) for m, r in res.items()}
        e2e[model] = {m: {**r["ratio_e2e"], **({} if "256" in r["ratio_e2e"] else {"256": r["ratio_e2e_modelled_256"]})}
                      for m, r in res.items()}
        e2e_cpu[model] = {m: r["ratio_e2e_cpu"] for m, r in res.items()}
        how[model] = {k: "measured" for k in map(str, d["new_tokens"])} | (
            {} if 256 in d["new_tokens"] else {"256": "modelled: first token + 255 steps, measured medians"})
    return {"hook_share": share, "end_to_end_ratio": e2e, "end_to_end_ratio_source": how, "end_to_end_ratio_cpu": e2e_cpu}
def table(d: dict) -> list[str]:
    def num(x: float) -> str:
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"

    ks = [str(k) for k in d["new_tokens"]]
    head = ["method", "ms / generated token", *(f"end-to-end ratio, {k} tokens (range)" for k in ks),
            *([] if "256" in ks else ["end-to-end ratio, 256 tokens (modelled)"]),
            *(f"end-to-end ratio of CPU time, {k} tokens" for k in ks), "ms / decoding step", "step ratio (range)",
            "step ratio of CPU time", "first token, ms", *(f"{v}, ms" for v in LABELS.values()),
            "edit hook / unsteered step", "analytic FLOP share"]
    lines = [f"### {d['title']}: batch {d['batch']}, {' and '.join(ks)} new tokens, {d['repeats']} repeats", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in d["results"].items():
        (s0, s1), parts = r["ratio_step_range"], r.get("parts", {})
        e2e = [f"{r['ratio_e2e'][k]:.3f} ({r['ratio_e2e_range'][k][0]:.2f}-{r['ratio_e2e_range'][k][1]:.2f})" for k in ks]
        cells = [name, num(r["ms_per_token"]), *e2e, *([] if "256" in ks else [f"{r['ratio_e2e_modelled_256']:.3f}"]),
                 *(f"{r['ratio_e2e_cpu'][k]:.3f}" for k in ks), num(r["ms_per_step"]),
                 f"{r['ratio_step']:.3f} ({s0:.2f}-{s1:.2f})", f"{r['ratio_step_cpu']:.3f}", num(r["first_token_ms"]),
                 *(num(parts[k]["median_ms"]) if k in parts else "" for k in LABELS),
                 f"{100 * r['hook_share_of_step']:.3f}%" if "hooks.edit" in parts else "",
                 f"{100 * r['analytic_share']:.3f}%" if "analytic_share" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if "same_text_as_caa" in d["results"].get("steering-vectors", {}):
        lines += ["", f"steering-vectors text identical to CAA's: {d['results']['steering-vectors']['same_text_as_caa']}"]
    return lines + [""]


def main() -> None:
    args = _report.parse_args(__doc__, "fewer repeats and tokens", extra=lambda ap: ap.add_argument(
        "--models", nargs="+", choices=("toy", "gemma"), default=["toy", "gemma"], help="which models (default both)"))
    import transformers

    from dspa_lite import toyworld
    from dspa_lite.evaluation.experiment import fit_maps

    t0, sizes, sv, world = time.perf_counter(), QUICK if args.quick else FULL, peer_version(), toyworld.load()
    data = {"settings": {m: sizes[m] for m in args.models}, "steering": DEFAULTS, "threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "steering_vectors": sv, "labels": LABELS, "models": {}}
    if "toy" in args.models:
        data["models"]["toy"] = run_toy(world, fit_maps(world), sizes["toy"], bool(sv))
    if "gemma" in args.models:
        prompts = world.prompts("test", 200)[:sizes["gemma"]["batch"]]
        data["models"]["gemma"] = run_gemma(world.tokenizer, prompts, sizes["gemma"], bool(sv))
    data["seconds"] = time.perf_counter() - t0
    data |= summary(data["models"])
    md = [_report.header("Decoding overhead of steering" + (" (peer environment)" if sv else "")
                         + (" (quick)" if args.quick else "")),
          f"transformers {transformers.__version__}, torch threads {data['threads']}, steering-vectors "
          f"{sv or 'not importable (peer skipped)'}; steering at {DEFAULTS}; run time {data['seconds'] / 60:.1f} min. "
          "Times: medians over repeats; ratios: median (range) of per-repeat ratios to unsteered; parts: median ms "
          "per call in one profiled call (torch.profiler, `record_function` labels); `dspa`: sparse edit, u(x) from "
          "the prefill; `dspa_dense`: dense edit, separate prompt pass.", ""]
    for d in data["models"].values():
        md += table(d)
    _report.publish("decode_overhead" + ("_peer" if sv else "") + ("_quick" if args.quick else ""), md, data, args.json)


if __name__ == "__main__":
    main()

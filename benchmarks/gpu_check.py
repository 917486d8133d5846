"""The decoding comparison on one CUDA GPU: Gemma-2-2B shape in bf16, per-step times, host syncs, peak memory.

Random weights in google/gemma-2-2b's shape (benchmarks/_gemma_shape.py: random 16k JumpReLU SAEs at layers 12/20, a
synthetic map), moved to the GPU in bfloat16. Methods as in benchmarks/decode_overhead.py: ``none``, ``caa``,
``static``, ``dspa`` (sparse edit, ``u(x)`` from the prefill) and ``dspa_dense`` (dense edit, separate prompt pass).
Per method, interleaved over repeats: ``generate`` of ``--batch`` prompts with exactly ``--new-tokens`` new tokens.

- per-step times: CUDA events around every forward call of the model (no extra synchronisation), median over decoding
  steps; the edit hook's own time: CUDA events around each call of the edit (``hooks.edit``), median;
- host syncs: ``torch.cuda.set_sync_debug_mode("warn")`` counted inside the method's hooks on every call (the edit at
  ``l_out``, DSPA's prefill hook at ``l_in``) and over the whole ``generate`` (Hugging Face's own loop included), in
  one more ``generate`` per method that is not timed (the counting itself costs host time);
- peak memory: ``torch.cuda.max_memory_allocated`` per method.

On one H200 the whole check took 110 s with ``--repeats 7`` (27 s of it building the model on the CPU); the wheels the
device lacked (sae-lens and its needs, the lock's transformers) were installed from ``pip download``. ``--tiny`` runs
a small shape (on the CPU with ``--device cpu``: the test of this script; CUDA-only figures are then ``null``).
Writes ``--out`` (JSON) and prints a markdown table.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json            # on the GPU machine
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/g.json # the CPU test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gemma_shape import GEMMA_LAYERS, gemma_world  # noqa: E402

from dspa_lite.evaluation.experiment import DEFAULTS  # noqa: E402
from dspa_lite.method import hooks  # noqa: E402
from dspa_lite.method.baselines import CAA, StaticSAE, Unsteered  # noqa: E402
from dspa_lite.method.dspa import DSPA  # noqa: E402
from dspa_lite.method.prefill import PrefillSets  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
            head_dim=32, query_pre_attn_scalar=32)


class Clock:
    """Per-call durations in ms: CUDA events on a GPU (read after the call ends), ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda, self.pairs, self.cpu_ms = device.type == "cuda", [], []

    def start(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, t0) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.pairs.append((t0, ev))
        else:
            self.cpu_ms.append(1e3 * (time.perf_counter() - t0))

    def ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self.pairs]
        return self.cpu_ms


@contextlib.contextmanager
def counted_syncs(device: torch.device, counter: list):
    """Count CUDA host synchronisations in the block (``set_sync_debug_mode("warn")``); nothing on the CPU."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:  # nested blocks: each counts its own
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    counter.append(sum("synchroniz" in str(w.message) for w in caught))


@contextlib.contextmanager
def instrumented(model, device: torch.device, record: dict, count_syncs: bool):
    """Per-forward-call clock on the model and per-call clock on the edit hooks, or (``count_syncs``) the host syncs
    in the edit hooks and DSPA's prefill hook."""
    steps, edits, hook_syncs = Clock(device), Clock(device), []
    original_edit, original_fill = hooks.edit, PrefillSets.__call__

    @contextlib.contextmanager
    def timed_edit(m, layer, fn):
        def wrapped(h):
            if count_syncs:
                with counted_syncs(device, hook_syncs):
                    return fn(h)
            t0 = edits.start()
            out = fn(h)
            edits.stop(t0)
            return out

        with original_edit(m, layer, wrapped):
            yield

    def timed_fill(self, h):
        if not count_syncs:
            return original_fill(self, h)
        with counted_syncs(device, hook_syncs):
            return original_fill(self, h)

    starts = []
    pre = model.register_forward_pre_hook(lambda *a: starts.append(steps.start()))
    post = model.register_forward_hook(lambda *a: steps.stop(starts.pop()))
    targets = [sys.modules["dspa_lite.method.dspa"], sys.modules["dspa_lite.method.baselines"]]
    saved = [(t, t.edit) for t in targets]
    try:
        for t in targets:
            t.edit = timed_edit
        PrefillSets.__call__ = timed_fill
        yield
    finally:
        for t, fn in saved:
            t.edit = fn
        PrefillSets.__call__ = original_fill
        pre.remove()
        post.remove()
        record.update(step_ms=steps.ms(), edit_ms=edits.ms(), hook_syncs=hook_syncs)


def generate_exactly(method, prompts, n: int) -> None:
    """``generate`` of exactly ``n`` new tokens for every prompt, in one batch."""
    method.model.generation_config.min_new_tokens = n
    method.generate(prompts, max_new_tokens=n, temperature=1.0, seed=0, batch_size=len(prompts))


def run_method(method, prompts, n: int, device: torch.device) -> dict:
    """One timed ``generate`` of exactly ``n`` new tokens."""
    model, rec = method.model, {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with instrumented(model, device, rec, count_syncs=False):
        generate_exactly(method, prompts, n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    decode = rec["step_ms"][1:]  # call 0 is the prefill
    return {"wall_s": wall, "prefill_ms": rec["step_ms"][0], "step_ms_median": statistics.median(decode),
            "step_ms": decode, "edit_ms_median": statistics.median(rec["edit_ms"]) if rec["edit_ms"] else 0.0,
            "edit_calls": len(rec["edit_ms"]),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def count_method_syncs(method, prompts, n: int, device: torch.device) -> dict:
    """Host syncs in one untimed ``generate``: inside the method's hooks, and in all (``None`` on the CPU)."""
    if device.type != "cuda":
        return {"hook_syncs": None, "generate_syncs": None}
    rec, total = {}, []
    with instrumented(method.model, device, rec, count_syncs=True), counted_syncs(device, total):
        generate_exactly(method, prompts, n)
    return {"hook_syncs": sum(rec["hook_syncs"]), "generate_syncs": total[0] + sum(rec["hook_syncs"])}


def methods_for(model, tok, sae_in, sae_out, cdmap, vector) -> dict:
    p = DEFAULTS
    return {"none": Unsteered(model, tok),
            "caa": CAA(model, tok, vector.to(model.device, model.dtype), int(cdmap.meta["l_out"]), p["caa_multiplier"]),
            "static": StaticSAE(model, tok, sae_out, cdmap, p["mode"], p["k"], p["alpha"]),
            "dspa": DSPA(model, tok, sae_in, sae_out, cdmap, p["mode"], p["k"], p["alpha"]),
            "dspa_dense": DSPA(model, tok, sae_in, sae_out, cdmap, p["mode"], p["k"], p["alpha"], path="dense",
                               prefill=False)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a small shape (the CPU test)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0, device = time.perf_counter(), torch.device(args.device)
    from dspa_lite import toyworld

    world = toyworld.load(progress=False)  # its tokenizer and prompts (ids beyond the toy vocabulary are never drawn)
    prompts = world.prompts("test", 200)[:args.batch]
    overrides = dict(TINY, vocab_size=world.tokenizer.vocab_size) if args.tiny else None
    model, sae_in, sae_out, cdmap, vector = gemma_world(
        world.tokenizer, prompts, overrides, d_sae=512 if args.tiny else None, device=device, dtype=torch.bfloat16,
        layers=(1, 2) if args.tiny else GEMMA_LAYERS)
    methods = methods_for(model, world.tokenizer, sae_in, sae_out, cdmap, vector)
    build_s, runs = time.perf_counter() - t0, {name: [] for name in methods}
    for m in methods.values():  # warm-up
        generate_exactly(m, prompts, 2)
    names = list(methods)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(run_method(methods[name], prompts, args.new_tokens, device))
    syncs = {name: count_method_syncs(m, prompts, args.new_tokens, device) for name, m in methods.items()}
    data = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiny": args.tiny,
            "dtype": "bfloat16", "batch": args.batch, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "build_s": build_s, "torch": torch.__version__, "methods": {}}
    base = statistics.median(r["step_ms_median"] for r in runs["none"])
    wall = statistics.median(r["wall_s"] for r in runs["none"])
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "prefill_ms", "step_ms_median", "edit_ms_median")}
        data["methods"][name] = {**med, "step_ratio": med["step_ms_median"] / base, "wall_ratio": med["wall_s"] / wall,
                                 "hook_share": med["edit_ms_median"] / base if name != "none" else 0.0,
                                 "edit_calls": rs[0]["edit_calls"], **syncs[name],
                                 "peak_mem_gib": max((r["peak_mem_gib"] or 0) for r in rs) or None}
    data["seconds"] = time.perf_counter() - t0
    print(markdown(data))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1))
    return data


def markdown(data: dict) -> str:
    head = ("| method | ms / step | step ratio | generate, s | wall ratio | edit hook, ms | hook share | prefill, ms | "
            "syncs in hooks | syncs in generate | peak GiB |")
    rows = [head, "|---" * 11 + "|"]
    for name, r in data["methods"].items():
        rows.append(f"| {name} | {r['step_ms_median']:.2f} | {r['step_ratio']:.3f} | {r['wall_s']:.3f} | "
                    f"{r['wall_ratio']:.3f} | {r['edit_ms_median']:.3f} | "
                    f"{100 * r['hook_share']:.2f}% | {r['prefill_ms']:.1f} | {r['hook_syncs']} | {r['generate_syncs']} | "
                    f"{r['peak_mem_gib'] if r['peak_mem_gib'] is None else round(r['peak_mem_gib'], 2)} |")
    return (f"{data['device']}, bf16, batch {data['batch']}, {data['new_tokens']} new tokens, {data['repeats']} repeats, "
            f"{data['seconds']:.0f} s\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()

"""Data efficiency on the toy world: DSPA vs static SAE steering vs DPO vs RAHF-SCIT with 25-1000 triples.

For each size n, every method learns from the same first n training triples (as ``experiment.fit_maps`` takes
them): DSPA fits its map (static steering reuses it), DPO (``finetune.train_dpo``, TRL when installed) and
RAHF-SCIT (``rahf.train_rahf_scit``) train copies of the toy model. All are judged exactly on the same held-out
prompts and seeds, scored on the quiz items (with each method's own weights), and charged their measured
alignment-stage FLOPs (``FlopCounterMode``: matmuls, forward and backward) and wall time. Written to
benchmarks/RESULTS.md and benchmarks/results/data_efficiency[_quick].json.

    python benchmarks/data_efficiency.py            # full: sizes 25-1000, 200 prompts x 2 seeds (13 min measured)
    python benchmarks/data_efficiency.py --quick    # sizes 25, 100; 80 prompts; 1 seed; few training steps
"""

from __future__ import annotations

import sys
import time

from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import _report  # noqa: E402

from dspa_lite import toyworld  # noqa: E402
from dspa_lite.evaluation.evals import mcq_accuracy  # noqa: E402
from dspa_lite.evaluation.experiment import DEFAULTS, build_methods, compare, fit_maps  # noqa: E402
from dspa_lite.evaluation.finetune import train_dpo  # noqa: E402
from dspa_lite.evaluation.rahf import train_rahf_scit  # noqa: E402
from dspa_lite.method.baselines import Unsteered  # noqa: E402

# Training budgets, chosen so that the full run fits in ~25 minutes on one (shared) CPU thread: one epoch over the
# n triples, and at least `min_steps` steps so that small data sets get several epochs; RAHF stage 2 is a fixed
# number of steps whatever n is, as in the reproduction (450 x 64 examples there). Learning rates were picked on
# n=250 (80 prompts): DPO lr 1e-3 broke fluency (0.58), 5e-4 did not; RAHF stage 1 at 5e-4 for one epoch did not
# yet separate the instructions, 2e-3 did; stage 2 at lr 2e-3 did not move its loss, 2e-2 did.
FULL = dict(sizes=(25, 50, 100, 250, 1000), n_prompts=200, seeds=(0, 1),
            dpo=dict(beta=0.1, lr=5e-4, epochs=1, batch_size=16, min_steps=8),
            rahf=dict(lr=2e-3, epochs=1, batch_size=8, min_steps=16, stage2_steps=30, stage2_batch=16, stage2_lr=2e-2))
QUICK = dict(sizes=(25, 100), n_prompts=80, seeds=(0,),
             dpo=dict(beta=0.1, lr=5e-4, epochs=0.5, batch_size=16, min_steps=4),
             rahf=dict(lr=2e-3, epochs=0.5, batch_size=8, min_steps=6, stage2_steps=8, stage2_batch=16, stage2_lr=2e-2))
METRICS = ("preferred_share", "first_segment_share", "win_rate", "fluency", "length_cap_rate")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fit_dspa(world, n: int) -> tuple[object, dict]:
    """DSPA's alignment stage: the map fit, timed plainly, then counted again under ``FlopCounterMode``."""
    t0 = time.perf_counter()
    cdmap = fit_maps(world, n=n)
    wall = time.perf_counter() - t0
    with FlopCounterMode(display=False) as counter:
        fit_maps(world, n=n)
    return cdmap, {"wall_seconds": wall, "flops": int(counter.get_total_flops()), "steps": 0}


def evaluate(world, methods: dict, n_prompts: int, seeds, base_picks=None) -> dict:
    """``compare`` without its quiz, then the quiz with each method's own model, counting the answers that differ
    from ``base_picks`` (the unsteered model's, scored once rather than once per size)."""
    res = compare(world, methods, n_prompts=n_prompts, seeds=seeds, mcq=False)["methods"]
    items = world.mcq("test")
    for name, method in methods.items():
        acc = mcq_accuracy(method.model, world.tokenizer, items, steer=method.steer)
        res[name]["mcq_accuracy"], res[name]["mcq_picks"] = acc["accuracy"], acc["picks"]
        if base_picks is not None:
            res[name]["mcq_changed_items"] = sum(a != b for a, b in zip(acc["picks"], base_picks))
    return res


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table(data: dict) -> str:
    lines = ["| triples | method | preferred share | first segment | win rate | fluency | length cap | MCQ acc. | "
             "MCQ items changed | alignment FLOPs | wall (s) | steps |", "|---" * 12 + "|"]
    rows = [("0", "none", data["unsteered"], None)] + [
        (str(n), name, r, data["cost"][str(n)][name]) for n, res in data["sizes"].items() for name, r in res.items()]
    for n, name, r, cost in rows:
        cost_cells = (f"{cost['flops']:.3g} | {cost['wall_seconds']:.1f} | {cost['steps']}" if cost else "- | - | -")
        se = r["stderr"]["preferred_share"]
        share = pct(r["preferred_share"]) + (f" ± {pct(se)}" if se == se else "")  # se is NaN with one seed
        lines.append(f"| {n} | {name} | {share} | " + " | ".join(pct(r[m]) for m in METRICS[1:])
                     + f" | {pct(r['mcq_accuracy'])} | {r.get('mcq_changed_items', 0)} | {cost_cells} |")
    lines += ["", "| triples | DPO / DSPA FLOPs | RAHF-SCIT / DSPA FLOPs | RAHF stage 2 share | DPO / DSPA wall | "
              "RAHF-SCIT / DSPA wall |", "|---" * 6 + "|"]
    for n, c in data["cost"].items():
        d, dpo, rahf = c["dspa"], c["dpo"], c["rahf-scit"]
        lines.append(f"| {n} | {dpo['flops'] / d['flops']:.1f}x | {rahf['flops'] / d['flops']:.1f}x | "
                     f"{rahf['stages']['stage2']['flops'] / rahf['flops']:.0%} | "
                     f"{dpo['wall_seconds'] / d['wall_seconds']:.1f}x | {rahf['wall_seconds'] / d['wall_seconds']:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    args = _report.parse_args(__doc__, "sizes 25, 100; 80 prompts; 1 seed; few training steps")
    t0, cfg = time.perf_counter(), QUICK if args.quick else FULL
    world = toyworld.load()
    seeds = cfg["seeds"]
    base = {"none": Unsteered(world.model, world.tokenizer)}
    data: dict = {"settings": {**cfg, "steering": DEFAULTS}, "sizes": {}, "cost": {}}
    data["unsteered"] = evaluate(world, base, cfg["n_prompts"], seeds)["none"]
    base_picks = data["unsteered"]["mcq_picks"]
    for n in cfg["sizes"]:
        triples = world.triples("train")[:n]
        log(f"n={n}: fitting DSPA")
        cdmap, dspa_cost = fit_dspa(world, n)
        methods = build_methods(world, ["dspa", "static"], cdmap)
        log(f"n={n}: training DPO")
        methods["dpo"], dpo = train_dpo(world.model, world.tokenizer, triples, **cfg["dpo"])
        log(f"n={n}: training RAHF-SCIT")
        methods["rahf-scit"], rahf = train_rahf_scit(world.model, world.tokenizer, triples, **cfg["rahf"])
        data["sizes"][str(n)] = evaluate(world, methods, cfg["n_prompts"], seeds, base_picks)
        data["cost"][str(n)] = {"dspa": dspa_cost, "static": {**dspa_cost, "note": "reuses DSPA's map fit"},
                                "dpo": dpo.to_dict(), "rahf-scit": rahf.to_dict()}
        log(f"n={n} done at {(time.perf_counter() - t0) / 60:.1f} min")
    data["seconds"] = time.perf_counter() - t0
    d, r = dpo.settings, rahf.settings
    md = [_report.header("Toy world: data efficiency of DSPA, static, DPO and RAHF-SCIT" + (" (quick)" * args.quick)),
          f"The first n training triples for every method; {cfg['n_prompts']} held-out prompts x seeds {list(seeds)}, "
          f"temperature 1, at most 80 new tokens; DSPA and static at {DEFAULTS}. DPO ({dpo.backend}): beta {d['beta']}, "
          f"lr {d['lr']}, {d['epochs']} epoch(s) of {d['batch_size']} pairs, at least {d['min_steps']} steps. "
          f"RAHF-SCIT (dspa_lite): stage 1 lr {r['lr']}, {r['epochs']} epoch(s) of {r['batch_size']} pairs, at least "
          f"{r['min_steps']} steps; stage 2 {r['stage2_steps']} LoRA steps of {r['stage2_batch']} examples at lr "
          f"{r['stage2_lr']} (rank {r['rank']}, q/v, alpha {r['alpha']}, hidden_states {r['target_layers']}). "
          "Alignment-stage FLOPs are measured with FlopCounterMode (matmuls, forward and backward); static reuses "
          "DSPA's map fit, so its cost is DSPA's. Shares are percentages; 'MCQ items changed' counts quiz answers "
          "that differ from the unsteered model's; ± is the standard error over seeds.\n",
          table(data), "", f"Run time: {data['seconds'] / 60:.1f} min."]
    _report.publish("data_efficiency_quick" if args.quick else "data_efficiency", md, data, args.json)


if __name__ == "__main__":
    main()

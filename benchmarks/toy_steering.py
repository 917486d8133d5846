"""DSPA vs unsteered vs static vs CAA on the toy world, with exact ground truth.

Sections (each written to benchmarks/RESULTS.md and benchmarks/results/toy_steering.json):
  main      the method table at the measured defaults (3 seeds x 200 held-out prompts)
  frontier  preferred share vs fluency over mode, k, alpha: static, DSPA gated, DSPA gate="none", CAA
  sweep     map estimator, pooling and options
  audit     which styles the edited latents belong to; precision@k against held-out ground truth

    python benchmarks/toy_steering.py            # full (about 25 minutes on 2 CPU cores)
    python benchmarks/toy_steering.py --quick    # a smoke run (80 prompts, 1 seed, small grids)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import _report  # noqa: E402

from dspa_lite import toyworld  # noqa: E402
from dspa_lite.evaluation.experiment import DEFAULTS, build_methods, compare, fit_maps  # noqa: E402
from dspa_lite.method.baselines import CAA, StaticSAE, mean_difference  # noqa: E402
from dspa_lite.method.cdmap import CDMapConfig  # noqa: E402
from dspa_lite.method.dspa import DSPA  # noqa: E402
from dspa_lite.toyworld.audit import audit_steerer  # noqa: E402

FRONTIER = [("ablate", 64, 0.0), ("augment", 16, 3.0), ("augment", 64, 3.0), ("augment", 64, 6.0),
            ("augment", 64, 10.0), ("augment", 128, 6.0), ("both", 64, 6.0)]
UNGATED = [("augment", 4, 1.0), ("augment", 8, 2.0), ("augment", 16, 2.0), ("augment", 32, 3.0)]
CAA_MULT = [1.0, 2.0, 4.0]
SWEEP = {
    "plain (textbook)": CDMapConfig.plain(),
    "plain + exclude template": dataclasses.replace(CDMapConfig.plain(), exclude_template=True),
    "plain + normalise delta": dataclasses.replace(CDMapConfig.plain(), normalize_delta=True),
    "plain + specificity": dataclasses.replace(CDMapConfig.plain(), specificity=True),
    "default (all options)": CDMapConfig.default(),
    "default, no centring": dataclasses.replace(CDMapConfig.default(), center=False),
    "default, pooling mean": dataclasses.replace(CDMapConfig.default(), pooling="mean"),
    "default, pooling max": dataclasses.replace(CDMapConfig.default(), pooling="max"),
    "default, pooling last": dataclasses.replace(CDMapConfig.default(), pooling="last"),
    "default, ridge 1.0": dataclasses.replace(CDMapConfig.default(), estimator="ridge", ridge=1.0),
}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main_table(world, cdmap, plain, n, seeds) -> tuple[dict, str]:
    names = ["none", "static", "caa", "dspa", "static-plain", "dspa-plain"]
    res = compare(world, build_methods(world, names, cdmap, plain=plain), n_prompts=n, seeds=seeds)
    cats = list(res["methods"]["none"]["per_category"])
    lines = ["| method | preferred share | ± se | first segment | later segments | win rate | fluency | "
             "length cap | MCQ acc. | MCQ items changed | vs unsteered | vs static |" + "".join(f" {c} |" for c in cats),
             "|---" * (11 + len(cats)) + "|"]
    for name, r in res["methods"].items():
        vs = {ref: (f"{100 * r[f'vs_{ref}']['diff']:+.1f} ± {100 * r[f'vs_{ref}']['se']:.1f}" if f"vs_{ref}" in r else "")
              for ref in ("none", "static")}
        lines.append(f"| {name} | {pct(r['preferred_share'])} | {pct(r['stderr']['preferred_share'])} | "
                     f"{pct(r['first_segment_share'])} | {pct(r['later_segments_share'])} | {pct(r['win_rate'])} | "
                     f"{pct(r['fluency'])} | {pct(r['length_cap_rate'])} | {pct(r['mcq_accuracy'])} | "
                     f"{r.get('mcq_changed_items', '')} | {vs['none']} | {vs['static']} |"
                     + "".join(f" {pct(r['per_category'][c]['preferred_share'])} |" for c in cats))
    d = res["methods"]["dspa"]
    lines.append("")
    lines.append("Per category, DSPA minus static (points): " + ", ".join(
        f"{c} {100 * v:+.1f}" for c, v in d["vs_static"]["per_category"].items()))
    return res, "\n".join(lines)


def frontier(world, cdmap, n, seeds, quick) -> tuple[dict, str]:
    W = world
    methods = {}
    for mode, k, a in FRONTIER[::3] if quick else FRONTIER:
        methods[f"static {mode} k={k} a={a:g}"] = StaticSAE(W.model, W.tokenizer, W.sae_out, cdmap, mode, k, a)
        methods[f"dspa {mode} k={k} a={a:g}"] = DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, mode, k, a)
    for mode, k, a in UNGATED[::2] if quick else UNGATED:
        methods[f"dspa-ungated {mode} k={k} a={a:g}"] = DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, mode, k,
                                                            a, gate="none")
    v = mean_difference(W.model, W.tokenizer, W.triples("train"), W.l_out)
    for m in CAA_MULT[::2] if quick else CAA_MULT:
        methods[f"caa x{m:g}"] = CAA(W.model, W.tokenizer, v, W.l_out, m)
    res = compare(world, methods, n_prompts=n, seeds=seeds, mcq=False)
    lines = ["| method | preferred share | first segment | fluency | length cap |", "|---|---|---|---|---|"]
    for name, r in res["methods"].items():
        lines.append(f"| {name} | {pct(r['preferred_share'])} | {pct(r['first_segment_share'])} | "
                     f"{pct(r['fluency'])} | {pct(r['length_cap_rate'])} |")
    return res, "\n".join(lines)


def sweep(world, n, seeds, quick) -> tuple[dict, str]:
    out, lines = {}, ["| map configuration | DSPA preferred share | static preferred share | DSPA - static | "
                      "DSPA fluency |", "|---|---|---|---|---|"]
    items = list(SWEEP.items())
    for label, cfg in items[::3] if quick else items:
        cm = fit_maps(world, config=cfg)
        p = dict(DEFAULTS)
        methods = {"static": StaticSAE(world.model, world.tokenizer, world.sae_out, cm, p["mode"], p["k"], p["alpha"]),
                   "dspa": DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cm, p["mode"], p["k"],
                                p["alpha"])}
        r = compare(world, methods, n_prompts=n, seeds=seeds, mcq=False, progress=False)["methods"]
        out[label] = {"config": cfg.to_dict(), **r}
        lines.append(f"| {label} | {pct(r['dspa']['preferred_share'])} | {pct(r['static']['preferred_share'])} | "
                     f"{100 * (r['dspa']['preferred_share'] - r['static']['preferred_share']):+.1f} | "
                     f"{pct(r['dspa']['fluency'])} |")
    return out, "\n".join(lines)


def audit(world, cdmap, plain) -> tuple[dict, str]:
    W, p = world, DEFAULTS
    out, lines = {}, ["| map | category | K_pos precision@k | K_pos top styles | K_neg precision@k | K_neg top styles |",
                      "|---|---|---|---|---|---|"]
    for label, cm in (("default", cdmap), ("plain", plain)):
        steerer = DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cm, p["mode"], p["k"], p["alpha"])
        out[label] = audit_steerer(world, steerer)
        for cat, r in out[label].items():
            top = {side: ", ".join(f"{s} {100 * v:.0f}%" for s, v in list(r[f"{side}_styles"].items())[:2])
                   for side in ("K_pos", "K_neg")}
            lines.append(f"| {label} | {cat} | {r['K_pos_precision']:.2f} | {top['K_pos']} | "
                         f"{r['K_neg_precision']:.2f} | {top['K_neg']} |")
    return out, "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    ap.add_argument("--sections", default="main,frontier,sweep,audit")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    world = toyworld.load()
    n, seeds = (80, (0,)) if args.quick else (200, (0, 1, 2))
    cdmap, plain = fit_maps(world), fit_maps(world, config=CDMapConfig.plain())
    data: dict = {"defaults": DEFAULTS, "n_prompts": n, "seeds": list(seeds)}
    md = [_report.header("Toy world: DSPA vs unsteered, static and CAA" + (" (quick)" if args.quick else "")),
          f"Defaults: {DEFAULTS}; {n} held-out prompts x seeds {list(seeds)}; temperature 1; at most 80 new tokens. "
          "Shares are percentages of response segments in the category's preferred style (exact judge); "
          "a method's ± is the standard error over seeds; differences are means ± the standard error of a paired "
          "bootstrap over prompts x seeds (experiment.paired_bootstrap).\n"]
    sections = args.sections.split(",")
    if "main" in sections:
        data["main"], table = main_table(world, cdmap, plain, n, seeds)
        md += ["### Methods at the defaults", table, ""]
    if "frontier" in sections:
        data["frontier"], table = frontier(world, cdmap, n, seeds[:1], args.quick)
        md += [f"### Share-versus-fluency frontier ({n} prompts, seed 0)", table, ""]
    if "sweep" in sections:
        data["sweep"], table = sweep(world, n // 2, seeds[:1], args.quick)
        md += [f"### Map options ({n // 2} prompts, seed 0)", table, ""]
    if "audit" in sections:
        data["audit"], table = audit(world, cdmap, plain)
        md += [f"### What the map selects (k={DEFAULTS['k']})", table, ""]
    data["seconds"] = time.perf_counter() - t0
    md.append(f"Run time: {data['seconds'] / 60:.1f} min.")
    _report.publish("toy_steering_quick" if args.quick else "toy_steering", md, data, args.json)


if __name__ == "__main__":
    main()

"""Do the book's claims hold on other worlds? Every chapter under nbmake, on worlds built from several seeds.

    python benchmarks/claims_across_worlds.py                  # seeds 0 (reference) to 4, every chapter
    python benchmarks/claims_across_worlds.py --seeds 2 --chapters 04,05 --no-headline
    python benchmarks/claims_across_worlds.py --full --no-headline  # chapters at full size (~10 min a world)

For each seed it builds the world (once, into DSPA_CACHE; seed 0 is the shipped reference world),
runs the chapters with ``DSPA_TOY_SEED`` set (fast mode, as ``make test`` does under CI; ``--full``: at
full size, as it does outside CI, recorded separately) and records pass or fail with the failing
assertion, then measures the headline numbers on that world: preferred share of unsteered, static, CAA
and DSPA at the package defaults, fluency, length-cap rate, quiz accuracy, and the audit's K_pos/K_neg
precision. Results are kept per (seed, chapter), so an interrupted run
resumes; ``--rerun`` measures again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

from dspa_lite.toyworld import store  # noqa: E402

ROOT = _report.HERE.parent
STATE = _report.HERE / "results" / "claims_across_worlds.json"
HEADLINE_PROMPTS, HEADLINE_SEEDS = 200, 2


def options(ap) -> None:
    ap.add_argument("--seeds", default="0,1,2,3,4", help="world seeds (0 is the shipped reference world)")
    ap.add_argument("--chapters", help="comma-separated chapter prefixes such as 04,05 (default: every chapter)")
    ap.add_argument("--workers", type=int, default=2, help="nbmake workers")
    ap.add_argument("--no-headline", action="store_true", help="skip the headline measurements")
    ap.add_argument("--rerun", action="store_true", help="ignore recorded results for these seeds and chapters")
    ap.add_argument("--full", action="store_true", help="run the chapters at full size (DSPA_FAST=0)")


def chapters(prefixes: str | None) -> list[Path]:
    nbs = sorted((ROOT / "book").glob("*.ipynb"))
    if prefixes:
        wanted = [p.strip() for p in prefixes.split(",") if p.strip()]
        nbs = [nb for nb in nbs if any(nb.name.startswith(w) for w in wanted)]
    return nbs


def build_id(path: Path) -> dict:
    """Which build of a seed's world this is: floating point differs between CPUs, so one seed can give
    different weights on different machines. The model's SHA-256, from the manifest build-toy verified."""
    files = json.loads((path / store.MANIFEST).read_text())["files"]
    return {"model_sha256": files["model/model.safetensors"][:12]}


def env_for(seed: int, fast: bool = True) -> dict:
    return {**os.environ, "DSPA_TOY_SEED": str(seed), "DSPA_FAST": str(int(fast)), "OMP_NUM_THREADS": "1"}


def run_chapters(seed: int, nbs: list[Path], workers: int, fast: bool) -> dict[str, dict]:
    """Run ``nbs`` under nbmake on world ``seed``; per chapter: passed, seconds, the failure's last line."""
    stage = ROOT / "_stage_worlds" / f"seed{seed}"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "book").mkdir(parents=True)
    for nb in nbs:
        shutil.copy(nb, stage / "book" / nb.name)
    junit = stage / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=900", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}", str(stage / "book")]
    if workers > 1:
        cmd += ["-n", str(workers), "--dist", "loadfile"]
    subprocess.run(cmd, env=env_for(seed, fast), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    for case in ET.parse(junit).iter("testcase"):
        raw = " ".join(case.get(k) or "" for k in ("file", "name", "classname"))
        found = re.search(r"([A-Za-z0-9_]+)\.ipynb", raw)
        name = found.group(1) if found else (case.get("classname") or "").split(".")[-1]
        fail = case.find("failure") if case.find("failure") is not None else case.find("error")
        out[name] = {"passed": fail is None, "seconds": float(case.get("time", 0)),
                     "failure": "" if fail is None else failure_line(fail.text or fail.get("message", ""))}
    shutil.rmtree(stage, ignore_errors=True)
    return out


def failure_line(text: str) -> str:
    """The failing source line (nbmake marks it with an arrow) and the error, without colour codes."""
    lines = [re.sub(r"(\x1b|#x1B)\[[0-9;]*m", "", ln).strip() for ln in text.splitlines()]
    arrow = [ln.split("--->", 1)[1].lstrip("-> ").lstrip("0123456789 ") for ln in lines if "--->" in ln]
    error = next((ln for ln in reversed(lines) if "Error" in ln), "")
    return " | ".join(x for x in (arrow[-1] if arrow else "", error) if x)[:300]


def headline(seed: int) -> dict:
    """The headline numbers on world ``seed`` (a subprocess, so every world loads in a fresh process)."""
    code = (
        "import json, sys\n"
        "from dspa_lite import toyworld\n"
        "from dspa_lite.toyworld.audit import audit_steerer\n"
        "from dspa_lite.evaluation.experiment import build_methods, compare, fit_maps\n"
        f"world = toyworld.load(seed={seed}, fast=False, progress=False)\n"
        "cdmap = fit_maps(world)\n"
        "methods = build_methods(world, ['none', 'static', 'caa', 'dspa'], cdmap)\n"
        f"res = compare(world, methods, n_prompts={HEADLINE_PROMPTS}, seeds=range({HEADLINE_SEEDS}))\n"
        "audit = audit_steerer(world, methods['dspa'])\n"
        "prec = {s: sum(r[s + '_precision'] for r in audit.values()) / len(audit) for s in ('K_pos', 'K_neg')}\n"
        "print(json.dumps({'methods': res['methods'], 'precision': prec}, default=float))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env_for(seed), cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"headline on seed {seed} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    m = r["methods"]
    row = {f"{k}_share": m[k]["preferred_share"] for k in m}
    row |= {"dspa_minus_none": m["dspa"]["preferred_share"] - m["none"]["preferred_share"],
            "dspa_minus_static": m["dspa"]["preferred_share"] - m["static"]["preferred_share"],
            "dspa_minus_caa": m["dspa"]["preferred_share"] - m["caa"]["preferred_share"]}
    for k in m:
        row |= {f"{k}_fluency": m[k]["fluency"], f"{k}_length_cap": m[k]["length_cap_rate"],
                f"{k}_quiz": m[k].get("mcq_accuracy", float("nan"))}
    return row | {"K_pos_precision": r["precision"]["K_pos"], "K_neg_precision": r["precision"]["K_neg"]}


def table(state: dict, seeds: list[int], key: str) -> list[str]:
    names = sorted({c for s in seeds for c in state.get(str(s), {}).get(key, {})})
    md = ["| chapter | " + " | ".join(f"seed {s}" + (" (reference)" if s == 0 else "") for s in seeds) + " |",
          "|---" * (len(seeds) + 1) + "|"]
    for c in names:
        cells = []
        for s in seeds:
            r = state.get(str(s), {}).get(key, {}).get(c)
            cells.append("–" if r is None else "✓" if r["passed"] else "✗")
        md.append(f"| {c} | " + " | ".join(cells) + " |")
    fails = [(s, c, r["failure"]) for s in seeds for c, r in sorted(state.get(str(s), {}).get(key, {}).items())
             if not r["passed"]]
    md += [""] + ([f"- seed {s}, {c}: `{f}`" for s, c, f in fails] or ["Every chapter passed on every world."])
    return md


def spread(state: dict, seeds: list[int]) -> list[str]:
    rows = [state[str(s)]["headline"] for s in seeds if "headline" in state.get(str(s), {})]
    if not rows:
        return []
    md = ["", f"Headline numbers across {len(rows)} worlds ({HEADLINE_PROMPTS} held-out prompts x {HEADLINE_SEEDS} "
          "sampling seeds each, package defaults; min – max, then the reference world):", "",
          "| quantity | min | max | reference (seed 0) |", "|---|---|---|---|"]
    ref = state.get("0", {}).get("headline", {})
    for key in rows[0]:
        vals = [r[key] for r in rows]
        sign = "+" if "minus" in key else ""
        md.append(f"| {key} | {100 * min(vals):{sign}.1f} | {100 * max(vals):{sign}.1f} | "
                  + (f"{100 * ref[key]:{sign}.1f}" if key in ref else "–") + " |")
    return md + ["", "Shares, rates, accuracies and precisions in percent; differences in points."]


def main() -> None:
    args = _report.parse_args(__doc__, "the reference world and one other, chapters 04 and 05 only", extra=options)
    seeds = [int(s) for s in args.seeds.split(",")] if not args.quick else [0, 1]
    nbs = chapters("04,05" if args.quick and not args.chapters else args.chapters)
    state = json.loads(STATE.read_text()) if STATE.is_file() else {}
    key = "chapters_full" if args.full else "chapters"  # fast mode's results keep their old key
    for seed in seeds:
        rec = state.setdefault(str(seed), {})
        out = subprocess.run([sys.executable, "-m", "dspa_lite.cli", "build-toy", "--seed", str(seed), "--json"],
                             env=env_for(seed), cwd=ROOT, check=True, capture_output=True, text=True)
        world = build_id(Path(json.loads(out.stdout.strip().splitlines()[-1])["path"]))
        if rec.get("world") != world:  # another build of this seed: results on the old one do not carry over
            rec.clear()
            rec["world"] = world
        todo = [nb for nb in nbs if args.rerun or nb.stem not in rec.get(key, {})]
        if todo:
            print(f"seed {seed}: running {len(todo)} chapters", file=sys.stderr, flush=True)
            rec.setdefault(key, {}).update(run_chapters(seed, todo, args.workers, fast=not args.full))
            STATE.parent.mkdir(exist_ok=True)
            STATE.write_text(json.dumps(state, indent=1))
        if not args.no_headline and (args.rerun or "headline" not in rec):
            print(f"seed {seed}: headline numbers", file=sys.stderr, flush=True)
            rec["headline"] = headline(seed)
            STATE.write_text(json.dumps(state, indent=1))
    md = [_report.header("The book's claims across toy worlds"),
          "Every chapter under nbmake on the shipped reference world (seed 0) and on worlds built here from other "
          "seeds (`DSPA_TOY_SEED`). ✓ passed, ✗ failed (the failing assertion below), – not run. Results accumulate "
          "per seed and chapter across runs (`--rerun` measures again); the command above is the latest run. "
          "A seed's results belong to one build of its world: floating point differs between CPUs, so a seed "
          "can give other weights on another machine, and a new build starts that seed's record afresh.",
          "", "Builds (model weights' SHA-256, first 12 hex digits): "
          + "; ".join(f"seed {s} `{state[str(s)]['world']['model_sha256']}`" for s in seeds
                      if "world" in state.get(str(s), {})) + "."]
    for k, mode in (("chapters", "fast mode (`DSPA_FAST=1`, as under CI)"),
                    ("chapters_full", "full size (`DSPA_FAST=0`, as `make test` outside CI; `--full`)")):
        if any(k in state.get(str(s), {}) for s in seeds):
            md += ["", f"Chapters at {mode}:", "", *table(state, seeds, k)]
    md += spread(state, seeds)
    _report.publish("claims_across_worlds", md, state, args.json)


if __name__ == "__main__":
    main()

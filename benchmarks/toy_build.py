"""Rebuild the reference toy world cold, compare it byte for byte with the shipped one, and time both.

    python benchmarks/toy_build.py [--json]

Runs `dspa-lite build-toy --seed 0 --out DIR --json` (the cold build, into a temporary folder) and
`dspa-lite build-toy --json` (loading the shipped world) in subprocesses, then compares the SHA-256
of every content file of the rebuild with the shipped manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

from dspa_lite.toyworld import store as store  # noqa: E402


def run(*args: str, cache: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dspa_lite.cli", "build-toy", *args, "--json"], capture_output=True,
                         text=True, env={**os.environ, "DSPA_CACHE": cache}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        cold, cold_s = run("--seed", "0", "--out", f"{cache}/rebuild", cache=cache)
        warm, warm_s = run(cache=cache)  # the shipped reference world
        rebuilt = store.content_hashes(Path(cache) / "rebuild")
    shipped = store.content_hashes(store.REFERENCE_DIR)
    differ = sorted(name for name in shipped.keys() | rebuilt.keys() if shipped.get(name) != rebuilt.get(name))
    r, seconds = cold, cold["build_info"]["build_seconds"]
    cats = [c for c in r["unsteered_preferred_rate"] if c != "overall"]
    act = r["style_latents_active"]
    md = [_report.header("Toy world: cold build and warm load"),
          f"- cold rebuild of the reference world (`dspa-lite build-toy --seed 0 --out DIR`): "
          f"**{cold_s / 60:.1f} min** wall on {r['build_info']['threads']} torch thread (model {seconds['model_s']:.0f} s, "
          f"sae_in {seconds['sae_in_s']:.0f} s, sae_out {seconds['sae_out_s']:.0f} s, report {seconds['report_s']:.0f} s); "
          f"loading the shipped world: **{warm_s:.1f} s** wall including Python start-up "
          f"(load itself {warm['load_seconds']:.1f} s)",
          "- the rebuild against the shipped files (SHA-256 of every content file): "
          + (f"**byte-identical**, {len(shipped)} files" if not differ else
             f"**{len(differ)} of {len(shipped)} files differ** ({', '.join(differ)}): this machine's floats differ "
             "from the machine that built the reference world"),
          f"- model: {r['params']:,} parameters, final training loss {r['train_loss']:.3f}",
          f"- unsteered (200 held-out prompts, temperature 1): preferred share "
          f"**{100 * r['unsteered_preferred_rate']['overall']:.1f}%** ("
          + ", ".join(f"{c} {100 * r['unsteered_preferred_rate'][c]:.1f}%" for c in cats) + "); win rate "
          f"{100 * r['unsteered_win_rate']['overall']:.1f}%; segments the judge classifies "
          f"**{100 * r['classifiable_rate']:.1f}%**; fluency {100 * r['fluency']:.1f}%",
          f"- multiple choice (log-likelihood, 72 items): **{100 * r['mcq_accuracy']['accuracy']:.1f}%** "
          f"(facts in the training text {100 * r['mcq_accuracy']['accuracy_seen']:.1f}%, "
          f"never seen {100 * r['mcq_accuracy']['accuracy_unseen']:.1f}%)",
          "- SAEs (sae-lens trainer, width 1024): " + "; ".join(
              f"{n} L0 {s['l0']:.1f}, FVE **{s['fve']:.3f}**" for n, s in r["sae"].items()),
          "- style latents of the output SAE (>= 80% of activation mass on one style): "
          + ", ".join(f"{s} {n}" for s, n in r["style_latents"].items()),
          "",
          "| category | style latents active at the last prompt position | per response token | "
          "style-latent activation mass, last prompt position | per response token |",
          "|---|---|---|---|---|"]
    for c, a in act.items():
        md.append(f"| {c} | {a['last_prompt_position']:.1f} | {a['inside_response']:.1f} | "
                  f"{a['mass_last_prompt_position']:.1f} | {a['mass_inside_response']:.1f} |")
    _report.publish("toy_build", md, {"cold": cold, "cold_seconds": cold_s, "warm_seconds": warm_s,
                                      "files_differing_from_shipped": differ}, args.json)


if __name__ == "__main__":
    main()

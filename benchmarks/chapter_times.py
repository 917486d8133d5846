"""The course guide's chapter table: each chapter's warm run time, prerequisites and exercises.

    python benchmarks/chapter_times.py                    # every chapter in book/ (one at a time)
    python benchmarks/chapter_times.py --chapters 00 01   # only these; other rows keep their last measurement

Runs the chapters as CI runs ``make chapters``: a staged copy of ``book/`` (so the repository stays
output-free), fast mode (``CI=true``), one torch thread per chapter (``OMP_NUM_THREADS=1``), under
``pytest --nbmake --durations=0``, and reads each chapter's time from pytest's durations. "Warm" means the
environment is installed and the world is in place (the reference world ships with the package), so the time
is a kernel's start plus the chapter's own cells. From each notebook it reads the ``**Prerequisites:**`` line
and every exercise (a markdown heading ``### Exercise ...`` and its ``*Difficulty ... minutes*`` line).
It rewrites the table between ``<!-- chapter-table:start -->`` and ``<!-- chapter-table:end -->`` in
``book/course_guide.md`` and writes ``benchmarks/results/chapter_times.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

ROOT = _report.HERE.parent
STATE = _report.HERE / "results" / "chapter_times.json"
GUIDE = ROOT / "book" / "course_guide.md"
MARKERS = ("<!-- chapter-table:start -->", "<!-- chapter-table:end -->")
GPU_TRACK = ("07", "12")  # chapters whose point is a real model on a GPU; the rest is the CPU laptop lab
EXERCISE = re.compile(r"^#{2,4}\s*(Exercise\b.*?)\s*$")
COST = re.compile(r"Difficulty\s*(\d)\s*/\s*5.*?Importance\s*(\d)\s*/\s*5.*?(\d+)(?:\s*[-–]\s*(\d+))?\s*min",
                  re.IGNORECASE)
DURATION = re.compile(r"^\s*([0-9.]+)s\s+(setup|call|teardown)\s+(\S+?\.ipynb)")


def options(ap) -> None:
    ap.add_argument("--chapters", nargs="*", default=None,
                    help="chapter prefixes such as 00 01 (also 00,01); default: every notebook in book/")
    ap.add_argument("--seed", type=int, default=0, help="toy world seed (default 0, the shipped reference world)")
    ap.add_argument("--workers", type=int, default=1,
                    help="nbmake workers (default 1: each chapter timed alone on the shared cores)")
    ap.add_argument("--timeout", type=int, default=900, help="nbmake timeout per cell, seconds")


def notebooks(prefixes: list[str] | None) -> list[Path]:
    nbs = sorted((ROOT / "book").glob("*.ipynb"))
    wanted = [w for p in prefixes or [] for w in p.split(",") if w.strip()]
    return [nb for nb in nbs if not wanted or any(nb.name.startswith(w.strip()) for w in wanted)]


def cell_text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def read_chapter(path: Path) -> dict:
    """Title, prerequisites and exercises of one notebook, from its markdown cells.

    An exercise is a heading ``### Exercise ...``; its cost is the first ``*Difficulty a/5 · Importance b/5 ·
    about n minutes*`` line after the heading and before the next heading (``minutes`` is ``None`` without one).
    """
    nb = json.loads(path.read_text())
    lines = [ln for c in nb["cells"] if c["cell_type"] == "markdown" for ln in cell_text(c).splitlines()]
    title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), path.stem)
    prereq = prerequisites(lines)
    exercises = []
    for i, ln in enumerate(lines):
        found = EXERCISE.match(ln)
        if not found:
            continue
        ex = {"title": found.group(1), "difficulty": None, "importance": None, "minutes": None}
        for nxt in lines[i + 1:]:
            if nxt.lstrip().startswith("#"):
                break
            cost = COST.search(nxt)
            if cost:
                lo, hi = int(cost.group(3)), int(cost.group(4) or cost.group(3))
                ex.update(difficulty=int(cost.group(1)), importance=int(cost.group(2)), minutes=(lo + hi) / 2)
                break
        exercises.append(ex)
    return {"title": title, "prerequisites": prereq, "exercises": exercises}


def prerequisites(lines: list[str]) -> str:
    """The ``**Prerequisites:**`` paragraph (it may wrap over several lines), without the label."""
    for i, ln in enumerate(lines):
        if "**Prerequisites:**" in ln:
            parts = [ln.split("**Prerequisites:**", 1)[1].strip()]
            for nxt in lines[i + 1:]:
                if not nxt.strip() or nxt.lstrip().startswith(("**", "#", "- ", "* ", "|")):
                    break
                parts.append(nxt.strip())
            return " ".join(p for p in parts if p)
    return ""


def parse_durations(text: str) -> dict[str, float]:
    """Seconds per notebook (setup + call + teardown) from pytest's ``--durations=0`` report."""
    out: dict[str, float] = {}
    for ln in text.splitlines():
        found = DURATION.match(ln)
        if found:
            stem = Path(found.group(3)).stem
            out[stem] = out.get(stem, 0.0) + float(found.group(1))
    return out


def parse_outcomes(junit: Path) -> dict[str, str]:
    """Per notebook: "" when it passed, else the failing line (``claims_across_worlds.failure_line``)."""
    from claims_across_worlds import failure_line

    out = {}
    for case in ET.parse(junit).iter("testcase"):
        raw = " ".join(case.get(k) or "" for k in ("file", "name", "classname"))
        found = re.search(r"([A-Za-z0-9_]+)\.ipynb", raw)
        if not found:
            continue
        fail = case.find("failure") if case.find("failure") is not None else case.find("error")
        out[found.group(1)] = "" if fail is None else failure_line(fail.text or fail.get("message", "")) or "failed"
    return out


def run_chapters(nbs: list[Path], seed: int, workers: int, timeout: int) -> tuple[dict[str, float], dict[str, str]]:
    """Run ``nbs`` under nbmake in a staged copy, as ``make chapters`` does; seconds and failures per notebook."""
    stage = Path(tempfile.mkdtemp(prefix="chapter_times_"))  # outside the repository: it stays output-free
    try:
        (stage / "book").mkdir()
        for nb in nbs:
            shutil.copy(nb, stage / "book" / nb.name)
        for extra in ("_toc.yml", "book/references.bib"):
            shutil.copy(ROOT / extra, stage / extra)
        shutil.copytree(ROOT / "benchmarks", stage / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
        junit = stage / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "--nbmake", f"--nbmake-timeout={timeout}", "--durations=0",
               "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *[f"book/{nb.name}" for nb in nbs]]
        if workers > 1:
            cmd += ["-n", str(workers), "--dist", "loadfile"]
        env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "DSPA_TOY_SEED": str(seed)}
        env.pop("DSPA_FAST", None)  # fast mode comes from CI, as in CI itself
        proc = subprocess.run(cmd, env=env, cwd=stage, capture_output=True, text=True)
        seconds = parse_durations(proc.stdout)
        outcomes = parse_outcomes(junit) if junit.is_file() else {}
        if not seconds:
            raise RuntimeError(f"no durations in pytest's output (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                               f"\n{proc.stderr[-2000:]}")
        return seconds, outcomes
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def track(stem: str) -> str:
    if stem[:2] in GPU_TRACK:
        return "GPU"
    return "CPU lab" if stem[:2].isdigit() else "CPU (appendix)"


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def fmt_minutes(m: float | None) -> str:
    return "?" if m is None else f"{m:g}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def tables(state: dict) -> list[str]:
    rows = state["chapters"]
    md = ["| chapter | track | warm run, fast mode | prerequisites | exercises |", "|---|---|---|---|---|"]
    for stem, r in sorted(rows.items()):
        mins = [e["minutes"] for e in r["exercises"]]
        total = "?" if None in mins else fmt_minutes(sum(mins))
        exercises = f"{len(mins)}, about {total} min" if mins else "–"
        flag = "" if r.get("failure", "") == "" else " (failed)"
        md.append(f"| {stem[:2]} {cell(r['title'])} | {track(stem)} | {fmt_time(r.get('seconds'))}{flag} | "
                  f"{cell(r['prerequisites']) or '–'} | {exercises} |")
    md += ["", "| chapter | exercise | difficulty | importance | minutes |", "|---|---|---|---|---|"]
    for stem, r in sorted(rows.items()):
        for e in r["exercises"]:
            md.append(f"| {stem[:2]} | {cell(e['title'])} | {e['difficulty'] or '?'}/5 | {e['importance'] or '?'}/5 | "
                      f"{fmt_minutes(e['minutes'])} |")
    if not any(r["exercises"] for r in rows.values()):
        md.append("| – | no `### Exercise` headings found | | | |")
    return md


def summary(state: dict) -> list[str]:
    rows = state["chapters"]
    out = []
    for name in ("CPU lab", "GPU"):
        picked = [r for s, r in rows.items() if track(s) == name]
        secs = [r["seconds"] for r in picked if r.get("seconds") is not None]
        mins = [e["minutes"] or 0 for r in picked for e in r["exercises"]]
        out.append(f"- {name}: {len(picked)} chapters, {fmt_time(sum(secs))} of run time in all "
                   f"({len(secs)} measured), {len(mins)} exercises, about {sum(mins):g} minutes of exercises")
    dates = sorted({r["measured"] for r in rows.values() if r.get("measured")})
    if len(dates) > 1:
        out.append(f"- run times measured on {', '.join(dates)} (rows not named by `--chapters` keep their last time)")
    missing = sorted(s for s, r in rows.items() if r.get("seconds") is None)
    if missing:
        out.append(f"- not measured yet: {', '.join(missing)}")
    failed = sorted((s, r["failure"]) for s, r in rows.items() if r.get("failure"))
    out += [f"- {s} failed: `{f}`" for s, f in failed]
    return out


def write_guide(markdown: str, guide: Path = GUIDE) -> None:
    start, end = MARKERS
    text = guide.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{guide} has no {start} ... {end} markers to write the table between")
    text = text[:text.index(start)] + f"{start}\n{markdown.strip()}\n{end}" + text[text.index(end) + len(end):]
    guide.write_text(text)


def main() -> None:
    args = _report.parse_args(__doc__, "chapter 00 only", extra=options)
    nbs = notebooks(["00"] if args.quick and args.chapters is None else args.chapters)
    if not nbs:
        raise SystemExit(f"no notebook in book/ starts with {args.chapters}")
    state = json.loads(STATE.read_text()) if STATE.is_file() else {}
    rows = state.get("chapters", {})
    print(f"running {len(nbs)} chapters: {', '.join(nb.stem for nb in nbs)}", file=sys.stderr, flush=True)
    seconds, outcomes = run_chapters(nbs, args.seed, args.workers, args.timeout)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    for nb in nbs:
        rows[nb.stem] = {"seconds": seconds.get(nb.stem), "failure": outcomes.get(nb.stem, ""), "measured": today}
    every = sorted((ROOT / "book").glob("*.ipynb"))
    for nb in every:  # prerequisites and exercises are read afresh for every chapter, run or not
        rows[nb.stem] = {**rows.get(nb.stem, {"seconds": None, "failure": "", "measured": None}), **read_chapter(nb)}
    state = {"chapters": {s: rows[s] for s in sorted(rows) if (ROOT / "book" / f"{s}.ipynb").is_file()},
             "seed": args.seed, "workers": args.workers, "machine": _report.machine()}
    # the command, machine and date lines of the other benchmarks; the guide gives the section its heading
    md = [*_report.header("Chapter times").splitlines()[2:], "",
          f"Each chapter under nbmake in fast mode (`CI=true`), one torch thread (`OMP_NUM_THREADS=1`), "
          f"{args.workers} chapter(s) at a time, on toy world seed {args.seed}; warm: installed, world in place. "
          "The GPU chapters ran here in the `tiny` profile, which skips their GPU cells.", "",
          *summary(state), "", *tables(state)]
    write_guide("\n".join(md))
    STATE.parent.mkdir(exist_ok=True)
    STATE.write_text(json.dumps(state, indent=1))
    print("\n".join(md), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(state))


if __name__ == "__main__":
    main()

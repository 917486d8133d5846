"""Write a benchmark's markdown section into benchmarks/RESULTS.md (between markers) and its JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def header(title: str) -> str:
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], HERE.parent)] + sys.argv[1:])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"## {title}\n\n- command: `{cmd}`\n- machine: {machine()}\n- date: {date}\n"


def write(name: str, markdown: str, data: dict, results_md: Path = HERE / "RESULTS.md") -> None:
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{name}.json").write_text(json.dumps(data, indent=1, default=float))
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = results_md.read_text() if results_md.exists() else "# Results\n"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = results_md.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(results_md)


def parse_args(doc: str, quick_help: str, threads: int = 1, extra=None) -> argparse.Namespace:
    """The options every toy benchmark shares (``--quick``, ``--json``, ``--threads``), plus ``extra(parser)``'s; sets
    torch's thread count (default 1: the two cores are shared, and two threads oversubscribe under load)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    ap.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads}; 0: torch's own)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def publish(name: str, md: list[str], data: dict, as_json: bool) -> None:
    """Write the section and its JSON, echo the markdown to stderr, and end stdout with the JSON line if asked."""
    write(name, "\n".join(md), data)
    print("\n".join(md), file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps(data, default=float))

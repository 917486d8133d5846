"""The ``dspa-lite`` command line.

Every subcommand writes progress to stderr; with ``--json`` the last line of stdout is one JSON
object, so scripts can read ``dspa-lite ... --json | tail -n 1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .config import ConfigError

__all__ = ["main"]


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, default=float))
    else:
        print(json.dumps(obj, indent=2, default=float))


def cmd_build_toy(args) -> dict:
    from . import toyworld

    t0 = time.perf_counter()
    world = toyworld.load(force=args.force, progress=True)
    report = dict(world.report)
    report["load_seconds"] = time.perf_counter() - t0
    report["path"] = str(world.path)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dspa-lite", description="Dynamic SAE Steering for Preference Alignment")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-toy", help="build (or load) the offline toy preference world and report on it")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached copy exists")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.set_defaults(func=cmd_build_toy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"dspa-lite {args.command}: error: {e}", file=sys.stderr)
        return 2
    _emit(result, getattr(args, "json", False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

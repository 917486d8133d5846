"""The ``dspa-lite`` command line.

Every subcommand writes progress to stderr; with ``--json`` the last line of stdout is one JSON
object, so scripts can read ``dspa-lite ... --json | tail -n 1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .evaluation.judges import JudgeError
from .loading.config import ConfigError
from .toyworld.store import WorldError

__all__ = ["main"]


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, default=float))
    else:
        print(json.dumps(obj, indent=2, default=float))


def cmd_build_toy(args) -> dict:
    from . import toyworld

    t0 = time.perf_counter()
    if args.out:
        world = toyworld.build_into(args.out, seed=args.seed, force=args.force)
    else:
        world = toyworld.load(seed=args.seed, force=args.force, progress=True)
    report = dict(world.report)
    report["load_seconds"] = time.perf_counter() - t0
    report["path"] = str(world.path)
    report["seed"] = world.seed
    info = world.path / "build_info.json"
    if info.is_file():
        report["build_info"] = json.loads(info.read_text())
    return report


def _world(profile: str):
    if profile != "tiny":
        raise ValueError(f"--profile {profile}: this command runs the toy world only so far; "
                         "real models are loaded in Python (see book chapter 07)")
    from . import toyworld

    return toyworld.load(progress=True)


def cmd_fit(args) -> dict:
    from .loading.data import read_jsonl
    from .method.cdmap import CDMapConfig
    from .method.dspa import fit_cdmap

    world = _world(args.profile)
    triples = read_jsonl(args.triples) if args.triples else world.triples("train")
    if args.n:
        if args.n > len(triples):
            raise ValueError(f"--n {args.n} exceeds the {len(triples)} triples available")
        triples = triples[:args.n]
    config = CDMapConfig.plain() if args.plain else CDMapConfig.default()
    t0 = time.perf_counter()
    cdmap = fit_cdmap(world.model, world.tokenizer, world.sae_in, world.sae_out, triples, config, progress=True)
    path = cdmap.save(args.out, overwrite=args.overwrite)
    return {"path": str(path), "n_triples": len(triples), "fit_seconds": time.perf_counter() - t0,
            "config": config.to_dict(), "meta": cdmap.meta}


def cmd_generate(args) -> dict:
    from .method.cdmap import CDMap
    from .method.dspa import DSPA

    world = _world(args.profile)
    cdmap = CDMap.load(args.map)
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, args.mode, args.k, args.alpha)
    prompts = args.prompt
    steered = steerer.generate(prompts, max_new_tokens=args.max_new_tokens, seed=args.seed)
    out = {"generations": []}
    for p, text in zip(prompts, steered):
        row = {"prompt": p, "dspa": text, "K_neg": steerer.scores(p)["K_neg"].tolist()}
        try:
            v = world.judge(p, text)
            row.update(style=v.style, preferred=v.preferred, preferred_share=v.preferred_share)
        except ValueError:
            pass  # not a toy-world prompt: no ground truth to report
        out["generations"].append(row)
    if not args.json:
        for row in out["generations"]:
            print(f"{row['prompt']}\n  -> {row['dspa']}", file=sys.stderr)
    return out


def cmd_eval(args) -> dict:
    from .evaluation.experiment import build_methods, compare

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.judge == "endpoint":
        if "none" not in names or len(names) < 2:
            raise ValueError(f"--methods {args.methods}: the endpoint judge compares each method with the unsteered "
                             "outputs, so list 'none' and at least one other method")
        judge = _endpoint_judge(args)  # before the world loads: a missing judge setting fails fast
    world = _world(args.profile)
    methods = build_methods(world, names, mode=args.mode, k=args.k, alpha=args.alpha)
    if args.judge == "exact":
        return compare(world, methods, n_prompts=args.n_prompts, seeds=range(args.seeds), mcq=not args.no_mcq)
    return _endpoint_eval(world, methods, judge, args)


def _endpoint_judge(args):
    from .evaluation.judges import Judge, JudgeConfig

    overrides = dict(base_url=args.judge_base_url, model=args.judge_model, max_retries=args.judge_max_retries,
                     cache_path=args.judge_cache)
    return Judge(JudgeConfig.from_env(**{k: v for k, v in overrides.items() if v is not None}))


def _endpoint_eval(world, methods: dict, judge, args) -> dict:
    """AlpacaEval-style: each method's output against the unsteered one, judged by the endpoint (seed 0)."""
    from .evaluation.experiment import MAX_NEW_TOKENS
    from .evaluation.judges import win_rate

    prompts = world.prompts("test", args.n_prompts)
    outputs = {name: m.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=0, batch_size=50)
               for name, m in methods.items()}
    out = {"judge": judge.config.to_dict(), "cache": str(judge.cache_path), "n_prompts": len(prompts),
           "reference": "none", "methods": {}}
    for name, texts in outputs.items():
        if name != "none":
            out["methods"][name] = win_rate(judge.compare(prompts, texts, outputs["none"], progress=not args.json))
    out |= {"usage": judge.usage, "estimated_cost_usd": judge.cost}
    return out


def cmd_flops(args) -> dict:
    from .evaluation.flopcount import cli_report

    return cli_report(args.model, args.measure)


def cmd_pipeline(args) -> dict:
    from .evaluation.pipeline import run

    return run(args)


def _steer_args(p: argparse.ArgumentParser) -> None:
    from .evaluation.experiment import DEFAULTS

    p.add_argument("--mode", default=DEFAULTS["mode"], choices=("ablate", "augment", "both"))
    p.add_argument("--k", type=int, default=DEFAULTS["k"], help="latents per set (K_neg, K_pos)")
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="augment scale: z -> (1 + alpha) z")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="tiny")
    p.add_argument("--methods", default="none,static,caa,dspa")
    p.add_argument("--n-prompts", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3, help="number of sampling seeds (0..S-1; exact judge)")
    p.add_argument("--no-mcq", action="store_true", help="skip multiple-choice accuracy (exact judge)")
    _steer_args(p)
    g = p.add_argument_group("judge", "--judge endpoint: pairwise (AlpacaEval-style) against the unsteered outputs, "
                             "by any OpenAI-compatible chat endpoint; answers are cached, so a rerun resumes")
    g.add_argument("--judge", choices=("exact", "endpoint"), default="exact",
                   help="exact: the toy world's ground truth (default); endpoint: a judge model")
    g.add_argument("--judge-base-url", help="e.g. http://localhost:8000/v1 (default: $DSPA_JUDGE_BASE_URL)")
    g.add_argument("--judge-model", help="the judge model's name (default: $DSPA_JUDGE_MODEL); key: $DSPA_JUDGE_API_KEY")
    g.add_argument("--judge-max-retries", type=int, help="retries per request with backoff (default 5)")
    g.add_argument("--judge-cache", help="JSONL answer cache (default: DSPA_CACHE/judge/<model>.jsonl)")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dspa-lite", description="Dynamic SAE Steering for Preference Alignment")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-toy", help="build (or load) the offline toy preference world and report on it")
    p.add_argument("--seed", type=int, help="world seed (default: DSPA_TOY_SEED, else 0, the shipped reference world)")
    p.add_argument("--out", help="build into this folder instead of the cache")
    p.add_argument("--force", action="store_true", help="rebuild even if a verified copy exists")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.set_defaults(func=cmd_build_toy)

    p = sub.add_parser("fit", help="fit a conditional-difference map and save it")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--triples", help="a JSONL file of {prompt, chosen, rejected} (default: the toy world's)")
    p.add_argument("--n", type=int, help="use only the first N triples")
    p.add_argument("--plain", action="store_true", help="the textbook estimator without the map options")
    p.add_argument("--out", required=True, help="folder to write the map to")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("generate", help="generate with DSPA from a saved map")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--map", required=True, help="a folder written by `dspa-lite fit`")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    _steer_args(p)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="compare steering methods on the toy world, with its exact judge or a judge model")
    _eval_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("flops", help="alignment-stage FLOPs: DSPA vs RAHF-SCIT vs DPO, and the flop-counter cross-check")
    p.add_argument("--model", default="tiny", help="tiny, gemma-2-2b, gemma-2-9b or qwen3-8b")
    p.add_argument("--measure", action="store_true", help="(tiny) also count FLOPs with torch.utils.flop_counter")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flops)

    from .evaluation.pipeline import add_arguments

    p = sub.add_parser("pipeline", help="a real model end to end (default Gemma-2-2B-it): fit DSPA, write MT-Bench and "
                       "AlpacaEval answers, run lm-eval; resumable, see --dry-run")
    add_arguments(p)
    p.set_defaults(func=cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, JudgeError, WorldError) as e:
        print(f"dspa-lite {args.command}: error: {e}", file=sys.stderr)
        return 2
    _emit(result, getattr(args, "json", False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

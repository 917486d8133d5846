"""The ``dspa-lite`` command line.

Each subcommand checks its arguments and input files (with the API's checks, :mod:`dspa_lite.method.checks`) before
it loads a model, world or map. A user error is one line on stderr and an exit code per kind (:data:`EXIT_CODES`,
README's "Command line"); a traceback means a bug, or ``--debug``. Progress goes to stderr; with ``--json`` the last
stdout line is one strict JSON object (NaN/inf become ``null``, explained under ``"null_reasons"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter

from .evaluation.judges import JudgeError
from .loading.config import ConfigError, SettingError, command_profile
from .loading.hub import ModelLoadError
from .method import checks
from .method.cdmap import SIDECAR_FILE, TENSORS_FILE, CDMapFileError, IncompatibleMapError
from .method.checks import ArgumentError, DataError
from .toyworld.loader import config_for, load_map
from .toyworld.store import WorldError

__all__ = ["EXIT_CODES", "INTERRUPTED", "METHODS", "main"]

EXIT_CODES = (  # (error type, exit code): the first match wins; any other exception is a bug (exit 1, traceback)
    (ArgumentError, 2), (CDMapFileError, 4), (IncompatibleMapError, 4), (DataError, 3), (FileNotFoundError, 3),
    (FileExistsError, 5), (SettingError, 6), (ModelLoadError, 6), (WorldError, 7), (JudgeError, 8),
    (FloatingPointError, 9), (ConfigError, 2), (ValueError, 2),
)
INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
# experiment.METHOD_NAMES, written out so that a bad argument is refused before torch is imported (a test checks)
METHODS = ("none", "static", "caa", "dspa", "dspa-ungated", "dspa-guarded", "dspa-plain", "static-plain")


def _emit(obj: dict, as_json: bool) -> None:
    clean = checks.strict_json(obj)
    print(json.dumps(clean, allow_nan=False) if as_json else json.dumps(clean, indent=2, allow_nan=False))


def _world(cfg):
    from . import toyworld

    return toyworld.load(config=cfg, progress=True)


def cmd_build_toy(args) -> dict:
    from . import toyworld

    if args.seed is not None:
        checks.check_int(args.seed, "--seed", 0)
    cfg = config_for(args.seed)
    if args.out:
        checks.check_output_folder(args.out, overwrite=args.force, owned=None, what="a toy world",
                                   overwrite_hint="pass --force")
    t0 = time.perf_counter()
    world = (toyworld.build_into(args.out, config=cfg, force=args.force) if args.out
             else toyworld.load(config=cfg, force=args.force, progress=True))
    report = {**world.report, "load_seconds": time.perf_counter() - t0, "path": str(world.path), "seed": world.seed}
    if (info := world.path / "build_info.json").is_file():
        report["build_info"] = json.loads(info.read_text())
    return report


def _fit_inputs(args, cfg, config) -> tuple[list | None, int]:
    """The triples file (read and checked) or ``None`` for the world's, and how many triples to use."""
    from .loading.data import read_jsonl

    triples, source = None, "the toy world's training set"
    if args.triples:
        source = str(args.triples)
        triples = checks.check_triples(read_jsonl(args.triples), source)
    available = len(triples) if triples is not None else cfg.n_triples["train"]
    n = available if args.n is None else args.n
    if n > available:
        raise ArgumentError(f"--n={n} exceeds the {available} triples in {source}: use --n {available} or fewer")
    if args.n is not None:
        checks.check_int(n, "--n", config.n_min,
                         hint=f" (a map needs each prompt latent active in n_min={config.n_min} triples; use hundreds)")
    if triples is not None:
        checks.check_triples(triples[:n], source, min_n=config.n_min)
    return triples, n


def cmd_fit(args) -> dict:
    from .method.cdmap import CDMapConfig
    from .method.dspa import fit_cdmap

    command_profile(args.profile)
    if args.n is not None:
        checks.check_int(args.n, "--n")
    checks.check_output_folder(args.out, overwrite=args.overwrite, owned=(TENSORS_FILE, SIDECAR_FILE), what="a CDMap",
                               overwrite_hint="pass --overwrite")
    cfg = config_for()
    config = CDMapConfig.plain() if args.plain else CDMapConfig.default()
    triples, n = _fit_inputs(args, cfg, config)
    world = _world(cfg)
    triples = (triples if triples is not None else world.triples("train"))[:n]
    t0 = time.perf_counter()
    cdmap = fit_cdmap(world.model, world.tokenizer, world.sae_in, world.sae_out, triples, config, progress=True)
    path = cdmap.save(args.out, overwrite=args.overwrite)
    return {"path": str(path), "n_triples": len(triples), "fit_seconds": time.perf_counter() - t0,
            "config": config.to_dict(), "meta": cdmap.meta}


def cmd_generate(args) -> dict:
    from .method.dspa import DSPA

    command_profile(args.profile)
    prompts = checks.check_prompts(args.prompt)
    checks.check_int(args.max_new_tokens, "--max-new-tokens")
    checks.check_int(args.seed, "--seed", 0, 2**63 - 1)
    cfg = config_for()
    checks.check_k(args.k, cfg.d_sae, "--k")
    checks.check_alpha(args.alpha, "--alpha")
    cdmap = load_map(args.map, cfg)
    world = _world(cfg)
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, args.mode, args.k, args.alpha)
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
        print("\n".join(f"{row['prompt']}\n  -> {row['dspa']}" for row in out["generations"]), file=sys.stderr)
    return out


def cmd_eval(args) -> dict:
    from .evaluation.experiment import build_methods, compare, judge_against_unsteered

    command_profile(args.profile)
    names = checks.check_names(args.methods, METHODS, "--methods")
    if args.judge == "endpoint" and ("none" not in names or len(names) < 2):
        raise ArgumentError(f"--methods={args.methods!r}: the endpoint judge compares each method with the unsteered "
                            "outputs, so list 'none' and at least one other method")
    checks.check_int(args.n_prompts, "--n-prompts")
    checks.check_int(args.seeds, "--seeds")
    cfg = config_for()
    checks.check_k(args.k, cfg.d_sae, "--k")
    checks.check_alpha(args.alpha, "--alpha")
    judge = _endpoint_judge(args) if args.judge == "endpoint" else None  # before the world loads
    world = _world(cfg)
    methods = build_methods(world, names, mode=args.mode, k=args.k, alpha=args.alpha)
    if judge is None:
        return compare(world, methods, n_prompts=args.n_prompts, seeds=range(args.seeds), mcq=not args.no_mcq)
    return judge_against_unsteered(world, methods, judge, args.n_prompts, progress=not args.json)


def _endpoint_judge(args):
    from .evaluation.judges import Judge, JudgeConfig

    if args.judge_timeout is not None:
        checks.check_float(args.judge_timeout, "--judge-timeout", above_low=True, hint=" (seconds per answer)")
    if args.judge_max_retries is not None:
        checks.check_int(args.judge_max_retries, "--judge-max-retries", 0)
    if args.judge_cache:
        checks.check_writable_file(args.judge_cache, "--judge-cache")
    overrides = dict(base_url=args.judge_base_url, model=args.judge_model, max_retries=args.judge_max_retries,
                     cache_path=args.judge_cache, timeout_s=args.judge_timeout)
    judge = Judge(JudgeConfig.from_env(**{k: v for k, v in overrides.items() if v is not None}))
    checks.check_writable_file(judge.cache_path, "the judge cache")  # answers are paid for: keep them
    return judge


def cmd_audit(args) -> dict:
    from .evaluation.experiment import DEFAULTS
    from .method.dspa import DSPA
    from .toyworld import language
    from .toyworld.audit import audit_steerer

    command_profile(args.profile)
    cfg = config_for()
    checks.check_int(args.k, "--k", 1, cfg.d_sae, f" (the SAE has d_sae={cfg.d_sae} latents)")
    checks.check_int(args.n_per_category, "--n-per-category")
    cdmap = load_map(args.map, cfg)
    world = _world(cfg)
    steerer = DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, "both", args.k, DEFAULTS["alpha"])
    result = audit_steerer(world, steerer, args.n_per_category)
    prompts = world.prompts("test", args.n_per_category * len(language.CATEGORIES))
    for cat, row in result.items():  # the latents themselves, most often selected first
        sc = steerer.scores([p for p in prompts if world.judge.category(p) == cat])
        for side in ("K_pos", "K_neg"):
            counts = Counter(i for r in sc[side] for i in r[r >= 0].tolist())
            row[f"{side}_latents"] = {str(i): c / len(sc[side]) for i, c in counts.most_common(args.k)}
    if not args.json:
        for cat, row in result.items():
            top = ", ".join(f"{s} {v:.2f}" for s, v in list(row["K_pos_styles"].items())[:3])
            print(f"{cat:8s} K_pos precision@{args.k} {row['K_pos_precision']:.2f} ({top}); "
                  f"K_neg precision@{args.k} {row['K_neg_precision']:.2f}", file=sys.stderr)
    return {"map": str(args.map), "k": args.k, "n_per_category": args.n_per_category, "seed": world.seed,
            "categories": result}


def cmd_flops(args) -> dict:
    from .evaluation.flopcount import cli_report

    return cli_report(args.model, args.measure)


def cmd_pipeline(args) -> dict:
    from .evaluation.pipeline import run

    return run(args)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


SHARED = {  # options several subcommands take
    "profile": dict(help="default: DSPA_PROFILE, else tiny (the only profile this command runs)"),
    "map": dict(required=True, help="a folder written by `dspa-lite fit`"),
    "json": dict(action="store_true", help="print one JSON object as the last stdout line"),
}


def _add(sub, name: str, func, common, shared: tuple[str, ...], help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, parents=[common], help=help)
    p.set_defaults(func=func)
    for opt in shared:
        p.add_argument(f"--{opt}", **SHARED[opt])
    return p


def _steer_args(p: argparse.ArgumentParser) -> None:
    from .evaluation.experiment import DEFAULTS

    p.add_argument("--mode", default=DEFAULTS["mode"], choices=("ablate", "augment", "both"))
    p.add_argument("--k", type=int, default=DEFAULTS["k"], help="latents per set (K_neg, K_pos), 0..d_sae")
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"],
                   help=f"augment scale: z -> (1 + alpha) z, 0..{checks.ALPHA_MAX:g}")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default="none,static,caa,dspa", help=f"comma-separated: {', '.join(METHODS)}")
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
    g.add_argument("--judge-timeout", type=float, help="seconds to wait for each answer (default 120)")
    g.add_argument("--judge-cache", help="JSONL answer cache (default: DSPA_CACHE/judge/<model>.jsonl)")


def build_parser() -> argparse.ArgumentParser:
    from .evaluation.pipeline import add_arguments

    parser = _Parser(prog="dspa-lite", description="Dynamic SAE Steering for Preference Alignment")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = _add(sub, "build-toy", cmd_build_toy, common, ("json",), "build (or load) the offline toy world, report on it")
    p.add_argument("--seed", type=int, help="world seed (default: DSPA_TOY_SEED, else 0, the shipped reference world)")
    p.add_argument("--out", help="build into this folder instead of the cache")
    p.add_argument("--force", action="store_true", help="rebuild even if a verified copy exists")
    p = _add(sub, "fit", cmd_fit, common, ("profile", "json"), "fit a conditional-difference map and save it")
    p.add_argument("--triples", help="a JSONL file of {prompt, chosen, rejected} (default: the toy world's)")
    p.add_argument("--n", type=int, help="use only the first N triples")
    p.add_argument("--plain", action="store_true", help="the textbook estimator without the map options")
    p.add_argument("--out", required=True, help="folder to write the map to (new or empty, or --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a map already in --out")
    p = _add(sub, "generate", cmd_generate, common, ("profile", "map", "json"), "generate with DSPA from a saved map")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    _steer_args(p)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    _eval_args(_add(sub, "eval", cmd_eval, common, ("profile", "json"),
                    "compare steering methods on the toy world, with its exact judge or a judge model"))
    p = _add(sub, "audit", cmd_audit, common, ("profile", "map", "json"),
             "per category: the latents a map edits, their styles and precision@k on the toy world")
    p.add_argument("--k", type=int, default=64, help="latents per set (K_neg, K_pos)")
    p.add_argument("--n-per-category", type=int, default=20, help="held-out prompts per category")
    p = _add(sub, "flops", cmd_flops, common, ("json",), "alignment-stage FLOPs: DSPA vs RAHF-SCIT vs DPO")
    p.add_argument("--model", default="tiny", help="tiny, gemma-2-2b, gemma-2-9b or qwen3-8b")
    p.add_argument("--measure", action="store_true", help="(tiny) also count FLOPs with torch.utils.flop_counter")
    add_arguments(_add(sub, "pipeline", cmd_pipeline, common, (), "a real model end to end (default Gemma-2-2B-it): "
                       "fit DSPA, write MT-Bench and AlpacaEval answers, run lm-eval; resumable, see --dry-run"))
    return parser


def _exit_code(e: BaseException) -> int | None:
    return next((code for kind, code in EXIT_CODES if isinstance(e, kind)), None)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a malformed command line (one line on stderr)
        return e.code if isinstance(e.code, int) else 0
    debug, name = getattr(args, "debug", False), f"dspa-lite {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *a, **k: print(f"{name}: warning: {message}", file=sys.stderr)
        try:
            result = args.func(args)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"{name}: interrupted (Ctrl-C); files are written whole or not at all, so rerun to finish",
                  file=sys.stderr)
            return INTERRUPTED
        except Exception as e:
            if debug or (code := _exit_code(e)) is None:
                raise
            print(f"{name}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return code
    _emit(result, getattr(args, "json", False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

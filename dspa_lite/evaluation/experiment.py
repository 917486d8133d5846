"""Side-by-side evaluation of steering methods on the toy world, over sampling seeds.

``compare(world, methods, n_prompts, seeds)`` generates with every method on the same held-out
prompts and seeds, judges them exactly, scores the quiz items, and reports means, standard errors
over seeds and *paired* differences (method minus unsteered, minus static, minus CAA) with a
paired bootstrap over prompts and seeds (:func:`paired_bootstrap`): both methods answer the same
prompt with the same random stream, so much of their noise is shared and cancels in the
difference, and each replicate redraws both the prompts and the sampling seeds, so an interval
carries the prompt-to-prompt and the seed-to-seed variation (book chapter 8).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..loading import repository
from ..method.baselines import CAA, StaticSAE, Unsteered, mean_difference
from ..method.cdmap import CDMap, CDMapConfig
from ..method.dspa import DSPA, fit_cdmap
from ..method.stopguard import StopGuard, fit_stop_probe
from .evals import judge_responses, judged_win_rate, mcq_accuracy, pairwise_scores
from .protocols import mean_se

__all__ = ["build_methods", "compare", "fit_maps", "judge_against_unsteered", "paired_bootstrap", "recorded_run",
           "DEFAULTS", "METHOD_NAMES"]

# The measured defaults on the toy world (benchmarks/RESULTS.md): gated augment, k=64, alpha=6.
DEFAULTS = {"mode": "augment", "k": 64, "alpha": 6.0, "caa_multiplier": 2.0}
MAX_NEW_TOKENS = 80
METRICS = ("preferred_share", "win_rate", "fluency", "first_segment_share", "later_segments_share",
           "length_cap_rate")


def fit_maps(world, n: int | None = None, config: CDMapConfig | None = None) -> CDMap:
    triples = world.triples("train")[:n] if n else world.triples("train")
    return fit_cdmap(world.model, world.tokenizer, world.sae_in, world.sae_out, triples, config or CDMapConfig.default())


METHOD_NAMES = ("none", "static", "caa", "dspa", "dspa-ungated", "dspa-guarded", "dspa-plain", "static-plain")


def build_methods(world, names, cdmap: CDMap | None = None, plain: CDMap | None = None, **kw) -> dict[str, object]:
    """Named methods (:data:`METHOD_NAMES`): ``none``, ``static``, ``caa``, ``dspa``, ``dspa-plain``,
    ``static-plain``, ``dspa-ungated``, ``dspa-guarded`` (DSPA under a cumulative
    :class:`~dspa_lite.method.stopguard.StopGuard` at ``stop_threshold``, 0.9 unless given, its probe fitted on the
    training triples: the setting that kept the length-cap rate within a point of unsteered at >= 90% of DSPA's
    gain on worlds 0-4, benchmarks/RESULTS.md). A map is fitted only when a named method needs it and none was
    given."""
    p = {**DEFAULTS, "stop_threshold": 0.9, **kw}
    maps = {"default": cdmap, "plain": plain}

    def the_map(kind: str) -> CDMap:
        if maps[kind] is None:
            maps[kind] = fit_maps(world, config=CDMapConfig.plain() if kind == "plain" else None)
        return maps[kind]

    def dspa(kind: str = "default", **extra) -> DSPA:
        return DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, the_map(kind), p["mode"], p["k"],
                    p["alpha"], **extra)

    makers: dict[str, Callable[[], object]] = {
        "none": lambda: Unsteered(world.model, world.tokenizer),
        "static": lambda: StaticSAE(world.model, world.tokenizer, world.sae_out, the_map("default"), p["mode"],
                                    p["k"], p["alpha"]),
        "caa": lambda: CAA(world.model, world.tokenizer,
                           mean_difference(world.model, world.tokenizer, world.triples("train"), world.l_out),
                           world.l_out, p["caa_multiplier"]),
        "dspa": dspa,
        "dspa-ungated": lambda: dspa(gate="none"),
        "dspa-guarded": lambda: StopGuard(dspa(), fit_stop_probe(world.model, world.tokenizer,
                                                                 world.triples("train"), world.l_out),
                                          p["stop_threshold"], cumulative=True),
        "dspa-plain": lambda: dspa("plain"),
        "static-plain": lambda: StaticSAE(world.model, world.tokenizer, world.sae_out, the_map("plain"), p["mode"],
                                          p["k"], p["alpha"]),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from {', '.join(makers)}")
    return {n: makers[n]() for n in names}


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, paired: bool = True,
                     over: tuple[str, ...] = ("prompts", "seeds")) -> dict:
    """Mean difference of per-response scores ``a - b``, with a bootstrap over prompts and seeds.

    Each of ``n_boot`` replicates draws ``n_prompts`` prompt indices and ``n_seeds`` seed indices
    with replacement and averages each method over the drawn grid of responses; with ``paired``
    both methods get the same draws, so what they share (an easy prompt, a lucky random stream)
    cancels in the difference. Seeds and prompts are crossed, so resampling both is conservative:
    it counts the per-response noise up to three times (Owen 2007, the "pigeonhole" bootstrap).
    With a single seed only the prompts vary, and the interval says nothing about other seeds.

    Args:
        a, b: scores of two methods, ``(n_seeds, n_prompts)``, response ``[s, i]`` answering prompt
            ``i`` at sampling seed ``s``. ``NaN`` marks a response without a score (e.g. one with no
            later segment); it is left out of the means, so a mean is a ratio over scored responses.
        paired: resample the same prompts and seeds for both methods (the paired bootstrap);
            ``False`` draws them independently, as if the two methods had answered different prompts.
        over: the dimensions to resample, ``"prompts"`` and/or ``"seeds"``; ``("prompts",)`` keeps
            every seed in every replicate (the bootstrap over prompts alone).

    Returns:
        ``{"diff", "se", "ci95"}``: the mean difference, the bootstrap standard error and the 2.5 and
        97.5 percentiles of the replicates' differences.

    >>> r = paired_bootstrap([[0.5, 0.7, 0.2]], [[0.4, 0.6, 0.1]])
    >>> round(r["diff"], 6), round(r["se"], 6)
    (0.1, 0.0)
    """
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must both be (n_seeds, n_prompts), got {tuple(a.shape)} and {tuple(b.shape)}")
    unknown = set(over) - {"prompts", "seeds"}
    if unknown:
        raise ValueError(f"over={over!r}: resample 'prompts' and/or 'seeds', not {sorted(unknown)}")
    gen = torch.Generator().manual_seed(seed)
    n_seeds, n_prompts = a.shape

    def draw() -> tuple[Tensor, Tensor]:
        si = (torch.randint(n_seeds, (n_boot, n_seeds), generator=gen) if "seeds" in over
              else torch.arange(n_seeds).expand(n_boot, n_seeds))
        pi = (torch.randint(n_prompts, (n_boot, n_prompts), generator=gen) if "prompts" in over
              else torch.arange(n_prompts).expand(n_boot, n_prompts))
        return si, pi

    ia = draw()
    ib = ia if paired else draw()
    boots = _grid_mean(a, *ia) - _grid_mean(b, *ib)  # (n_boot,)
    boots = boots[~torch.isnan(boots)]
    lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"diff": float(a.nanmean() - b.nanmean()), "se": float(boots.std()), "ci95": (lo, hi)}


def _grid_mean(x: Tensor, si: Tensor, pi: Tensor) -> Tensor:
    """Per replicate, the mean of ``x`` over the drawn seeds x prompts, NaNs left out: ``(n_boot,)``."""
    grid = x[si[:, :, None], pi[:, None, :]]  # (n_boot, n_seeds, n_prompts)
    scored = ~torch.isnan(grid)
    return torch.where(scored, grid, 0.0).sum((1, 2)) / scored.sum((1, 2))


def compare(world, methods: dict[str, object], n_prompts: int = 200, seeds=(0, 1, 2), mcq: bool = True,
            progress: bool = True, keep_responses: bool = False) -> dict:
    """Generate, judge and score every method on the same prompts and seeds (see module docstring).

    Returns ``{"n_prompts", "seeds", "methods"}``. ``methods[name]`` holds
    the means over seeds of :data:`METRICS` (``stderr``: their standard errors over seeds),
    ``per_category`` means, ``pairwise_vs_none`` (each response against the unsteered answer to the same
    prompt and seed, :func:`~dspa_lite.evaluation.evals.pairwise_scores`: raw and length-controlled win rates),
    and, when those methods are compared too, ``vs_none``, ``vs_static`` and
    ``vs_caa``: :func:`paired_bootstrap` of the preferred share, with ``first_segment`` and
    ``later_segments`` (the same for those shares), ``per_category`` (the mean difference per
    category) and ``per_category_ci`` (its bootstrap); with ``mcq``, ``mcq_accuracy`` and
    ``mcq_changed_items`` (quiz answers that differ from the unsteered model's, if ``none`` is
    compared). With ``keep_responses`` it also holds each prompt's category (``categories``) and
    ``per_response[name][metric]``, ``(n_seeds, n_prompts)``: ``preferred_share``, ``first_segment``
    (1 if the first segment is in the preferred style) and ``later_segments`` (the share of the later
    segments, NaN for a response with one segment or none) and ``words`` (its length), for a bootstrap of one's own.
    """
    prompts = world.prompts("test", n_prompts)
    runs: dict[str, list[dict]] = {name: [] for name in methods}
    scores: dict[str, dict[str, list[list[float]]]] = {name: {} for name in methods}
    for seed in seeds:
        for name, method in methods.items():
            if progress:
                print(f"  seed {seed}: {name}", file=sys.stderr, flush=True)
            responses = method.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=seed,
                                        batch_size=50)
            j = judge_responses(world.judge, prompts, responses)
            for metric, values in _response_scores(world.judge, prompts, responses).items():
                scores[name].setdefault(metric, []).append(values)
            j["length_cap_rate"] = sum(len(world.tokenizer(r).input_ids) >= MAX_NEW_TOKENS - 1
                                       for r in responses) / len(responses)
            runs[name].append(j)
    categories = [world.judge.category(p) for p in prompts]
    out: dict = {"n_prompts": n_prompts, "seeds": list(seeds), "methods": {}}
    if keep_responses:
        out |= {"categories": categories, "per_response": scores}
    base_picks = None
    for name, method in methods.items():
        res: dict = {"stderr": {}, "per_category": {}}
        for m in METRICS:
            res[m], res["stderr"][m] = mean_se([r[m] for r in runs[name]])
        for cat in runs[name][0]["per_category"]:
            res["per_category"][cat] = {m: mean_se([r["per_category"][cat][m] for r in runs[name]])[0]
                                        for m in ("preferred_share", "win_rate", "fluency")}
        for ref in ("none", "static", "caa"):
            if ref in runs and ref != name:
                res[f"vs_{ref}"] = _versus(scores[name], scores[ref], categories)
        if "none" in runs and name != "none":  # pairwise against the unsteered answer, raw and length-controlled
            res["pairwise_vs_none"] = _pairwise(scores[name], scores["none"])
        if mcq:
            model = getattr(method, "model", world.model)  # a fine-tuned baseline answers with its own weights
            acc = mcq_accuracy(model, world.tokenizer, world.mcq("test"), steer=method.steer)
            res["mcq_accuracy"] = acc["accuracy"]
            base_picks = acc["picks"] if name == "none" else base_picks
            if base_picks is not None:
                res["mcq_changed_items"] = sum(a != b for a, b in zip(acc["picks"], base_picks))
        out["methods"][name] = res
    return out


def _response_scores(judge, prompts, responses) -> dict[str, list[float]]:
    """Per response: its preferred share, whether its first segment is preferred, its later segments' share."""
    out: dict[str, list[float]] = {"preferred_share": [], "first_segment": [], "later_segments": [], "words": []}
    for p, r in zip(prompts, responses):
        v = judge(p, r)
        out["words"].append(len(r.split()))
        out["preferred_share"].append(v.preferred_share)
        out["first_segment"].append(float(bool(v.styles) and v.styles[0] == v.preferred))
        later = v.styles[1:]
        out["later_segments"].append(sum(s == v.preferred for s in later) / len(later) if later else math.nan)
    return out


def _pairwise(a: dict, b: dict) -> dict:
    """Each response of ``a`` against ``b``'s to the same prompt and seed: raw and length-controlled win rates."""
    return pairwise_scores(*(sum(x[m], []) for m in ("preferred_share", "words") for x in (a, b)))


def _versus(a: dict, b: dict, categories: list[str]) -> dict:
    """Paired bootstraps of method ``a`` minus ``b``: preferred share, first and later segments, per category."""
    out = paired_bootstrap(a["preferred_share"], b["preferred_share"])
    out["first_segment"] = paired_bootstrap(a["first_segment"], b["first_segment"])
    out["later_segments"] = paired_bootstrap(a["later_segments"], b["later_segments"])
    out["per_category_ci"] = {}
    for c in sorted(set(categories)):
        cols = [i for i, cat in enumerate(categories) if cat == c]
        out["per_category_ci"][c] = paired_bootstrap([[row[i] for i in cols] for row in a["preferred_share"]],
                                                     [[row[i] for i in cols] for row in b["preferred_share"]])
    out["per_category"] = {c: ci["diff"] for c, ci in out["per_category_ci"].items()}
    return out


def recorded_run(name: str, repo_url: str = repository.URL, start: Path | None = None) -> dict:
    """A benchmark's recorded result, ``benchmarks/results/<name>``: from the repository around ``start`` (default:
    the working folder, as when a chapter runs from a clone), else downloaded from ``repo_url`` (Colab, where the
    package is installed without the repository)."""
    here = Path.cwd() if start is None else Path(start)
    for folder in (here, *here.parents):
        if (path := folder / "benchmarks" / "results" / name).is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    url = repository.raw_url(f"benchmarks/results/{name}", repo_url)
    print(f"no benchmarks/results/{name} above {here}: reading {url}", file=sys.stderr)
    try:
        return repository.fetch_json(f"benchmarks/results/{name}", repo_url, timeout=30)
    except OSError as e:  # URLError is an OSError
        script = f"benchmarks/{name.removesuffix('.json').removesuffix('_quick')}.py"
        raise FileNotFoundError(f"the recorded run {name} is neither under a folder above {here} nor readable from {url} "
                                f"({e}): clone the repository, or run `python {script}`") from None


def judge_against_unsteered(world, methods: dict, judge, n_prompts: int | None = None, progress: bool = True) -> dict:
    """AlpacaEval-style: each method's outputs against the unsteered ones (``methods["none"]``), judged by an
    endpoint :class:`~dspa_lite.evaluation.judges.Judge` (sampling seed 0); raw and length-controlled win rates."""
    from .judges import JudgeError

    prompts = world.prompts("test", n_prompts)
    outputs = {name: m.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=0, batch_size=50)
               for name, m in methods.items()}
    out = {"judge": judge.config.to_dict(), "cache": str(judge.cache_path), "n_prompts": len(prompts),
           "reference": "none", "methods": {}}
    for name, texts in outputs.items():
        if name != "none":
            out["methods"][name] = judged_win_rate(judge, prompts, texts, outputs["none"], progress=progress)
    if not any(r["n"] for r in out["methods"].values()):
        raise JudgeError(f"none of the {judge.unparsed} judge replies had a readable verdict ([[A]], [[B]] or "
                         f"[[tie]]), so none was cached and there is no win rate: check that the judge model "
                         f"{judge.config.model!r} follows the instruction (a rerun asks again)")
    out |= {"usage": judge.usage, "estimated_cost_usd": judge.cost, "unparsed": judge.unparsed,
            "cache_unsaved": judge.unsaved, "cache_error": judge.cache_error}
    return out

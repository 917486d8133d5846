"""Side-by-side evaluation of steering methods on the toy world, over sampling seeds.

``compare(world, methods, n_prompts, seeds)`` generates with every method on the same held-out
prompts and seeds, judges them exactly, scores the quiz items, and reports means, standard errors
over seeds and *paired* differences (method minus unsteered, method minus static) with a paired
bootstrap over prompts (:func:`paired_bootstrap`): both methods answer the same prompt with the
same random stream, so much of their noise is shared, and prompts, not the two or three seeds,
are the many independent units an interval can rest on.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from ..method.baselines import CAA, StaticSAE, Unsteered, mean_difference
from ..method.cdmap import CDMap, CDMapConfig
from ..method.dspa import DSPA, fit_cdmap
from .evals import judge_responses, mcq_accuracy
from .protocols import mean_se

__all__ = ["build_methods", "compare", "fit_maps", "paired_bootstrap", "recorded_run", "DEFAULTS"]

# The measured defaults on the toy world (benchmarks/RESULTS.md): gated augment, k=64, alpha=6.
DEFAULTS = {"mode": "augment", "k": 64, "alpha": 6.0, "caa_multiplier": 2.0}
MAX_NEW_TOKENS = 80
METRICS = ("preferred_share", "win_rate", "fluency", "first_segment_share", "later_segments_share",
           "length_cap_rate")


def fit_maps(world, n: int | None = None, config: CDMapConfig | None = None) -> CDMap:
    triples = world.triples("train")[:n] if n else world.triples("train")
    return fit_cdmap(world.model, world.tokenizer, world.sae_in, world.sae_out, triples, config or CDMapConfig.default())


def build_methods(world, names, cdmap: CDMap | None = None, plain: CDMap | None = None, **kw) -> dict[str, object]:
    """Named methods: ``none``, ``static``, ``caa``, ``dspa``, ``dspa-plain``, ``static-plain``, ``dspa-ungated``."""
    p = {**DEFAULTS, **kw}
    cdmap = cdmap if cdmap is not None else fit_maps(world)
    makers: dict[str, Callable[[], object]] = {
        "none": lambda: Unsteered(world.model, world.tokenizer),
        "static": lambda: StaticSAE(world.model, world.tokenizer, world.sae_out, cdmap, p["mode"], p["k"], p["alpha"]),
        "caa": lambda: CAA(world.model, world.tokenizer,
                           mean_difference(world.model, world.tokenizer, world.triples("train"), world.l_out),
                           world.l_out, p["caa_multiplier"]),
        "dspa": lambda: DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, p["mode"], p["k"],
                             p["alpha"]),
        "dspa-ungated": lambda: DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, p["mode"],
                                     p["k"], p["alpha"], gate="none"),
    }
    if plain is not None or any(n.endswith("-plain") for n in names):
        plain = plain if plain is not None else fit_maps(world, config=CDMapConfig.plain())
        makers["dspa-plain"] = lambda: DSPA(world.model, world.tokenizer, world.sae_in, world.sae_out, plain,
                                            p["mode"], p["k"], p["alpha"])
        makers["static-plain"] = lambda: StaticSAE(world.model, world.tokenizer, world.sae_out, plain, p["mode"],
                                                   p["k"], p["alpha"])
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from {', '.join(makers)}")
    return {n: makers[n]() for n in names}


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, paired: bool = True) -> dict:
    """Mean difference of per-response scores ``a - b`` with a bootstrap over prompts.

    Args:
        a, b: scores of two methods, ``(n_seeds, n_prompts)``, response ``[s, i]`` answering prompt
            ``i`` at sampling seed ``s``.
        paired: resample the same prompts for both methods (the paired bootstrap); ``False``
            resamples them independently, as if the two methods had answered different prompts.

    Returns:
        ``{"diff", "se", "ci95"}``: the mean difference, the bootstrap standard error and the 2.5 and
        97.5 percentiles.

    >>> r = paired_bootstrap([[0.5, 0.7, 0.2]], [[0.4, 0.6, 0.1]])
    >>> round(r["diff"], 6), round(r["se"], 6)
    (0.1, 0.0)
    """
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must both be (n_seeds, n_prompts), got {tuple(a.shape)} and {tuple(b.shape)}")
    gen = torch.Generator().manual_seed(seed)
    n = a.shape[1]
    ia = torch.randint(n, (n_boot, n), generator=gen)
    ib = ia if paired else torch.randint(n, (n_boot, n), generator=gen)
    boots = a.mean(0)[ia].mean(1) - b.mean(0)[ib].mean(1)  # (n_boot,)
    lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"diff": float(a.mean() - b.mean()), "se": float(boots.std()), "ci95": (lo, hi)}


def compare(world, methods: dict[str, object], n_prompts: int = 200, seeds=(0, 1, 2), mcq: bool = True,
            progress: bool = True) -> dict:
    """Generate, judge and score every method on the same prompts and seeds (see module docstring)."""
    prompts = world.prompts("test", n_prompts)
    runs: dict[str, list[dict]] = {name: [] for name in methods}
    shares: dict[str, list[list[float]]] = {name: [] for name in methods}  # per seed, per prompt
    for seed in seeds:
        for name, method in methods.items():
            if progress:
                print(f"  seed {seed}: {name}", file=sys.stderr, flush=True)
            responses = method.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=seed,
                                        batch_size=50)
            j = judge_responses(world.judge, prompts, responses)
            shares[name].append([world.judge(p, r).preferred_share for p, r in zip(prompts, responses)])
            j["length_cap_rate"] = sum(len(world.tokenizer(r).input_ids) >= MAX_NEW_TOKENS - 1
                                       for r in responses) / len(responses)
            runs[name].append(j)
    out: dict = {"n_prompts": n_prompts, "seeds": list(seeds), "methods": {}}
    base_picks = None
    for name, method in methods.items():
        res: dict = {"stderr": {}, "per_category": {}}
        for m in METRICS:
            res[m], res["stderr"][m] = mean_se([r[m] for r in runs[name]])
        for cat in runs[name][0]["per_category"]:
            res["per_category"][cat] = {m: mean_se([r["per_category"][cat][m] for r in runs[name]])[0]
                                        for m in ("preferred_share", "win_rate", "fluency")}
        for ref in ("none", "static"):
            if ref in runs and ref != name:
                res[f"vs_{ref}"] = paired_bootstrap(shares[name], shares[ref])
                res[f"vs_{ref}"]["per_category"] = {
                    c: mean_se([a["per_category"][c]["preferred_share"] - b["per_category"][c]["preferred_share"]
                                 for a, b in zip(runs[name], runs[ref])])[0] for c in res["per_category"]}
        if mcq:
            model = getattr(method, "model", world.model)  # a fine-tuned baseline answers with its own weights
            acc = mcq_accuracy(model, world.tokenizer, world.mcq("test"), steer=method.steer)
            res["mcq_accuracy"] = acc["accuracy"]
            base_picks = acc["picks"] if name == "none" else base_picks
            if base_picks is not None:
                res["mcq_changed_items"] = sum(a != b for a, b in zip(acc["picks"], base_picks))
        out["methods"][name] = res
    return out


def recorded_run(name: str, repo_url: str, start: Path | None = None) -> dict:
    """A benchmark's recorded result, ``benchmarks/results/<name>``: from the repository around ``start`` (default:
    the working folder, as when a chapter runs from a clone), else from ``repo_url``'s main branch on GitHub (Colab,
    where the package is installed without the repository)."""
    here = Path.cwd() if start is None else Path(start)
    for folder in (here, *here.parents):
        if (path := folder / "benchmarks" / "results" / name).is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    url = f"{repo_url.replace('github.com', 'raw.githubusercontent.com').rstrip('/')}/main/benchmarks/results/{name}"
    print(f"no benchmarks/results/{name} above {here}: reading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())
    except OSError as e:  # URLError is an OSError
        script = f"benchmarks/{name.removesuffix('.json').removesuffix('_quick')}.py"
        raise FileNotFoundError(f"the recorded run {name} is neither under a folder above {here} nor readable from {url} "
                                f"({e}): clone the repository, or run `python {script}`") from None

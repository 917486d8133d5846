"""Why DSPA's responses run to the length cap, on the toy world with its ground truth, and what the stop guard fixes.

Sections (benchmarks/RESULTS.md and benchmarks/results/<name>.json):
  length_diagnosis (reference world, seed 0 of sampling)
    anatomy    the capped responses: categories, segments, styles
    boundary   P(end of turn) after each segment of DSPA's own responses, unedited, edited and guarded (+ figure)
    modes      P(end of turn) at the boundaries of unsteered responses, per mode and alpha, with the cap rate
    latents    the K_pos latents most often selected, by their effect on log P(end of turn) (gradient lens) and
               by the logit lens of their decoder direction
    exclude    the other fix: leave out of K_pos the latents whose effect is below -tau (a map with their
               columns zeroed), against the stop guard, on the same prompts and sampling seed
  length_worlds (worlds 0-4)
    preferred share, length-cap rate, raw and length-controlled pairwise win rates against unsteered, for every
    method and the stop guard at several thresholds, per position and cumulative

    python benchmarks/length_diagnosis.py                       # both (about 15 minutes on 2 CPU cores)
    python benchmarks/length_diagnosis.py --sections worlds --seeds 0,1,2,3,4
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

from dspa_lite.evaluation.evals import stop_probabilities  # noqa: E402
from dspa_lite.evaluation.experiment import DEFAULTS, MAX_NEW_TOKENS, build_methods, compare, fit_maps  # noqa: E402
from dspa_lite.method.dspa import DSPA  # noqa: E402
from dspa_lite.method.hooks import edit  # noqa: E402
from dspa_lite.method.stopguard import StopGuard, fit_stop_probe  # noqa: E402
from dspa_lite.toyworld import language as L  # noqa: E402
from dspa_lite.toyworld.report import style_latents  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.7)
CUMULATIVE = (0.8, 0.9, 0.95)  # StopGuard(cumulative=True): off once P(ended by now) exceeds it
ALPHAS = (3.0, 6.0, 10.0)


def capped(tok, r: str) -> bool:
    return len(tok(r).input_ids) >= MAX_NEW_TOKENS - 1  # as experiment.compare counts it


def generate(method, prompts, seed=0):
    return method.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=seed, batch_size=50)


def anatomy(W, prompts, none_rs, dspa_rs) -> tuple[dict, list[str]]:
    out = {}
    for name, rs in (("none", none_rs), ("dspa", dspa_rs)):
        v = [W.judge(p, r) for p, r in zip(prompts, rs)]
        cap = [i for i, r in enumerate(rs) if capped(W.tokenizer, r)]
        tail = Counter(s == v[i].preferred for i in cap for s in v[i].styles[-6:])
        out[name] = {"cap_rate": len(cap) / len(rs), "segments": sum(len(x.styles) for x in v) / len(v),
                     "capped_segments": sum(len(v[i].styles) for i in cap) / max(1, len(cap)),
                     "capped_by_category": dict(Counter(W.judge.category(prompts[i]) for i in cap)),
                     "capped_last6_preferred": tail[True] / max(1, sum(tail.values())),
                     "example": rs[cap[0]] if cap else ""}
    lines = ["| | cap rate | segments per response | segments per capped response | capped, by category | "
             "preferred share of a capped response's last 6 segments |", "|---|---|---|---|---|---|"]
    for name, a in out.items():
        lines.append(f"| {name} | {100 * a['cap_rate']:.1f} | {a['segments']:.1f} | {a['capped_segments']:.1f} | "
                     f"{a['capped_by_category']} | {100 * a['capped_last6_preferred']:.0f} |")
    lines += ["", f"A capped DSPA response ends: `... {out['dspa']['example'][-120:]}`"]
    return out, lines


def by_boundary(W, prompts, rs, steer=None) -> dict[int, list[float]]:
    """P(end of turn) after the k-th segment terminator of each response (k capped at 16)."""
    term = {W.tokenizer.convert_tokens_to_ids(t) for t in L.TERMINATORS}
    out: dict[int, list[float]] = defaultdict(list)
    for ids, p in stop_probabilities(W.model, W.tokenizer, prompts, rs, steer, batch_size=50):
        k = 0
        for t, tid in enumerate(ids):
            if tid in term:
                k += 1
                out[min(k, 16)].append(float(p[t]))
    return out


def boundary(W, prompts, dspa_rs, dspa, guard) -> tuple[dict, list[str]]:
    runs = {"unedited": by_boundary(W, prompts, dspa_rs), "DSPA edit": by_boundary(W, prompts, dspa_rs, dspa.steer),
            "DSPA edit + stop guard": by_boundary(W, prompts, dspa_rs, guard.steer)}
    ks = sorted(runs["unedited"])
    data = {name: {k: sum(v[k]) / len(v[k]) for k in ks} for name, v in runs.items()}
    lines = ["| after segment | responses | " + " | ".join(data) + " |", "|---" * (2 + len(data)) + "|"]
    lines += [f"| {k}{'+' if k == 16 else ''} | {len(runs['unedited'][k])} | "
              + " | ".join(f"{d[k]:.3f}" for d in data.values()) + " |" for k in ks]
    return data, lines


def figure(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, d in data.items():
        ax.plot(list(d), list(d.values()), marker="o", label=name)
    ax.set(xlabel="segment boundary (k-th '.' or '!' of the response; 16 = 16 or later)",
           ylabel="P(end of turn)", title="DSPA's responses, teacher-forced: where the model would stop")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def modes(W, cdmap, prompts, none_rs) -> tuple[dict, list[str]]:
    out, term = {}, {W.tokenizer.convert_tokens_to_ids(t) for t in L.TERMINATORS}
    base = stop_probabilities(W.model, W.tokenizer, prompts, none_rs, batch_size=50)
    rows = [("unsteered", None, None)] + [(m, a, None) for m in ("ablate", "augment", "both") for a in ALPHAS]
    for mode, alpha, _ in rows:
        m = None if mode == "unsteered" else DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, mode,
                                                  DEFAULTS["k"], alpha)
        res = base if m is None else stop_probabilities(W.model, W.tokenizer, prompts, none_rs, m.steer, batch_size=50)
        final, inner = [], []  # the last boundary of an unsteered response is where it stopped
        for ids, p in res:
            bs = [t for t, tid in enumerate(ids) if tid in term]
            final += [float(p[t]) for t in bs[-1:]]
            inner += [float(p[t]) for t in bs[:-1]]
        rs = none_rs if m is None else generate(m, prompts)
        out[f"{mode} {alpha or ''}".strip()] = {"final": sum(final) / len(final), "inner": sum(inner) / len(inner),
                                               "cap_rate": sum(capped(W.tokenizer, r) for r in rs) / len(rs)}
    lines = ["| edit (k=64) | P(eot) where the unsteered model stopped | P(eot) at its other boundaries | "
             "cap rate when generating |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['final']:.3f} | {r['inner']:.3f} | {100 * r['cap_rate']:.1f} |" for n, r in out.items()]
    return out, lines


def eot_gradient(W, triples, late: int = 7):
    """d log P(eot) / d h at l_out, summed over positions, averaged over boundaries from the ``late``-th on."""
    from dspa_lite.method.features import batches
    from dspa_lite.method.stopguard import stop_texts

    tok, eot = W.tokenizer, W.tokenizer.eos_token_id
    term = {tok.convert_tokens_to_ids(t) for t in L.TERMINATORS}
    rows = [tok(x, add_special_tokens=False).input_ids for x in stop_texts(tok, triples)]
    g, n = torch.zeros(W.model.config.hidden_size), 0
    for b, ids, mask in batches(rows, 32, tok.pad_token_id, W.model.device):
        box = {}
        with torch.enable_grad(), edit(W.model, W.l_out, lambda h, box=box: box.setdefault("h", h.detach().requires_grad_())):
            lp = W.model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)[..., eot]
            sel = torch.zeros_like(lp, dtype=torch.bool)
            for j, row in enumerate(rows[b:b + 32]):
                ts = [t for t in range(len(row) - 1) if row[t] in term]
                sel[j, ts[late - 1:]] = True
            lp[sel].sum().backward()
        g += box["h"].grad.sum((0, 1))
        n += int(sel.sum())
    return g / n


def latents(W, cdmap, prompts) -> tuple[dict, list[str]]:
    g = eot_gradient(W, W.triples("train")[:200])
    Wd = W.sae_out.W_dec.detach().float()
    effect = (Wd @ g) * cdmap.latent_mean * DEFAULTS["alpha"]  # an amplified latent's pull on log P(eot)
    U = W.model.lm_head.weight.float()
    lens = (Wd * (1 + W.model.model.norm.weight.float())) @ (U[W.tokenizer.eos_token_id] - U.mean(0))
    dspa = DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, DEFAULTS["mode"], DEFAULTS["k"], DEFAULTS["alpha"])
    kp = dspa.scores(prompts)["K_pos"]
    counts = Counter(kp[kp >= 0].tolist())
    label = {k: s for s, ks in style_latents(W).items() for k in ks}
    chosen = torch.tensor(sorted(counts))
    share_down = float((effect[chosen] < 0).float().mean())
    top = sorted(counts, key=lambda k: float(effect[k]))[:10]
    out = {"effect_all_mean": float(effect.mean()), "effect_K_pos_mean": float(effect[chosen].mean()),
           "K_pos_share_lowering": share_down, "corr_lens_gradient": float(torch.corrcoef(torch.stack([lens, Wd @ g]))[0, 1]),
           "top": [{"latent": k, "style": label.get(k, "other"), "selected_share": counts[k] / len(prompts),
                    "effect": float(effect[k]), "logit_lens": float(lens[k])} for k in top]}
    lines = [f"Mean effect on log P(eot) of amplifying a latent (gradient lens x mean activation x alpha): all "
             f"latents {out['effect_all_mean']:+.4f}, the K_pos latents DSPA selects {out['effect_K_pos_mean']:+.4f}; "
             f"{100 * share_down:.0f}% of the selected K_pos latents lower it. Correlation of the logit lens with the "
             f"gradient lens over all latents: {out['corr_lens_gradient']:.2f}.", "",
             "| latent | style | share of prompts selecting it | effect on log P(eot) | logit lens (eot - mean logit) |",
             "|---|---|---|---|---|"]
    lines += [f"| {t['latent']} | {t['style']} | {100 * t['selected_share']:.0f}% | {t['effect']:+.3f} | "
              f"{t['logit_lens']:+.3f} |" for t in out["top"]]
    return out, lines, effect, lens


def exclude(W, cdmap, prompts, effect, lens, guard, none_rs, dspa_rs) -> tuple[dict, list[str]]:
    """Preferred share and cap rate with K_pos kept clear of the latents that lower P(eot) most."""
    import dataclasses

    def score(rs):
        return {"share": sum(W.judge(p, r).preferred_share for p, r in zip(prompts, rs)) / len(rs),
                "cap": sum(capped(W.tokenizer, r) for r in rs) / len(rs)}

    out = {"unsteered": score(none_rs), "DSPA": score(dspa_rs)}
    rules = [(f"exclude effect < {-t:g}" if t else "exclude effect < 0", effect < -t) for t in (0.05, 0.02, 0.01, 0.0)]
    rules.append(("exclude logit lens < -1 sd", lens < -lens.std()))
    for name, mask in rules:
        A = cdmap.A.clone()
        A[:, mask] = 0
        m = DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, dataclasses.replace(cdmap, A=A), DEFAULTS["mode"],
                 DEFAULTS["k"], DEFAULTS["alpha"])
        out[f"{name} ({int(mask.sum())} latents)"] = score(generate(m, prompts))
    out["stop guard 0.5"] = score(generate(guard, prompts))
    gain = out["DSPA"]["share"] - out["unsteered"]["share"]
    lines = ["| method | preferred share | gain kept | length cap |", "|---|---|---|---|"]
    lines += [f"| {n} | {100 * r['share']:.1f} | {100 * (r['share'] - out['unsteered']['share']) / gain:.0f}% | "
              f"{100 * r['cap']:.1f} |" for n, r in out.items()]
    return out, lines


def diagnosis(args) -> None:
    from dspa_lite import toyworld

    t0 = time.perf_counter()
    W = toyworld.load()
    cdmap, prompts = fit_maps(W), W.prompts("test", args.n)
    dspa = DSPA(W.model, W.tokenizer, W.sae_in, W.sae_out, cdmap, DEFAULTS["mode"], DEFAULTS["k"], DEFAULTS["alpha"])
    guard = StopGuard(dspa, fit_stop_probe(W.model, W.tokenizer, W.triples("train"), W.l_out), 0.5)
    none_rs, dspa_rs = generate(build_methods(W, ["none"], cdmap)["none"], prompts), generate(dspa, prompts)
    data: dict = {"world_seed": W.seed, "n_prompts": args.n, "defaults": DEFAULTS}
    md = [_report.header("Toy world: why DSPA's responses run to the length cap"),
          f"Reference world (seed {W.seed}), {args.n} held-out prompts, sampling seed 0, DSPA at the defaults "
          f"{DEFAULTS}, at most {MAX_NEW_TOKENS} new tokens. P(eot) is the probability of the end-of-turn token, "
          "teacher-forced (evaluation.evals.stop_probabilities).\n"]
    data["anatomy"], lines = anatomy(W, prompts, none_rs, dspa_rs)
    md += ["### Where capped responses go wrong", *lines, ""]
    data["boundary"], lines = boundary(W, prompts, dspa_rs, dspa, guard)
    figure(data["boundary"], Path(__file__).resolve().parent / "results" / "length_diagnosis.png")
    md += ["### P(eot) after each segment of DSPA's own responses", *lines, "",
           "![P(eot) by segment boundary](results/length_diagnosis.png)", ""]
    data["modes"], lines = modes(W, cdmap, prompts, none_rs)
    md += ["### P(eot) on unsteered responses, per mode and alpha", *lines, ""]
    data["latents"], lines, effect, lens = latents(W, cdmap, prompts)
    md += ["### Which latents lower P(eot)", *lines, ""]
    data["exclude"], lines = exclude(W, cdmap, prompts, effect, lens, guard, none_rs, dspa_rs)
    md += ["### Two fixes: leave the eot-lowering latents out of K_pos, or guard the positions where the model "
           "stops", *lines, ""]
    data["seconds"] = time.perf_counter() - t0
    md.append(f"Run time: {data['seconds'] / 60:.1f} min.")
    _report.publish("length_diagnosis", md, data, args.json)


def one_world(seed: int, n: int, seeds) -> dict:
    from dspa_lite import toyworld

    os.environ["DSPA_TOY_SEED"] = str(seed)
    W = toyworld.load()
    cdmap = fit_maps(W)
    methods = build_methods(W, ["none", "static", "caa", "dspa"], cdmap)
    probe = fit_stop_probe(W.model, W.tokenizer, W.triples("train"), W.l_out)
    for th in THRESHOLDS:
        methods[f"dspa + stop guard {th:g}"] = StopGuard(methods["dspa"], probe, th)
    for th in CUMULATIVE:
        methods[f"dspa + cumulative guard {th:g}"] = StopGuard(methods["dspa"], probe, th, cumulative=True)
    res = compare(W, methods, n_prompts=n, seeds=seeds, mcq=False, progress=False)["methods"]
    gain = res["dspa"]["preferred_share"] - res["none"]["preferred_share"]
    return {name: {"share": r["preferred_share"], "cap": r["length_cap_rate"], "fluency": r["fluency"],
                   "gain_kept": (r["preferred_share"] - res["none"]["preferred_share"]) / gain if gain else float("nan"),
                   **({k: r["pairwise_vs_none"][k] for k in ("win_rate", "lc_win_rate", "length_coef")}
                      if "pairwise_vs_none" in r else {})} for name, r in res.items()}


def worlds(args) -> None:
    t0, seeds = time.perf_counter(), tuple(range(args.sampling_seeds))
    data: dict = {"n_prompts": args.n, "sampling_seeds": list(seeds), "worlds": {}}
    for s in [int(x) for x in args.seeds.split(",")]:
        data["worlds"][s] = one_world(s, args.n, seeds)
        print(f"world {s} done at {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr, flush=True)
    lines = ["| world | method | preferred share | length cap | gain kept | fluency | pairwise win rate vs unsteered "
             "| length-controlled | length coef. |", "|---|---|---|---|---|---|---|---|---|"]
    for s, rows in data["worlds"].items():
        for name, r in rows.items():
            pw = (f"{100 * r['win_rate']:.1f} | {100 * r['lc_win_rate']:.1f} | {r['length_coef']:+.2f}"
                  if "win_rate" in r else " | | ")
            lines.append(f"| {s} | {name} | {100 * r['share']:.1f} | {100 * r['cap']:.1f} | "
                         f"{100 * r['gain_kept']:.0f}% | {100 * r['fluency']:.1f} | {pw} |")
    lines += ["", "The goal, per guard: length-cap rate within 1 point of unsteered with at least 90% of DSPA's "
              "gain kept. Stop guard t: no edit where the probe's P(eot) > t; cumulative guard t: no edit for the rest "
              "of a response once the probability that the model would have ended it by now exceeds t.", "",
              "| guard | worlds meeting both | cap minus unsteered (points), per world | "
              "gain kept, per world |", "|---|---|---|---|"]
    for guard in [f"stop guard {t:g}" for t in THRESHOLDS] + [f"cumulative guard {t:g}" for t in CUMULATIVE]:
        rows = [(r[f"dspa + {guard}"], r["none"]) for r in data["worlds"].values()]
        met = sum(g["cap"] - n["cap"] <= 0.01 and g["gain_kept"] >= 0.9 for g, n in rows)
        lines.append(f"| {guard} | {met} of {len(rows)} | " + ", ".join(f"{100 * (g['cap'] - n['cap']):+.1f}" for g, n in rows)
                     + " | " + ", ".join(f"{100 * g['gain_kept']:.0f}%" for g, _ in rows) + " |")
    data["seconds"] = time.perf_counter() - t0
    md = [_report.header("Toy worlds: the stop guard, and raw vs length-controlled win rates"),
          f"Worlds {args.seeds} (`DSPA_TOY_SEED`), {args.n} held-out prompts x sampling seeds {list(seeds)}, "
          f"defaults {DEFAULTS}. Gain kept: (share - unsteered) / (DSPA's share - unsteered). Pairwise: each "
          "response against the unsteered answer to the same prompt and seed by the exact judge (a win if its "
          "preferred share is higher, half on a tie); length-controlled: the win rate at zero length difference "
          "(evaluation.protocols.length_controlled; the coefficient is on tanh of the standardised word-count "
          "difference).\n", *lines, "", f"Run time: {data['seconds'] / 60:.1f} min."]
    _report.publish("length_worlds", md, data, args.json)


def main() -> None:
    def extra(ap):
        ap.add_argument("--sections", default="diagnosis,worlds")
        ap.add_argument("--seeds", default="0,1,2,3,4", help="worlds for the worlds section")
        ap.add_argument("--sampling-seeds", type=int, default=2)
        ap.add_argument("--n", type=int, default=200, help="held-out prompts")

    args = _report.parse_args(__doc__, "unused (size with --n and --sampling-seeds)", extra=extra)
    if "diagnosis" in args.sections:
        diagnosis(args)
    if "worlds" in args.sections:
        worlds(args)


if __name__ == "__main__":
    main()

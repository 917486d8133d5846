"""Decoding overhead of steering: wall time per generated token and per decoding step, steered vs unsteered.

Each method (unsteered, DSPA, static SAE, CAA, and the ``steering-vectors`` peer where ``import steering_vectors``
works: transformers < 5, benchmarks/requirements-peer.txt, section ``decode_overhead_peer``) generates through its
``.generate`` with the same prompts, seed and batch and exactly ``n`` new tokens (``min_new_tokens = n``). Timing:
``torch.utils.benchmark.Timer.blocked_autorange(min_run_time=0)`` (a warm-up call, then one timed call) per method,
repeat and length (``n`` new tokens and 1), the methods rotated each repeat; a decoding step is
``(T(n) - T(1)) / (n - 1)``; ratios are medians of per-repeat ratios to unsteered. Parts: one ``torch.profiler`` call
per method, read by the ``record_function`` labels in ``dspa_lite.method`` (``LABELS``). Models: ``toy`` (the shipped
world, methods at ``experiment.DEFAULTS``) and ``gemma`` (random fp32 weights in google/gemma-2-2b's shape, random
16k JumpReLU SAEs at layers 12/20, a synthetic random map: speed only; about 12 GB of RAM).

    OMP_NUM_THREADS=1 python benchmarks/decode_overhead.py [--quick] [--models toy gemma] [--json]
"""

from __future__ import annotations

import copy
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

from dspa_lite.evaluation import flops  # noqa: E402
from dspa_lite.evaluation.experiment import DEFAULTS  # noqa: E402
from dspa_lite.method.baselines import CAA, StaticSAE, Unsteered, mean_difference  # noqa: E402
from dspa_lite.method.cdmap import CDMap, CDMapConfig  # noqa: E402
from dspa_lite.method.dspa import DSPA  # noqa: E402
from dspa_lite.method.generation import format_prompts  # noqa: E402
from dspa_lite.method.saes import model_id, sae_id  # noqa: E402

FULL = {"toy": dict(batch=8, new_tokens=64, repeats=15), "gemma": dict(batch=1, new_tokens=16, repeats=5)}
QUICK = {"toy": dict(batch=8, new_tokens=32, repeats=5), "gemma": dict(batch=1, new_tokens=8, repeats=3)}
GEMMA_LAYERS = (12, 20)  # dspa_lite.loading.profiles' gemma-2-2b l_in, l_out
LABELS = {"hooks.edit": "edit hook", "dspa.LatentEdit": "LatentEdit", "dspa.LatentEdit.encode": "SAE encode in the edit",
          "dspa.prompt_features": "prompt pass u(x)", "dspa.map_lookup": "map lookup + K selection"}
log = functools.partial(print, file=sys.stderr, flush=True)


def gemma2_2b_config(**overrides):
    """A ``Gemma2Config`` with google/gemma-2-2b's config.json values (eager attention unless overridden)."""
    from transformers import Gemma2Config

    values = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                  max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False,
                  attention_dropout=0.0, query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                  attn_logit_softcapping=50.0, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                  tie_word_embeddings=True, attn_implementation="eager")
    return Gemma2Config(**{**values, **overrides})


class SteeringVectorsPeer(CAA):
    """CAA's vector added at every position by the ``steering-vectors`` library (``SteeringVector.apply``)."""

    def __init__(self, model, tokenizer, vector, layer: int, multiplier: float):
        from steering_vectors import SteeringVector

        super().__init__(model, tokenizer, vector, layer, multiplier)
        self.sv = SteeringVector({layer: vector}, "decoder_block")

    def steer(self, prompts, input_ids=None, attention_mask=None, start=None):
        return self.sv.apply(self.model, multiplier=self.multiplier, min_token_index=0)


def peer_version() -> str | None:
    try:
        import steering_vectors  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import version

    return version("steering-vectors")


def time_interleaved(methods: dict, prompts, n: int, repeats: int, label: str) -> dict:
    """``{(method, tokens): [Measurement per repeat]}`` for ``n`` new tokens and for 1, the methods rotated per repeat."""
    timers = {(name, k): benchmark.Timer(
        "m.generate(p, max_new_tokens=k, temperature=1.0, seed=0, batch_size=len(p))",
        setup="m.model.generation_config.min_new_tokens = k",  # no early stop: exactly k new tokens
        globals={"m": m, "p": prompts, "k": k}, label=label, sub_label=name, description=f"new tokens={k}",
        num_threads=torch.get_num_threads()) for name, m in methods.items() for k in (n, 1)}
    runs, names = defaultdict(list), list(methods)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for k in (n, 1):
                runs[name, k].append(timers[name, k].blocked_autorange(min_run_time=0))
        log(f"  {label} repeat {r + 1}/{repeats}: " + ", ".join(f"{x} {runs[x, n][-1].median:.3f} s" for x in names))
    return runs


def ratios(runs: dict, name: str, n: int, batch: int) -> dict:
    """One method's medians (ms) and per-repeat ratios to unsteered (median and range)."""
    def walls(x, k):
        return [m.median for m in runs[x, k]]

    def steps(x):
        return [(a - b) / (n - 1) for a, b in zip(walls(x, n), walls(x, 1))]

    r_e2e = [a / b for a, b in zip(walls(name, n), walls("none", n))]
    r_step = [a / b for a, b in zip(steps(name), steps("none"))]
    return {"ms_per_token": 1e3 * statistics.median(walls(name, n)) / (batch * n),
            "ms_per_step": 1e3 * statistics.median(steps(name)), "first_token_ms": 1e3 * statistics.median(walls(name, 1)),
            "ratio_e2e": statistics.median(r_e2e), "ratio_e2e_range": [min(r_e2e), max(r_e2e)],
            "ratio_step": statistics.median(r_step), "ratio_step_range": [min(r_step), max(r_step)],
            "raw_s": {str(k): walls(name, k) for k in (n, 1)}}


def profile_call(method, prompts, n: int) -> tuple[dict, list[str]]:
    """One profiled ``generate`` call: calls, total and median ms per call of each label in ``LABELS``; the texts."""
    method.model.generation_config.min_new_tokens = n
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = method.generate(prompts, max_new_tokens=n, temperature=1.0, seed=0, batch_size=len(prompts))
    durations = defaultdict(list)
    for e in prof.events():
        if e.name in LABELS:
            durations[e.name].append(e.cpu_time_total / 1e3)
    return {e.key: {"calls": e.count, "total_ms": e.cpu_time_total / 1e3, "median_ms": statistics.median(durations[e.key])}
            for e in prof.key_averages() if e.key in LABELS}, out


def measure(methods: dict, prompts, s: dict, l_in: int, label: str, title: str) -> dict:
    """Timed (interleaved) and profiled calls of every method (``methods`` starts with ``"none"``), and the analytic
    FLOP share of each edit in a decoding step at mid-generation (``flops.decode_overhead``)."""
    n, model, tok = s["new_tokens"], methods["none"].model, methods["none"].tokenizer
    old = model.generation_config.min_new_tokens
    try:
        runs = time_interleaved(methods, prompts, n, s["repeats"], label)
        profiled = {name: profile_call(m, prompts, n) for name, m in methods.items() if name != "none"}
    finally:
        model.generation_config.min_new_tokens = old
    compare = benchmark.Compare([m for ms in runs.values() for m in ms])
    log(str(compare))
    res = {name: ratios(runs, name, n, len(prompts)) for name in methods}
    plen = max(len(tok(t, add_special_tokens=False).input_ids) for t in format_prompts(tok, prompts))
    for name, (parts, _) in profiled.items():
        res[name]["parts"] = parts
        if name != "steering-vectors" and parts["hooks.edit"]["calls"] != n:
            raise RuntimeError(f"{name}: {parts['hooks.edit']['calls']} edit-hook calls for {n} new tokens")
        res[name]["hook_share_of_step"] = parts.get("hooks.edit", {}).get("median_ms", 0.0) / res["none"]["ms_per_step"]
        if name in ("dspa", "static", "caa"):
            res[name]["analytic_share"] = flops.decode_overhead(
                flops.ModelShape.from_config(model.config), methods["dspa"].sae_out.cfg.d_sae, name,
                context_len=plen + n // 2, prompt_len=plen, l_in=l_in)["ratio"]
    if "steering-vectors" in profiled:
        res["steering-vectors"]["same_text_as_caa"] = profiled["steering-vectors"][1] == profiled["caa"][1]
    return {**s, "title": title, "compare": str(compare), "results": res}


def steerers(model, tokenizer, sae_in, sae_out, cdmap, vector, layer: int, peer: bool) -> dict:
    p = DEFAULTS
    methods = {"none": Unsteered(model, tokenizer),
               "dspa": DSPA(model, tokenizer, sae_in, sae_out, cdmap, p["mode"], p["k"], p["alpha"]),
               "static": StaticSAE(model, tokenizer, sae_out, cdmap, p["mode"], p["k"], p["alpha"]),
               "caa": CAA(model, tokenizer, vector, layer, p["caa_multiplier"])}
    if peer:
        methods["steering-vectors"] = SteeringVectorsPeer(model, tokenizer, vector, layer, p["caa_multiplier"])
    return methods


def run_toy(world, cdmap, s: dict, peer: bool = False, triples: int | None = None) -> dict:
    """The shipped toy world's model and SAEs, ``cdmap``, CAA's mean-difference vector over the first ``triples``
    training triples (all: as ``experiment.build_methods``)."""
    vector = mean_difference(world.model, world.tokenizer, world.triples("train")[:triples], world.l_out)
    methods = steerers(world.model, world.tokenizer, world.sae_in, world.sae_out, cdmap, vector, world.l_out, peer)
    params = sum(p.numel() for p in world.model.parameters())
    return measure(methods, world.prompts("test", 200)[:s["batch"]], s, world.l_in, "toy",
                   f"Toy world model ({params / 1e6:.2f}M parameters, SAEs of width {world.sae_out.cfg.d_sae} at "
                   f"layers {world.l_in}/{world.l_out})")


def random_jumprelu(layer: int, folder: Path, resid: torch.Tensor, l0: float, seed: int):
    """A random 16k JumpReLU SAE with Gemma Scope's cfg, saved and loaded back in sae-lens layout: unit-norm decoder
    rows, ``W_enc = W_dec^T``, one threshold so that about ``l0`` latents fire per token of ``resid``."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf, handle_config_defaulting

    from dspa_lite.loading.sae import load_from_disk

    cfg = handle_config_defaulting(get_gemma_2_config_from_hf(
        "google/gemma-scope-2b-pt-res", f"layer_{layer}/width_16k/average_l0_82", "cpu"))
    sae = JumpReLUSAE(JumpReLUSAEConfig.from_dict(cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W = torch.randn(sae.cfg.d_sae, sae.cfg.d_in, generator=g)
        W /= W.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        pre = resid.reshape(-1, resid.shape[-1]).float() @ W.T
        sae.threshold.fill_(float(torch.quantile(pre.flatten()[:2**24], 1 - l0 / sae.cfg.d_sae)))
    sae.save_model(str(folder))
    return load_from_disk(folder)


def random_model(cfg, seed: int = 0, std: float = 0.02):
    """``Gemma2ForCausalLM(cfg)`` with random weights, fast: built on the meta device, every matrix tiled from one block
    of uniform noise of std ``std``, norm weights 0 (Gemma scales by ``1 + w``), buffers from a one-layer model."""
    from transformers import Gemma2ForCausalLM

    with torch.device("meta"):
        model = Gemma2ForCausalLM(cfg)
    model = model.to_empty(device="cpu").eval()
    model.tie_weights()  # to_empty gives the tied LM head its own storage
    a = std * 3 ** 0.5
    pool = torch.empty(2**24 + 7).uniform_(-a, a, generator=torch.Generator().manual_seed(seed))  # drawing 2.6B is slow
    with torch.no_grad():
        for p in model.parameters():
            p.requires_grad_(False)
            flat = p.view(-1)
            if p.ndim < 2:
                flat.zero_()
                continue
            for i in range(0, flat.numel(), pool.numel()):
                n = min(pool.numel(), flat.numel() - i)
                flat[i:i + n].copy_(pool[:n])
        small = copy.deepcopy(cfg)
        small.num_hidden_layers, small.vocab_size, small.intermediate_size = 1, 16, 16
        ref = dict(Gemma2ForCausalLM(small).named_buffers())
        for name, buf in model.named_buffers():
            buf.copy_(ref[name])  # a KeyError here: a per-layer buffer this shortcut does not know
    return model


def run_gemma(tokenizer, prompts, s: dict, peer: bool) -> dict:
    """Random-weight Gemma-2-2B-shape model, random 16k JumpReLU SAEs, a synthetic CDMap (random ``A``)."""
    from dspa_lite.method.hooks import forward_until

    (l_in, l_out), cfg = GEMMA_LAYERS, gemma2_2b_config()
    model = random_model(cfg, seed=0)
    model.config.name_or_path = "random-weights/gemma-2-2b-shape"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    acts = forward_until(model, [l_in, l_out], enc["input_ids"], enc["attention_mask"])
    with tempfile.TemporaryDirectory(prefix="dspa-gemma-shape-") as tmp:
        sae_in = random_jumprelu(l_in, Path(tmp) / "sae_in", acts[l_in], 82, seed=1)
        sae_out = random_jumprelu(l_out, Path(tmp) / "sae_out", acts[l_out], 82, seed=2)
    m_in, m, g = sae_in.cfg.d_sae, sae_out.cfg.d_sae, torch.Generator().manual_seed(3)
    meta = dict(model_id=model_id(model), sae_in_id=sae_id(sae_in), sae_out_id=sae_id(sae_out), l_in=l_in,
                l_out=l_out, d_model=cfg.hidden_size, d_sae_in=m_in, d_sae_out=m, synthetic=True)
    cdmap = CDMap(torch.randn(m_in, m, generator=g), torch.randn(m, generator=g), torch.rand(m, generator=g) + 0.1,
                  torch.rand(m, generator=g), CDMapConfig.default(), meta)
    vector = torch.randn(cfg.hidden_size, generator=g)
    vector *= 0.1 * float(acts.pop(l_out).norm(dim=-1).mean()) / vector.norm()  # a tenth of the residual norm
    methods = steerers(model, tokenizer, sae_in, sae_out, cdmap, vector, l_out, peer)
    params = sum(x.numel() for x in model.parameters())
    return measure(methods, prompts, s, l_in, "gemma", f"Random weights in google/gemma-2-2b's shape ({params / 1e9:.2f}B "
                   f"parameters, fp32, eager attention), random 16k JumpReLU SAEs at layers {l_in}/{l_out}, a "
                   "synthetic random map")


def table(d: dict) -> list[str]:
    def num(x: float) -> str:
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"

    head = ["method", "ms / generated token", "ratio (range)", "ms / decoding step", "ratio (range)", "first token, ms",
            *(f"{v}, ms" for v in LABELS.values()), "edit hook / unsteered step", "analytic FLOP share"]
    lines = [f"### {d['title']}: batch {d['batch']}, {d['new_tokens']} new tokens, {d['repeats']} repeats", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in d["results"].items():
        (e0, e1), (s0, s1), parts = r["ratio_e2e_range"], r["ratio_step_range"], r.get("parts", {})
        cells = [name, num(r["ms_per_token"]), f"{r['ratio_e2e']:.3f} ({e0:.2f}-{e1:.2f})", num(r["ms_per_step"]),
                 f"{r['ratio_step']:.3f} ({s0:.2f}-{s1:.2f})", num(r["first_token_ms"]),
                 *(num(parts[k]["median_ms"]) if k in parts else "" for k in LABELS),
                 f"{100 * r['hook_share_of_step']:.2f}%" if "hooks.edit" in parts else "",
                 f"{100 * r['analytic_share']:.2f}%" if "analytic_share" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if "same_text_as_caa" in d["results"].get("steering-vectors", {}):
        lines += ["", f"steering-vectors text identical to CAA's: {d['results']['steering-vectors']['same_text_as_caa']}"]
    return lines + [""]


def main() -> None:
    args = _report.parse_args(__doc__, "fewer repeats and tokens", extra=lambda ap: ap.add_argument(
        "--models", nargs="+", choices=("toy", "gemma"), default=["toy", "gemma"], help="which models (default both)"))
    import transformers

    from dspa_lite import toyworld
    from dspa_lite.evaluation.experiment import fit_maps

    t0, sizes, sv, world = time.perf_counter(), QUICK if args.quick else FULL, peer_version(), toyworld.load()
    data = {"settings": {m: sizes[m] for m in args.models}, "steering": DEFAULTS, "threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "steering_vectors": sv, "labels": LABELS, "models": {}}
    if "toy" in args.models:
        data["models"]["toy"] = run_toy(world, fit_maps(world), sizes["toy"], bool(sv))
    if "gemma" in args.models:
        prompts = world.prompts("test", 200)[:sizes["gemma"]["batch"]]
        data["models"]["gemma"] = run_gemma(world.tokenizer, prompts, sizes["gemma"], bool(sv))
    data["seconds"] = time.perf_counter() - t0
    md = [_report.header("Decoding overhead of steering" + (" (peer environment)" if sv else "")
                         + (" (quick)" if args.quick else "")),
          f"transformers {transformers.__version__}, torch threads {data['threads']}, steering-vectors "
          f"{sv or 'not importable (peer skipped)'}; steering at {DEFAULTS}; run time {data['seconds'] / 60:.1f} min. "
          "Times: medians over repeats; ratios: median (range) of per-repeat ratios to unsteered; parts: median ms "
          "per call in one profiled call (torch.profiler, `record_function` labels).", ""]
    for d in data["models"].values():
        md += table(d)
    _report.publish("decode_overhead" + ("_peer" if sv else "") + ("_quick" if args.quick else ""), md, data, args.json)


if __name__ == "__main__":
    main()

"""The memory model (dspa_lite.loading.memory) against one CUDA GPU: each part it models, measured.

Random weights in a profile's shape (no download: the config is built from the profile's fields), in the dtype
``memory.plan`` picks for this GPU, with random SAEs of the profile's width and a map of the modelled size. Measured
with ``torch.cuda.max_memory_allocated`` above what is resident:

- **resident**: the weights, both SAEs and the map (the model's ``weights + two SAEs + map``);
- **generation**: ``generate`` of the plan's batch of ``prompt_tokens`` random ids with exactly ``new_tokens`` new
  tokens, then the output SAE's codes of every prompt position (as static steering encodes them), one after the
  other: the model's ``stage: generation`` is their sum, so the measured peak is the larger of the two;
- **fitting**: ``forward_until(l_out)`` over the plan's fitting batch of ``fit_tokens``, then one row's codes;
- **lm-eval**: a forward pass over the plan's lm-eval batch of ``lm_eval_tokens`` and a ``log_softmax``.

Writes ``--out`` (JSON: modelled and measured bytes per part, the ratio, the GPU) and prints a table. Sized for
well under 5 minutes on an A100/H100/H200-class GPU for ``gemma-2-2b-it`` (``--profile qwen3-8b`` or
``gemma-2-9b`` need a 40 GB card by the model itself). ``--tiny --device cpu`` runs a small shape on the CPU (the test
of this script: measured figures are then ``null``).

    python benchmarks/memory_check.py --out $OUT/memory_check.json          # on the GPU machine
    python benchmarks/memory_check.py --tiny --device cpu --out /tmp/m.json # the CPU test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from dspa_lite.loading import memory
from dspa_lite.loading.profiles import get_profile
from dspa_lite.method.hooks import forward_until

TINY = dict(n_layers=4, d_model=64, d_mlp=128, n_heads=2, n_kv_heads=1, head_dim=32, vocab_size=512, d_sae=256,
            l_in=1, l_out=2)
TINY_WORK = memory.Workload(gen_batch=2, prompt_tokens=16, new_tokens=4, fit_batch=2, fit_tokens=24, lm_eval_batch=2,
                            lm_eval_tokens=16)


def model_config(p):
    """A transformers config with the profile's shape (Gemma-2 or Qwen3, by the model id)."""
    from transformers import Gemma2Config, Qwen3Config

    shape = dict(vocab_size=p.vocab_size, hidden_size=p.d_model, intermediate_size=p.d_mlp, num_hidden_layers=p.n_layers,
                 num_attention_heads=p.n_heads, num_key_value_heads=p.n_kv_heads, head_dim=p.head_dim,
                 tie_word_embeddings=p.tied_embeddings, eos_token_id=1, pad_token_id=0, bos_token_id=2)
    if "qwen" in p.model_id.lower():
        return Qwen3Config(**shape)
    return Gemma2Config(**shape, query_pre_attn_scalar=p.head_dim, attn_implementation="eager")


def build(p, dtype: torch.dtype, device: torch.device):
    """Model, two SAEs and the map, all with random values, on ``device``."""
    import transformers
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig
    from transformers import AutoModelForCausalLM

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(p), **{key: dtype}).eval()
    topk = "qwen" in p.model_id.lower()
    saes = [(TopKSAE(TopKSAEConfig(d_in=p.d_model, d_sae=p.d_sae, k=100, dtype="float32", device=str(device)))
             if topk else JumpReLUSAE(JumpReLUSAEConfig(d_in=p.d_model, d_sae=p.d_sae, dtype="float32",
                                                        device=str(device)))) for _ in range(2)]
    for sae in saes:
        with torch.no_grad():
            sae.W_enc.normal_(std=p.d_model**-0.5)
    entries = p.d_sae * p.d_sae if p.d_sae * p.d_sae <= memory.DENSE_MAX_ENTRIES else 2 * p.d_sae * 250
    cdmap = torch.zeros(entries, dtype=torch.float32, device=device)
    return model, saes, cdmap


class Peak:
    """Peak allocated bytes above what was allocated on entry (``None`` on a CPU)."""

    def __init__(self, device: torch.device):
        self.cuda, self.bytes = device.type == "cuda", None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base


@torch.no_grad()
def measure(p, work: memory.Workload, device: torch.device, dtype: torch.dtype) -> dict:
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated() if cuda else 0
    model, (sae_in, sae_out), cdmap = build(p, dtype, device)
    resident = torch.cuda.memory_allocated() - base if cuda else None
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = lambda b, t: torch.randint(3, p.vocab_size, (b, t), generator=g).to(device)  # noqa: E731
    measured = {}
    with Peak(device) as gen:
        model.generate(input_ids=ids(work.gen_batch, work.prompt_tokens), max_new_tokens=work.new_tokens,
                       min_new_tokens=work.new_tokens, do_sample=False, pad_token_id=0)
    with Peak(device) as codes:
        h = forward_until(model, [p.l_out], ids(work.gen_batch, work.prompt_tokens))[p.l_out].float()
        sae_out.encode(h)
        del h
    measured["stage: generation"] = None if gen.bytes is None else gen.bytes + codes.bytes
    with Peak(device) as fit:
        acts = forward_until(model, [p.l_in, p.l_out], ids(work.fit_batch, work.fit_tokens))
        sae_out.encode(acts[p.l_out][0].float())
        del acts
    measured["stage: fitting"] = fit.bytes
    with Peak(device) as lm:
        torch.log_softmax(model(input_ids=ids(work.lm_eval_batch, work.lm_eval_tokens)).logits, dim=-1)
    measured["stage: lm-eval"] = lm.bytes
    del model, sae_in, sae_out, cdmap
    return {"resident": resident, **measured}


def check(profile: str, tiny: bool, device: torch.device) -> dict:
    p = get_profile(profile)
    if tiny:
        p = dataclasses.replace(p, **TINY)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 80e9
    plan = memory.plan(p, total, capability or (8, 0))
    dtype_name = plan["dtype"] if device.type == "cuda" else "float32"
    b = plan["batch"]
    work = TINY_WORK if tiny else memory.Workload(gen_batch=min(b["generation"], 16), fit_batch=min(b["fitting"], 16),
                                                  lm_eval_batch=b["lm-eval"])
    t0 = time.perf_counter()
    got = measure(p, work, device, getattr(torch, dtype_name))
    modelled = memory.parts(p, dtype_name, work)
    modelled = {"resident": sum(v for k, v in modelled.items() if not k.startswith("stage: ")),
                **{k: v for k, v in modelled.items() if k.startswith("stage: ")}}
    rows = {k: {"modelled": modelled[k], "measured": got[k],
                "measured/modelled": None if got[k] is None else got[k] / modelled[k]} for k in modelled}
    return {"profile": p.name, "shape": "tiny" if tiny else "real", "dtype": dtype_name, "workload":
            dataclasses.asdict(work), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "total_bytes": total if device.type == "cuda" else None, "parts": rows,
            "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="gemma-2-2b-it")
    ap.add_argument("--tiny", action="store_true", help="a small shape (with --device cpu: the test of this script)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    result = check(args.profile, args.tiny, torch.device(args.device))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['profile']} ({result['shape']}, {result['dtype']}) on {result['device']}, {result['seconds']} s")
    print("| part | modelled MB | measured MB | measured / modelled |\n|---|---|---|---|")
    for part, row in result["parts"].items():
        got = "n/a" if row["measured"] is None else f"{row['measured'] / 1e6:,.1f}"
        ratio = "n/a" if row["measured/modelled"] is None else f"{row['measured/modelled']:.2f}"
        print(f"| {part} | {row['modelled'] / 1e6:,.1f} | {got} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The FLOP formulas of :mod:`.flops`, measured: ``torch.utils.flop_counter.FlopCounterMode`` counts the same passes
on a small random-weight model, and :func:`cross_check` sets every formula next to its count."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..loading.profiles import PROFILES
from ..method.hooks import decoder_layers, forward_until
from .flops import (
    SETTINGS,
    ModelShape,
    decode_overhead,
    dspa_fit,
    forward_flops,
    lora_step_flops,
    ratios,
    sae_encode_flops,
)

__all__ = ["cli_report", "cross_check", "measure", "tiny_setup"]


def measure(model, fn: Callable) -> int:
    """Total FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts while running ``fn(model)``."""
    with FlopCounterMode(display=False) as counter:
        fn(model)
    return int(counter.get_total_flops())


def _lora_step(model, ids, target_layers: Sequence[int], rank: int) -> None:
    """LoRA on q/v of layers 0..max(target) via hooks; gradients for the LoRA weights and the input embeddings only."""
    params, hooks = [], []

    def adapter(module, args, out):
        params.extend([torch.randn(args[0].shape[-1], rank, requires_grad=True),
                       torch.zeros(rank, out.shape[-1], requires_grad=True)])
        return out + (args[0] @ params[-2]) @ params[-1]

    try:
        for layer in list(decoder_layers(model))[:max(target_layers) + 1]:
            hooks += [layer.self_attn.q_proj.register_forward_hook(adapter),
                      layer.self_attn.v_proj.register_forward_hook(adapter)]
        emb = model.get_input_embeddings()(ids).detach().requires_grad_()  # enable_input_require_grads
        hs = model(inputs_embeds=emb, output_hidden_states=True, use_cache=False).hidden_states
        sum(hs[t].pow(2).mean() for t in target_layers).backward(inputs=[emb, *params])  # base weights frozen
    finally:
        for hook in hooks:
            hook.remove()


def _analytic(shape: ModelShape, m_in: int, m_out: int, l_in: int, l_out: int, B: int, P: int, R: int,
              targets: Sequence[int], rank: int) -> dict[str, int]:
    """The analytic side of :func:`cross_check`."""
    T, d = P + R, shape.d_model
    return {"forward": forward_flops(shape, B * T, T), "forward_until_l_out": forward_flops(shape, B * T, T, l_out),
            "sae_in_encode": sae_encode_flops(d, m_in, B * P), "sae_out_encode": sae_encode_flops(d, m_out, B * R),
            "dspa_fit_pass": dspa_fit(shape, m_in, m_out, B, P, R, l_in, l_out)["total"],
            "train_step": 3 * forward_flops(shape, B * T, T),
            "lora_step": lora_step_flops(shape, B * T, T, targets, rank)["total"],
            "decode_step": forward_flops(shape, B, T + 1),
            "decode_edit": B * decode_overhead(shape, m_out, "dspa")["edit_per_token"]}


def cross_check(model, sae_in, sae_out, l_in: int, l_out: int, batch: int = 2, prompt_len: int = 12,
                response_len: int = 12, lora_rank: int = 4, target_layers: Sequence[int] = (1, 2)) -> dict:
    """Analytic vs measured FLOPs, ``{component: {"analytic", "measured", "rel_err"}}``, on random inputs.

    Components: a full forward; one stopped after ``l_out`` (``forward_until``); each SAE encode; DSPA's fitting
    pass on ``batch`` triples; a training step (as in DPO); a RAHF LoRA step; a cached decoding step; the per-token
    ``LatentEdit``. Load the model with eager attention: the counter misses CPU sdpa kernels' FLOPs."""
    from ..method.dspa import LatentEdit
    shape, P, B = ModelShape.from_config(model.config), prompt_len, batch
    m_in, m_out = sae_in.cfg.d_sae, sae_out.cfg.d_sae
    ids = torch.randint(0, shape.vocab, (B, P + response_len), generator=torch.Generator().manual_seed(0))
    h = torch.randn(B, P + response_len, shape.d_model)

    def fit_pass(m):  # what triple_features computes, on random ids: two passes, the encodes, then U^T Delta
        pos, neg = forward_until(m, [l_in, l_out], ids), forward_until(m, [l_out], ids)
        u = (sae_in.encode(pos[l_in][:, :P]) > 0).any(1).float()  # (B, m_in)
        delta = sae_out.encode(pos[l_out][:, P:]).mean(1) - sae_out.encode(neg[l_out][:, P:]).mean(1)  # (B, m_out)
        return u.T @ delta  # (m_in, m_out)

    def train_step(m):
        logits = m(input_ids=ids, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.x rename
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True)[cache_kw]
    mask = (torch.arange(m_out) < max(1, m_out // 8))[None]  # (1, m_out): an eighth of the latents in K_neg
    edit = LatentEdit(sae_out, mask, mask.roll(m_out // 2, 1), "both", 1.0, every_position=True, path="dense")
    runs = {"forward": lambda m: m(input_ids=ids, use_cache=False), "dspa_fit_pass": fit_pass,
            "forward_until_l_out": lambda m: forward_until(m, [l_out], ids), "train_step": train_step,
            "sae_in_encode": lambda m: sae_in.encode(h[:, :P]), "sae_out_encode": lambda m: sae_out.encode(h[:, P:]),
            "lora_step": lambda m: _lora_step(m, ids, target_layers, lora_rank),
            "decode_step": lambda m: m(input_ids=ids[:, -1:], use_cache=True, **{cache_kw: cache}),
            "decode_edit": lambda m: edit(h[:, -1:])}
    out, expected = {}, _analytic(shape, m_in, m_out, l_in, l_out, B, P, response_len, target_layers, lora_rank)
    frozen = [p for p in model.parameters() if not p.requires_grad]  # e.g. a loaded, frozen toy model
    try:
        for name, analytic in expected.items():
            training = name == "train_step"
            for p in frozen:
                p.requires_grad_(training)
            with torch.enable_grad() if name in ("train_step", "lora_step") else torch.no_grad():
                measured = measure(model, runs[name])
            out[name] = {"analytic": analytic, "measured": measured, "rel_err": abs(analytic - measured) / measured}
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.zero_grad(set_to_none=True)
    return out


def tiny_setup(seed: int = 0):
    """The random-weight ``tiny`` model (eager attention) and two ``StandardSAE`` of width 1024."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformers import Gemma2Config, Gemma2ForCausalLM
    torch.manual_seed(seed)
    p = PROFILES["tiny"]  # the toy world's shape, random weights
    cfg = Gemma2Config(vocab_size=p.vocab_size, hidden_size=p.d_model, intermediate_size=p.d_mlp,
                       num_hidden_layers=p.n_layers, head_dim=p.head_dim, num_attention_heads=p.n_heads,
                       num_key_value_heads=p.n_kv_heads, query_pre_attn_scalar=p.head_dim, attn_implementation="eager")
    return Gemma2ForCausalLM(cfg).eval(), *(StandardSAE(StandardSAEConfig(d_in=p.d_model, d_sae=p.d_sae)) for _ in range(2))


def cli_report(model: str, measure: bool) -> dict:
    """What ``dspa-lite flops --model M [--measure] --json`` prints: the shape, the modelled ratios with
    their assumptions and, for ``tiny``, the cross-check components (measured only with ``measure``)."""
    shape = ModelShape.preset(model)  # a ValueError listing the known models
    if measure and model != "tiny":
        raise ValueError(f"--measure needs the model's weights in memory to run it under torch's FLOP counter: it is "
                         f"offered for --model tiny only (its formulas are the ones used for {model})")
    report, s = {"shape": shape.to_dict(), **ratios(model)}, SETTINGS[model]
    if model == "tiny" and measure:
        report["cross_check"] = cross_check(*tiny_setup(), s["l_in"], s["l_out"])
    elif model == "tiny":
        analytic = _analytic(shape, 1024, 1024, s["l_in"], s["l_out"], 2, 12, 12, s["rahf_target_layers"], 4)
        report["cross_check"] = {name: {"analytic": flops} for name, flops in analytic.items()}
    return report

"""A model, SAEs and map in google/gemma-2-2b's shape with random weights (speed only), for the decoding benchmarks
(benchmarks/decode_overhead.py, benchmarks/gpu_check.py)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from dspa_lite.method.cdmap import CDMap, CDMapConfig
from dspa_lite.method.saes import model_id, sae_id

GEMMA_LAYERS = (12, 20)  # dspa_lite.loading.profiles' gemma-2-2b l_in, l_out


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


def random_jumprelu(layer: int, folder: Path, resid: torch.Tensor, l0: float, seed: int, d_sae: int | None = None):
    """A random 16k JumpReLU SAE with Gemma Scope's cfg, saved and loaded back in sae-lens layout: unit-norm decoder
    rows, ``W_enc = W_dec^T``, one threshold so that about ``l0`` latents fire per token of ``resid``."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf, handle_config_defaulting

    from dspa_lite.loading.sae import load_from_disk

    cfg = handle_config_defaulting(get_gemma_2_config_from_hf(
        "google/gemma-scope-2b-pt-res", f"layer_{layer}/width_16k/average_l0_82", "cpu"))
    cfg = {**cfg, "d_in": resid.shape[-1], **({"d_sae": d_sae} if d_sae else {})}
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


def gemma_world(tokenizer, prompts, overrides: dict | None = None, d_sae: int | None = None, device="cpu",
                dtype=torch.float32, layers=GEMMA_LAYERS):
    """``(model, sae_in, sae_out, cdmap, vector)``: random weights in Gemma-2-2B's shape (``overrides``: a smaller
    shape for tests), random JumpReLU SAEs of Gemma Scope's config (width ``d_sae``, default 16k) at ``layers``, a
    synthetic random map, and a CAA vector a tenth of the residual norm; on ``device`` in ``dtype``."""
    from dspa_lite.method.hooks import forward_until

    (l_in, l_out), cfg = layers, gemma2_2b_config(**(overrides or {}))
    model = random_model(cfg, seed=0)
    model.config.name_or_path = "random-weights/gemma-2-2b-shape"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    acts = forward_until(model, [l_in, l_out], enc["input_ids"], enc["attention_mask"])
    with tempfile.TemporaryDirectory(prefix="dspa-gemma-shape-") as tmp:
        sae_in = random_jumprelu(l_in, Path(tmp) / "sae_in", acts[l_in], 82, seed=1, d_sae=d_sae)
        sae_out = random_jumprelu(l_out, Path(tmp) / "sae_out", acts[l_out], 82, seed=2, d_sae=d_sae)
    m_in, m, g = sae_in.cfg.d_sae, sae_out.cfg.d_sae, torch.Generator().manual_seed(3)
    meta = dict(model_id=model_id(model), sae_in_id=sae_id(sae_in), sae_out_id=sae_id(sae_out), l_in=l_in,
                l_out=l_out, d_model=cfg.hidden_size, d_sae_in=m_in, d_sae_out=m, synthetic=True)
    cdmap = CDMap(torch.randn(m_in, m, generator=g), torch.randn(m, generator=g), torch.rand(m, generator=g) + 0.1,
                  torch.rand(m, generator=g), CDMapConfig.default(), meta)
    vector = torch.randn(cfg.hidden_size, generator=g)
    vector *= 0.1 * float(acts.pop(l_out).norm(dim=-1).mean()) / vector.norm()  # a tenth of the residual norm
    model, sae_in, sae_out = (x.to(device=device, dtype=dtype) for x in (model, sae_in, sae_out))
    return model, sae_in, sae_out, cdmap, vector

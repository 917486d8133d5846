"""Baselines with DSPA's ``generate`` interface: unsteered, static SAE steering, dense CAA-style steering.

- **Static SAE steering**: one global ``K_neg``/``K_pos`` from the unconditional mean ``delta``
  over all triples (ranked on ``delta / std`` when the map normalises ``delta``, so it uses the
  same options as DSPA), the same token-active edit and modes, applied at every token but padding and a
  leading BOS (Gemma-2's BOS residual is an outlier that Gemma Scope left out of training).
- **CAA** (Rimsky et al., 2024, "Steering Llama 2 via Contrastive Activation Addition"): the mean
  residual difference between chosen and rejected responses at one layer, added with a
  multiplier at every position.
"""

from __future__ import annotations

import contextlib

import torch
from jaxtyping import Float
from torch import Tensor

from .cdmap import CDMap, select_latents
from .dspa import LatentEdit, masks_from
from .features import encode_texts, residual_rows
from .generation import Steerer, content_start
from .hooks import check_layer, edit
from .saes import check_sae

__all__ = ["Unsteered", "StaticSAE", "CAA"]


class Unsteered(Steerer):
    """The base model through the shared generation path (for uniform method tables)."""


class StaticSAE(Unsteered):
    """One global latent set for every prompt, edited (token-active) at every token."""

    def __init__(self, model, tokenizer, sae_out, cdmap: CDMap, mode: str = "both", k: int = 32, alpha: float = 3.0,
                 gate: str = "active"):
        super().__init__(model, tokenizer)
        self.l_out = int(cdmap.meta["l_out"])
        check_sae(sae_out, self.l_out, "sae_out", model=model)
        self.sae_out, self.cdmap, self.mode, self.k, self.alpha, self.gate = sae_out, cdmap, mode, k, alpha, gate
        d = cdmap.delta_mean
        if cdmap.config.normalize_delta:
            d = torch.where(cdmap.delta_std > 0, d / cdmap.delta_std.clamp_min(1e-12), torch.zeros_like(d))
        self.score = d
        k_neg, k_pos = select_latents(d[None], k) if k else (torch.empty(1, 0, dtype=torch.long),) * 2
        self.K_neg, self.K_pos = k_neg[0][k_neg[0] >= 0], k_pos[0][k_pos[0] >= 0]
        d_sae = sae_out.cfg.d_sae
        self._neg, self._pos = masks_from(k_neg, d_sae), masks_from(k_pos, d_sae)

    @contextlib.contextmanager
    def steer(self, prompts, input_ids=None, attention_mask=None, start=None):
        """Every position but padding and a leading BOS (``start`` is ignored: static steering has no decision point;
        without ``input_ids`` every position)."""
        first = None if input_ids is None else content_start(input_ids, attention_mask, self.tokenizer.bos_token_id)
        ed = LatentEdit(self.sae_out, self._neg, self._pos, self.mode, self.alpha, self.gate, self.cdmap.latent_mean,
                        start=first, every_position=first is None)
        with edit(self.model, self.l_out, ed):
            yield ed
        ed.check_finite()  # the edit's device-side NaN/inf flag, read once per batch


@torch.no_grad()
def mean_difference(model, tokenizer, triples, layer: int, batch_size: int = 16) -> Float[Tensor, " d_model"]:
    """Mean over triples of (mean residual on chosen response tokens - same on rejected) at ``layer``."""
    check_layer(model, layer)
    prompts = [t.prompt for t in triples]
    means = {}
    for side in ("chosen", "rejected"):
        enc = encode_texts(tokenizer, prompts, [getattr(t, side) for t in triples])
        rows = [acts[layer][enc.response[i]].float().mean(0)
                for i, acts in residual_rows(model, tokenizer, enc, [layer], batch_size)]
        means[side] = torch.stack(rows).mean(0)
    return (means["chosen"] - means["rejected"]).cpu()


class CAA(Unsteered):
    """Dense steering vector added at every position of ``layer`` with ``multiplier``."""

    def __init__(self, model, tokenizer, vector: Float[Tensor, " d_model"], layer: int, multiplier: float = 1.0):
        super().__init__(model, tokenizer)
        check_layer(model, layer)
        if vector.shape != (model.config.hidden_size,):
            raise ValueError(f"steering vector has shape {tuple(vector.shape)}, expected ({model.config.hidden_size},)")
        self.vector, self.layer, self.multiplier = vector, layer, float(multiplier)

    @classmethod
    def fit(cls, model, tokenizer, triples, layer: int, multiplier: float = 1.0) -> CAA:
        return cls(model, tokenizer, mean_difference(model, tokenizer, triples, layer), layer, multiplier)

    def steer(self, prompts, input_ids=None, attention_mask=None, start=None):
        v = self.multiplier * self.vector
        return edit(self.model, self.layer, lambda h: h + v.to(h.device, h.dtype))

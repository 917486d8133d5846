"""DSPA: fit the conditional-difference map, then steer decoding with token-active SAE edits.

The method (Wedgwood et al., arXiv 2603.21461; docs/design.md §3):

1. ``u(x)``: input-SAE features of the prompt at ``l_in``; ``s(x) = A^T u(x) / max(1, |u|_1)``.
2. ``K_neg``/``K_pos``: the ``k`` most negative / positive entries of ``s(x)``.
3. At ``l_out``, on every position whose next token is sampled, ``z = f_out(h)``; only latents
   with ``z > 0`` are touched (token-active gating): ``ablate`` zeroes active ``K_neg`` latents,
   ``augment`` scales active ``K_pos`` latents by ``1 + alpha``, ``both`` does both. The edit is
   written back as ``h + (z' - z) @ W_dec``, so the SAE's reconstruction error is kept and an
   empty edit is the identity (the pattern of Dynamic SAE Guardrails, arXiv 2504.08192).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from torch.profiler import record_function

from .cdmap import CDMap, CDMapConfig, LowRankMap, select_latents
from .checks import DegenerateMapError, check_alpha, check_choice, check_finite_weights, check_k, check_triples
from .features import prompt_features, triple_features
from .generation import Steerer
from .hooks import edit
from .saes import check_sae, model_id, sae_id, sae_layer
from .triples import data_hash

__all__ = ["DSPA", "LatentEdit", "MODES", "fit_cdmap", "masks_from"]

MODES = ("ablate", "augment", "both")
GATES = ("active", "none")
POSITIONS = ("generated", "all")
SMALL_FIT = 10  # fewer triples than this: a warning (chapter 11 measures how steering grows with data)


def fit_cdmap(model, tokenizer, sae_in, sae_out, triples, config: CDMapConfig | None = None, *,
              l_in: int | None = None, l_out: int | None = None, progress: bool = False) -> CDMap:
    """Fit the conditional-difference map from preference triples (two forward passes each, to ``l_out``).

    Refused before any forward pass: fewer than ``config.n_min`` triples, a triple whose chosen equals its
    rejected, one longer than the model's context, text mostly unknown to the tokenizer, NaN/inf SAE weights.
    Refused after: a map that is all zero (it would steer nothing), as :class:`DegenerateMapError`."""
    config = config or CDMapConfig.default()
    l_in = sae_layer(sae_in) if l_in is None else l_in
    l_out = sae_layer(sae_out) if l_out is None else l_out
    check_sae(sae_in, l_in, "sae_in", model=model)
    check_sae(sae_out, l_out, "sae_out", model=model)
    check_finite_weights(sae_in, "sae_in")
    check_finite_weights(sae_out, "sae_out")
    triples = check_triples(triples, "the triples passed to fit_cdmap", min_n=config.n_min)
    if len(triples) < SMALL_FIT:
        warnings.warn(f"fitting on {len(triples)} triples: a map from so few steers weakly or not at all; use "
                      "hundreds", UserWarning, stacklevel=2)
    feats = triple_features(model, tokenizer, sae_in, sae_out, l_in, l_out, triples, pooling=config.pooling,
                            exclude_template=config.exclude_template, batch_size=config.batch_size, progress=progress)
    active = (feats.V_pos > 0).float()
    latent_mean = (feats.V_pos.sum(0) / active.sum(0).clamp_min(1)).float()  # mean value where active
    meta = dict(model_id=model_id(model), sae_in_id=sae_id(sae_in), sae_out_id=sae_id(sae_out), l_in=l_in,
                l_out=l_out, d_model=model.config.hidden_size, d_sae_in=sae_in.cfg.d_sae,
                d_sae_out=sae_out.cfg.d_sae, data_hash=data_hash(triples))
    cdmap = CDMap.from_features(feats.U, feats.Delta, latent_mean, config, meta)
    parts = (cdmap.A.left, cdmap.A.right) if isinstance(cdmap.A, LowRankMap) else (cdmap.A,)
    if any(float(torch.linalg.vector_norm(t, ord=float("inf"))) == 0 for t in parts):  # max |entry|, no copy
        raise DegenerateMapError(
            f"the map fitted on {len(triples)} triples is all zero, so it would steer nothing: no prompt latent was "
            f"active in at least n_min={config.n_min} triples with a chosen-rejected difference; use more triples "
            "(hundreds), in text the model reads")
    return cdmap


class LatentEdit:
    """The token-active SAE edit at one layer, with per-row latent sets.

    ``neg``/``pos`` are boolean masks ``(B or 1, d_sae)``; a row of ones broadcasts over the batch.
    ``start``: per-row first position to edit during the first (prefill or teacher-forced) call;
    ``None`` edits only the last position there (the one that predicts the first response token).
    Later calls (one new token each, under ``generate``) are always edited.
    """

    def __init__(self, sae, neg: Bool[Tensor, "B d_sae"], pos: Bool[Tensor, "B d_sae"], mode: str, alpha: float,
                 gate: str = "active", latent_mean: Tensor | None = None, start: Sequence[int] | None = None,
                 every_position: bool = False):
        check_choice(mode, MODES, "mode")
        check_choice(gate, GATES, "gate")
        alpha = check_alpha(alpha)
        if gate == "none" and latent_mean is None:
            raise ValueError("gate='none' injects K_pos latents at their mean active value: pass latent_mean")
        self.sae, self.mode, self.alpha, self.gate = sae, mode, alpha, gate
        self.neg = neg if mode in ("ablate", "both") else torch.zeros_like(neg)
        self.pos = pos if mode in ("augment", "both") else torch.zeros_like(pos)
        self.latent_mean, self.start, self.every_position = latent_mean, start, every_position
        self.calls = 0
        self.trace: list[Tensor] = []  # per call: (B, t, d_sae) bool of edited latents, if record=True
        self.record = False

    def _positions(self, h: Tensor) -> Tensor:
        B, T = h.shape[:2]
        if self.every_position or self.calls > 0:
            return torch.ones(B, T, dtype=torch.bool, device=h.device)
        if self.start is None:
            sel = torch.zeros(B, T, dtype=torch.bool, device=h.device)
            sel[:, -1] = True
            return sel
        starts = torch.as_tensor(list(self.start), device=h.device)[:, None]
        return torch.arange(T, device=h.device)[None, :] >= starts

    @record_function("dspa.LatentEdit")
    def __call__(self, h: Float[Tensor, "B T d_model"]) -> Float[Tensor, "B T d_model"]:
        last_only = self.calls == 0 and self.start is None and not self.every_position and h.shape[1] > 1
        if last_only:  # the prompt pass: encode only the last position instead of the whole prompt
            self.calls += 1
            return torch.cat([h[:, :-1], self._edit(h[:, -1:], torch.ones_like(h[:, -1:, 0], dtype=torch.bool))], 1)
        sel = self._positions(h)  # (B, T)
        self.calls += 1
        return self._edit(h, sel)

    def _edit(self, h: Float[Tensor, "B T d_model"], sel: Bool[Tensor, "B T"]) -> Float[Tensor, "B T d_model"]:
        if not sel.any() or not (self.neg.any() or self.pos.any()):
            return h
        W = self.sae.W_dec
        with record_function("dspa.LatentEdit.encode"):
            z = self.sae.encode(h.to(W.dtype))  # (B, T, d_sae)
        active = z > 0
        neg, pos = self.neg[:, None, :].to(h.device), self.pos[:, None, :].to(h.device)
        sel3 = sel[:, :, None]
        z_new = torch.where(neg & active & sel3, torch.zeros_like(z), z)
        z_new = torch.where(pos & active & sel3, z * (1 + self.alpha), z_new)
        if self.gate == "none":
            inject = pos & ~active & sel3
            z_new = torch.where(inject, self.alpha * self.latent_mean.to(z) * torch.ones_like(z), z_new)
        diff = z_new - z
        if self.record:
            self.trace.append((diff != 0).cpu())
        if not torch.isfinite(diff).all():
            raise FloatingPointError("the SAE edit produced NaN/inf: check the model dtype and alpha")
        return h + (diff @ W).to(h.dtype)


def masks_from(idx: Tensor, d_sae: int) -> Bool[Tensor, "B d_sae"]:
    """Boolean masks from (B, k) latent indices padded with -1."""
    idx = idx if idx.ndim == 2 else idx[None]
    mask = torch.zeros(idx.shape[0], d_sae + 1, dtype=torch.bool)
    mask.scatter_(1, torch.where(idx < 0, d_sae, idx), True)
    return mask[:, :d_sae]


class DSPA(Steerer):
    """Dynamic, prompt-conditional SAE steering.

    Args:
        mode: ``"ablate"`` (zero active ``K_neg`` latents), ``"augment"`` (scale active ``K_pos``
            latents by ``1 + alpha``) or ``"both"``.
        k: how many latents go into ``K_neg`` and ``K_pos`` for each prompt.
        positions: ``"generated"`` edits every position whose next token is sampled (the last
            prompt position and each generated one); ``"all"`` also edits the rest of the prompt.
        gate: ``"active"`` (the paper's rule: only latents with ``z > 0``) or ``"none"`` (an
            ablation: also inject inactive ``K_pos`` latents at ``alpha`` times their mean active value).
    """

    def __init__(self, model, tokenizer, sae_in, sae_out, cdmap: CDMap, mode: str = "both", k: int = 32,
                 alpha: float = 3.0, positions: str = "generated", gate: str = "active"):
        super().__init__(model, tokenizer)
        self.sae_in, self.sae_out, self.cdmap = sae_in, sae_out, cdmap
        self.l_in, self.l_out = int(cdmap.meta["l_in"]), int(cdmap.meta["l_out"])
        # the map's provenance first: a map for another model says so, rather than "layer 12 is out of range"
        cdmap.check_compatible(model_id(model), sae_id(sae_in), sae_id(sae_out), self.l_in, self.l_out,
                               model.config.hidden_size, sae_in.cfg.d_sae, sae_out.cfg.d_sae)
        check_sae(sae_in, self.l_in, "sae_in", model=model)
        check_sae(sae_out, self.l_out, "sae_out", model=model)
        check_finite_weights(sae_in, "sae_in")
        check_finite_weights(sae_out, "sae_out")
        check_k(k, sae_out.cfg.d_sae)
        check_choice(positions, POSITIONS, "positions")
        LatentEdit(sae_out, torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.bool), mode, alpha,
                   gate, cdmap.latent_mean)  # validates mode/gate now rather than at generation time
        self.mode, self.k, self.alpha, self.positions, self.gate = mode, k, alpha, positions, gate
        self.last_edit: LatentEdit | None = None
        self.record = False  # keep, per forward call, which latents were edited (for the explorer and audits)

    def scores(self, prompt: str | Sequence[str]) -> dict[str, Any]:
        """``s(x)``, ``K_neg`` and ``K_pos`` for one prompt (or a list: batched tensors)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        with record_function("dspa.prompt_features"):
            u = prompt_features(self.model, self.tokenizer, self.sae_in, self.l_in, prompts,
                                self.cdmap.config.pooling, self.cdmap.config.exclude_template)
        with record_function("dspa.map_lookup"):
            s = self.cdmap.scores(u)  # (B, m_out)
            k_neg, k_pos = select_latents(s, self.k)
        if isinstance(prompt, str):
            return {"s": s[0], "K_neg": k_neg[0][k_neg[0] >= 0], "K_pos": k_pos[0][k_pos[0] >= 0], "u": u[0]}
        return {"s": s, "K_neg": k_neg, "K_pos": k_pos, "u": u}

    def make_edit(self, prompts: Sequence[str], start: Sequence[int] | None = None) -> LatentEdit:
        d_sae = self.sae_out.cfg.d_sae
        if self.k == 0:
            neg = pos = torch.zeros(len(prompts), d_sae, dtype=torch.bool)
        else:
            sc = self.scores(list(prompts))
            neg, pos = masks_from(sc["K_neg"], d_sae), masks_from(sc["K_pos"], d_sae)
        ed = LatentEdit(self.sae_out, neg, pos, self.mode, self.alpha, self.gate, self.cdmap.latent_mean,
                        start=start, every_position=self.positions == "all")
        ed.record = self.record
        return ed

    @contextlib.contextmanager
    def steer(self, prompts: Sequence[str], input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
              start: Sequence[int] | None = None):
        """Hooks for one batch (the ``steer`` argument of :func:`dspa_lite.generate`)."""
        self.last_edit = self.make_edit(prompts, start)
        with edit(self.model, self.l_out, self.last_edit):
            yield self.last_edit

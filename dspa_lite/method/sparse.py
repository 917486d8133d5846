"""The token-active edit on the latents it can change only (docs/design.md §3.4).

``z' - z`` is zero outside ``K_neg ∪ K_pos`` (2k of d_sae latents). When an SAE's activation is elementwise,
``z_j = act(pre_j)`` with ``pre_j = (h - b_dec) · W_enc[:, j] + b_enc[j]`` (ReLU: sae-lens ``StandardSAE``; JumpReLU:
``JumpReLUSAE``, Gemma Scope), the gate ``z_j > 0`` needs the pre-activations of those latents only. So, once per
batch, :func:`gather` takes their encoder columns, biases, thresholds and decoder rows, and each decoding step
(:func:`sparse_diff`) costs about ``2 · 2k · d_model`` multiply-adds per token instead of ``2 · 2 · d_sae · d_model``.
A TopK SAE (Qwen-Scope) keeps the dense edit: whether a latent is among the top k needs every pre-activation.
:func:`edit_path` chooses from the SAE's class and config; anything it does not recognise goes dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .saes import elementwise

__all__ = ["EDIT_PATHS", "Gathered", "edit_path", "gather", "mask_indices", "sparse_diff"]

EDIT_PATHS = ("sparse", "dense")


def edit_path(sae) -> str:
    """``"sparse"`` for an SAE whose activation is elementwise (:func:`saes.elementwise`: sae-lens ``StandardSAE`` or
    ``JumpReLUSAE`` used as shipped); ``"dense"`` for anything else (TopK, BatchTopK, gated, transcoders, ...)."""
    return "sparse" if elementwise(sae) else "dense"


def mask_indices(mask: Bool[Tensor, "B d_sae"]) -> Int[Tensor, "B k"]:
    """``(B, k)`` latent indices of each row's ``True`` entries, ascending, padded with ``-1`` to the longest row.

    >>> mask_indices(torch.tensor([[True, False, True], [False, True, False]]))
    tensor([[ 0,  2],
            [ 1, -1]])
    """
    k = int(mask.sum(1).max()) if mask.numel() else 0  # one host read per batch (none for CPU masks)
    vals, idx = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True)
    return idx[:, :k].masked_fill(vals[:, :k] == 0, -1)


@dataclass
class Gathered:
    """One batch's slice of an SAE: for each row ``b`` and selected latent ``j`` (``K_neg`` first, then ``K_pos``)
    its encoder column ``W_enc[:, j]`` (as a row), bias, threshold (``0`` for ReLU) and decoder row."""

    idx: Int[Tensor, "B J"]  # latent index, -1 for padding
    W_enc: Float[Tensor, "B J d_model"]
    b_enc: Float[Tensor, "B J"]
    threshold: Float[Tensor, "B J"]
    W_dec: Float[Tensor, "B J d_model"]
    is_pos: Bool[Tensor, "1 J"]
    valid: Bool[Tensor, "B J"]
    inject: Float[Tensor, "B J"] | None  # alpha * latent_mean on K_pos (gate="none"), else None


def gather(sae, neg: Int[Tensor, "B kn"], pos: Int[Tensor, "B kp"], alpha: float,
           latent_mean: Tensor | None = None) -> Gathered:
    """The selected latents' weights, on the SAE's device (``neg``/``pos``: ``(B, k)`` indices padded with ``-1``)."""
    dev = sae.W_dec.device
    idx = torch.cat([neg.to(dev), pos.to(dev)], 1)
    valid, safe = idx >= 0, idx.clamp_min(0)
    is_pos = (torch.arange(idx.shape[1], device=dev) >= neg.shape[1])[None]
    threshold = sae.threshold[safe] if elementwise(sae) == "jumprelu" else torch.zeros_like(sae.b_enc[safe])
    inject = None
    if latent_mean is not None:
        inject = torch.where(is_pos & valid, alpha * latent_mean.to(sae.W_dec)[safe], torch.zeros((), device=dev))
    return Gathered(idx, sae.W_enc.T[safe], sae.b_enc[safe], threshold, sae.W_dec[safe], is_pos, valid, inject)


def sparse_diff(sae, g: Gathered, h: Float[Tensor, "B T d_model"], alpha: float,
                sel: Bool[Tensor, "B T"] | None = None) -> Float[Tensor, "B T J"]:
    """``z' - z`` on the gathered latents at each position (``sel``: positions to edit, ``None``: all), exactly the
    dense edit's arithmetic: ``-z`` on active ``K_neg``, ``z (1 + alpha) - z`` on active ``K_pos``; with ``inject``,
    ``alpha * latent_mean`` on inactive ``K_pos``."""
    x = h.to(g.W_dec.dtype) - sae.b_dec * sae.cfg.apply_b_dec_to_input  # sae-lens's process_sae_in
    pre = torch.matmul(x, g.W_enc.transpose(1, 2)) + g.b_enc[:, None]  # (B, T, J)
    z = torch.relu(pre) * (pre > g.threshold[:, None]).to(pre.dtype)
    diff = torch.where(g.is_pos[:, None], z * (1 + alpha) - z, -z)
    keep = g.valid[:, None] if sel is None else g.valid[:, None] & sel[:, :, None]
    if g.inject is not None:
        diff = torch.where((z <= 0) & g.is_pos[:, None], g.inject[:, None], diff)
    return torch.where(keep, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))

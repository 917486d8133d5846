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

__all__ = ["EDIT_PATHS", "Gathered", "add_decoded", "edit_path", "gather", "mask_indices", "sparse_diff"]

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
    its encoder column, bias, gate threshold and decoder row, and the factor that turns its activation ``z_j`` into
    the edit ``z'_j - z_j`` (``alpha`` on ``K_pos``, ``-1`` on ``K_neg``, ``0`` on padding). Laid out so that a decoding
    step is two matrix products and a few elementwise kernels (:func:`sparse_diff`)."""

    idx: Int[Tensor, "B J"]  # latent index, -1 for padding
    W_enc: Float[Tensor, "B d_model J"]
    b_enc: Float[Tensor, "B 1 J"]
    threshold: Float[Tensor, "B 1 J"]  # max(threshold, 0): 0 for ReLU
    W_dec: Float[Tensor, "B J d_model"]
    coef: Float[Tensor, "B 1 J"]
    b_dec_in: Float[Tensor, " d_model"] | None  # b_dec where the SAE subtracts it from its input, else None
    valid: Bool[Tensor, "B J"]
    inject: Float[Tensor, "B 1 J"] | None  # alpha * latent_mean on K_pos (gate="none"), else None


def gather(sae, neg: Int[Tensor, "B kn"], pos: Int[Tensor, "B kp"], alpha: float,
           latent_mean: Tensor | None = None) -> Gathered:
    """The selected latents' weights, on the SAE's device (``neg``/``pos``: ``(B, k)`` indices padded with ``-1``)."""
    dev, dtype = sae.W_dec.device, sae.W_dec.dtype
    idx = torch.cat([neg.to(dev), pos.to(dev)], 1)
    valid, safe = idx >= 0, idx.clamp_min(0)
    is_pos = (torch.arange(idx.shape[1], device=dev) >= neg.shape[1])[None]
    zero = torch.zeros((), dtype=dtype, device=dev)
    # a JumpReLU gate z = relu(pre) * (pre > t) is pre * (pre > max(t, 0)); ReLU is t = 0
    threshold = sae.threshold[safe].clamp_min(0) if elementwise(sae) == "jumprelu" else torch.zeros_like(sae.b_enc[safe])
    coef = torch.where(valid, torch.where(is_pos, alpha, -1.0).to(dtype), zero)  # no host-to-device copy
    inject = None
    if latent_mean is not None:
        inject = torch.where(is_pos & valid, alpha * latent_mean.to(sae.W_dec)[safe], zero)[:, None]
    b_dec_in = sae.b_dec if sae.cfg.apply_b_dec_to_input else None  # sae-lens's process_sae_in
    return Gathered(idx, sae.W_enc.T[safe].transpose(1, 2), sae.b_enc[safe][:, None], threshold[:, None],
                    sae.W_dec[safe], coef[:, None], b_dec_in, valid, inject)


def sparse_diff(g: Gathered, h: Float[Tensor, "B T d_model"], sel: Bool[Tensor, "B T"] | None = None
                ) -> Float[Tensor, "B T J"]:
    """``z' - z`` on the gathered latents at each position (``sel``: positions to edit, ``None``: all): ``-z`` on
    active ``K_neg``, ``alpha z`` on active ``K_pos`` (``(1 + alpha) z - z``), zero where a latent is inactive;
    with ``inject``, ``alpha * latent_mean`` on inactive ``K_pos``. The dense edit's values to float rounding."""
    x = h.to(g.W_dec.dtype)
    if g.b_dec_in is not None:
        x = x - g.b_dec_in
    if g.W_enc.shape[0] == x.shape[0]:  # one fused GEMM (the bias in its epilogue)
        pre = torch.baddbmm(g.b_enc, x, g.W_enc)  # (B, T, J)
    else:  # one set of latents for the whole batch (static steering)
        pre = torch.matmul(x, g.W_enc) + g.b_enc
    z = pre * (pre > g.threshold)
    diff = z * g.coef
    if g.inject is not None:
        diff = torch.where(z <= 0, g.inject, diff)
    return diff if sel is None else torch.where(sel[:, :, None], diff, torch.zeros((), dtype=diff.dtype,
                                                                                   device=diff.device))


def add_decoded(h: Float[Tensor, "B T d_model"], diff: Float[Tensor, "B T J"], W_dec: Float[Tensor, "*B J d_model"]
                ) -> Float[Tensor, "B T d_model"]:
    """``h + diff @ W_dec`` in ``h``'s dtype: one fused GEMM where the batch and dtypes allow."""
    if W_dec.ndim == 3 and W_dec.shape[0] == h.shape[0] and diff.dtype == h.dtype == W_dec.dtype:
        return torch.baddbmm(h, diff, W_dec)
    return h + torch.matmul(diff, W_dec).to(h.dtype)

"""What the method needs to know about an SAE (a ``sae_lens.SAE``): which layer it reads, a short identity,
whether it fits a model, its encoding in its own dtype, and how well it reconstructs.

An SAE exposes ``encode``, ``decode``, ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``, ``cfg.d_in``,
``cfg.d_sae`` and ``cfg.metadata.hook_name``.
"""

from __future__ import annotations

import re

import torch
from jaxtyping import Float
from torch import Tensor

from .hooks import check_layer

__all__ = ["check_sae", "elementwise", "model_id", "sae_encode", "sae_id", "sae_layer", "sae_stats"]


def sae_layer(sae) -> int:
    """The decoder layer an SAE reads, from its hook name (``blocks.12.hook_resid_post``, ``model.layers.12``)."""
    name = sae.cfg.metadata.hook_name or ""
    m = re.search(r"(?:blocks|layers)\.(\d+)", name)
    if not m:
        raise ValueError(f"cannot read a layer index from the SAE's hook name {name!r}; pass l_in/l_out explicitly")
    return int(m.group(1))


def sae_id(sae) -> str:
    """A short identity for an SAE: its release/id if known, else its hook name and width."""
    meta = sae.cfg.metadata
    release = getattr(meta, "release", None) or getattr(sae.cfg, "release", None)
    sid = getattr(meta, "sae_id", None)
    if release and sid:
        return f"{release}/{sid}"
    return f"{meta.model_name or 'model'}/{meta.hook_name}/d_sae={sae.cfg.d_sae}"


def model_id(model) -> str:
    """The model's identity in fitted maps: its hub id (or local name), else its class name."""
    return str(getattr(model.config, "name_or_path", "") or type(model).__name__)


def check_sae(sae, layer: int, name: str, *, model=None, hidden_size: int | None = None,
              model_name: str | None = None) -> None:
    """Raise ``ValueError`` unless ``sae`` can be used at ``layer``: the layer exists in ``model``, the widths
    match (``model``'s or ``hidden_size``), and the layer in the SAE's hook name, when it has one, is ``layer``."""
    if model is not None:
        check_layer(model, layer)
        hidden_size, model_name = model.config.hidden_size, model_name or model_id(model)
    if hidden_size is not None and sae.cfg.d_in != hidden_size:
        of = f" of {model_name}" if model_name else ""
        raise ValueError(f"{name} expects d_in={sae.cfg.d_in} but layer {layer}{of} has hidden size {hidden_size}: "
                         "is it an SAE for another model?")
    try:
        read = sae_layer(sae)
    except ValueError:
        return  # no layer in the hook name: nothing more to check
    if read != layer:
        raise ValueError(f"{name} reads layer {read} (hook {sae.cfg.metadata.hook_name!r}) but is used at layer "
                         f"{layer}: are sae_in and sae_out (or l_in and l_out) swapped?")


def elementwise(sae) -> str | None:
    """``"standard"`` (ReLU) or ``"jumprelu"`` for a sae-lens ``StandardSAE``/``JumpReLUSAE`` used as shipped (its own
    ``encode``, a ReLU activation, no run-time input normalisation, no ``hook_z`` reshaping, no hooks on its hook
    points): latent ``j`` then depends on its own pre-activation only. ``None`` for anything else (TopK, BatchTopK,
    gated, transcoders, ...)."""
    try:
        from sae_lens import JumpReLUSAE, StandardSAE
    except ImportError:  # pragma: no cover - sae-lens is a dependency
        return None
    if not isinstance(sae, StandardSAE | JumpReLUSAE):  # any other object with encode/W_dec: the dense edit
        return None
    arch = sae.cfg.architecture()
    encoders = {"standard": StandardSAE.encode, "jumprelu": JumpReLUSAE.encode}
    if arch not in encoders or type(sae).encode is not encoders[arch]:
        return None
    cfg, hook = sae.cfg, str(getattr(getattr(sae.cfg, "metadata", None), "hook_name", "") or "")
    plain = (getattr(cfg, "normalize_activations", "none") in ("none", None) and getattr(sae, "d_head", None) is None
             and not hook.endswith("hook_z") and isinstance(getattr(sae, "activation_fn", None), torch.nn.ReLU))
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in sae.modules() if m is not sae)
    return arch if plain and not hooked else None


def sae_encode(sae, h: Tensor) -> Tensor:
    """``sae.encode`` in the SAE's own dtype: a bf16 model's activations meet an fp32 SAE at the hook.

    For a ReLU or JumpReLU SAE (:func:`elementwise`) the same arithmetic in two passes over the codes (``addmm``,
    then the gate in place) instead of sae-lens's five: the encode is most of the fit's cost beyond its forward passes.
    """
    kind = elementwise(sae)
    if kind is None:
        return sae.encode(h.to(sae.W_dec.dtype))
    x = h.to(sae.W_dec.dtype)
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec
    pre = torch.addmm(sae.b_enc, x.reshape(-1, x.shape[-1]), sae.W_enc).reshape(*x.shape[:-1], -1)
    if kind == "jumprelu":
        gate = pre > sae.threshold
        return pre.relu_().mul_(gate)  # relu(pre) * (pre > threshold), as sae-lens
    return pre.relu_()


@torch.no_grad()
def sae_stats(sae, acts: Float[Tensor, "n d_model"], chunk: int = 2048) -> dict[str, float]:
    """L0 (mean active latents per token) and fraction of variance explained on ``acts``.

    FVE = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over tokens. The codes of at most ``chunk`` tokens
    exist at once (8k tokens of a 64k-wide SAE would be 2 GB per copy).
    """
    acts = acts.to(sae.W_dec.dtype)
    resid, active = acts.new_zeros(()), 0.0
    for rows in acts.split(chunk):
        z = sae.encode(rows)
        resid = resid + (rows - sae.decode(z)).pow(2).sum()
        active += float((z > 0).sum())
    total = (acts - acts.mean(0)).pow(2).sum()
    return {"l0": active / max(len(acts), 1), "fve": float(1 - resid / total)}

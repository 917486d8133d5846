"""Load a profile's causal LM, tokenizer and SAEs (hub ids or local folders), with errors people can act on.

``load(profile)`` goes through ``AutoModelForCausalLM`` / ``AutoTokenizer`` (never
``trust_remote_code``); ``load_sae(profile, layer)`` through ``sae_lens.SAE.from_pretrained`` or
``SAE.load_from_disk``; ``load_all(profile)`` returns ``(model, tokenizer, sae_in, sae_out)``.
The same functions load the real models and the tiny hub-layout checkpoints of the offline tests.

SAEs stay in float32 even next to a bfloat16 model: the hook code casts the residual to the SAE's
dtype and the edit back to the model's (``saes.sae_encode``, ``dspa.LatentEdit``).

Whatever goes wrong while loading (no network and no cached copy, a gated model without a token,
out of memory, an SAE for another model or layer) surfaces as one :class:`ModelLoadError` that says
what to do. ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` are read by ``huggingface_hub`` at
import only; notebooks set them later, so each call here re-reads them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..method.checks import check_finite_weights
from ..method.hooks import check_layer, decoder_layers
from . import config
from .hub import ModelLoadError, hub_env, translated
from .memory import gpu_dtype
from .profiles import Profile, get_profile
from .sae import load_sae

__all__ = ["ModelLoadError", "load", "load_all", "load_sae", "residual_module", "resolve_dtype"]


def resolve_dtype(profile: Profile, device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given, else the profile's dtype on a GPU with native bfloat16 (compute capability >= 8.0),
    and float32 elsewhere (a T4, CPU, MPS).

    >>> from dspa_lite.loading.profiles import PROFILES
    >>> resolve_dtype(PROFILES["gemma-2-2b"], torch.device("cpu"))
    torch.float32
    """
    if dtype is not None:
        resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
            raise ValueError(f"dtype={dtype!r} is not a floating-point torch dtype; use 'bfloat16' or 'float32'")
        return resolved
    if device.type != "cuda":
        return torch.float32
    # bfloat16 needs compute capability >= 8.0 (A100, L4, H100). A T4 (7.5) reports is_bf16_supported() True but
    # emulates it slowly; float16 overflows Gemma-2's residual stream; so float32 there (memory.gpu_dtype).
    return getattr(torch, gpu_dtype(profile, torch.cuda.get_device_capability(device)))


def residual_module(model: nn.Module, layer: int) -> nn.Module:
    """The decoder layer whose output is the residual stream an SAE at ``layer`` reads (``resid_post``)."""
    check_layer(model, layer)
    return decoder_layers(model)[layer]


# --- models ---------------------------------------------------------------------------------------------


def _local_folder(path: str, what: str) -> str:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        why = "does not exist" if not folder.exists() else "has no config.json"
        raise ModelLoadError(f"{what}: the local folder {folder} {why}; pass a folder in the hub's layout "
                             "(config.json, *.safetensors, tokenizer files), e.g. one written by save_pretrained")
    return str(folder)


def load(profile: Profile | str, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None) -> tuple[nn.Module, object]:
    """The profile's causal LM (eval mode, no gradients) and tokenizer.

    Args:
        device: default :func:`dspa_lite.loading.config.device`; with several GPUs the model is spread
            over them (``device_map="auto"``).
        dtype: default bfloat16 on a GPU (the profile's dtype), float32 on CPU/MPS.
    """
    profile = get_profile(profile)
    if profile.builtin and profile.model_path is None:
        world = profile.builtin_world()
        dev = config.device(device)
        return world.model.to(dev, resolve_dtype(profile, dev, dtype)), world.tokenizer
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = config.device(device)
    torch_dtype = resolve_dtype(profile, dev, dtype)
    source = _local_folder(profile.model_path, profile.name) if profile.model_path else profile.model_id
    what = f"{profile.name} ({source})"
    new_kwarg = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)  # torch_dtype -> dtype
    kwargs: dict = {"dtype" if new_kwarg else "torch_dtype": torch_dtype, "trust_remote_code": False}
    if dev.type == "cuda":  # straight onto the GPU(s): a 9B model staged in CPU RAM would not fit in Colab's
        kwargs["device_map"] = "auto" if torch.cuda.device_count() > 1 and dev.index is None else str(dev)
    with hub_env() as hub, translated(what, profile.model_id, f"Download it once (`hf download {source}`)"):
        cache = hub.HF_HUB_CACHE
        model_config = AutoConfig.from_pretrained(source, trust_remote_code=False, cache_dir=cache)
        if model_config.model_type.startswith("gemma"):
            kwargs["attn_implementation"] = "eager"  # Gemma-2's attention-logit soft-capping needs eager attention
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, cache_dir=cache)
        model = AutoModelForCausalLM.from_pretrained(source, cache_dir=cache, **kwargs)
        if "device_map" not in kwargs:
            model = model.to(dev)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.name_or_path = profile.model_id  # the same identity from the hub or a local copy
    _check_shape(profile, model)
    check_finite_weights(model, f"the model {what}")  # at load, not as a residual-stream NaN during a fit
    tokenizer.dspa_chat_kwargs = dict(profile.chat_kwargs)  # read by generation.format_prompts
    return model, tokenizer


def _check_shape(profile: Profile, model: nn.Module) -> None:
    got = (len(decoder_layers(model)), model.config.hidden_size)
    if got != (profile.n_layers, profile.d_model):
        raise ModelLoadError(
            f"the model loaded for profile {profile.name!r} from {profile.model_path or profile.model_id} has "
            f"{got[0]} layers of hidden size {got[1]}, but the profile says {profile.n_layers} x {profile.d_model}: "
            "is model_path a copy of another model? (For a different model, make a profile for it with "
            "dataclasses.replace(profile, model_id=..., n_layers=..., d_model=..., l_in=..., l_out=...).)")


def load_all(profile: Profile | str, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None):
    """``(model, tokenizer, sae_in, sae_out)`` for the profile's ``l_in`` and ``l_out``.

    The SAEs sit on the devices of their layers, in float32, checked against the model.
    """
    profile = get_profile(profile)
    if profile.builtin and profile.model_path is None and not profile.sae_paths:
        world = profile.builtin_world()
        dev = config.device(device)
        return world.model.to(dev), world.tokenizer, world.sae_in.to(dev), world.sae_out.to(dev)
    model, tokenizer = load(profile, device, dtype)
    sae_in = load_sae(profile, profile.l_in, model=model)
    sae_out = load_sae(profile, profile.l_out, model=model)
    return model, tokenizer, sae_in, sae_out

"""What a chapter asks about the machine it runs on (Colab or not): a Hugging Face token, the message a
missing model gives, CPU memory, and the bytes of a key/value cache, each in one call, so that the
chapters' cells stay about the method.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import torch

from .hub import ModelLoadError

__all__ = ["enough_ram", "kv_cache_bytes", "missing_model_message", "offline_empty_cache", "ram_gb", "token_status"]

GB = 1e9
HUB_VARIABLES = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE")


def token_status() -> str:
    """Whether ``huggingface_hub`` finds a token (``HF_TOKEN``, ``hf auth login`` or Colab's secret), and the fix."""
    from huggingface_hub import get_token

    if get_token():
        return "a Hugging Face token is set"
    return ("no Hugging Face token found: accept the licence on the model page, then notebook_login() or "
            "`hf auth login`")


@contextlib.contextmanager
def offline_empty_cache() -> Iterator[str]:
    """Offline, with an empty Hugging Face cache: what a fresh machine without network sees. The variables
    ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` are restored on exit."""
    saved = {k: os.environ.get(k) for k in HUB_VARIABLES}
    try:
        with tempfile.TemporaryDirectory() as empty:
            os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=empty)
            os.environ.pop("HF_HUB_CACHE", None)
            yield empty
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def missing_model_message(profile: str) -> str:
    """The :class:`ModelLoadError` message of loading ``profile`` on a machine without network or cached copy.

    Raises ``AssertionError`` if the model loads anyway (then there was nothing missing to report).
    """
    from .models import load

    with offline_empty_cache():
        try:
            load(profile, device="cpu")
        except ModelLoadError as e:
            return str(e)
    raise AssertionError(f"{profile} loaded from an empty offline cache: there is no error to show")


def ram_gb() -> float:
    """This machine's physical memory in GB (``inf`` where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):
        return float("inf")


def enough_ram(need_gb: float, share: float = 0.8) -> bool:
    """Whether ``need_gb`` fits in ``share`` of this machine's memory; prints what it compared, and the fix if not."""
    have = ram_gb()
    print(f"needs ~{need_gb:.2f} GB of CPU RAM; this machine has {have:.0f} GB")
    if need_gb <= share * have:
        return True
    print("not enough: use a high-memory runtime, or a narrower SAE (another sae_id_template) for the map")
    return False


def _cache_tensors(cache) -> list[torch.Tensor]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    if hasattr(cache, "key_cache"):
        return [*cache.key_cache, *cache.value_cache]
    return [t for pair in cache for t in pair]  # the legacy tuple of (key, value) pairs


@torch.no_grad()
def kv_cache_bytes(model, input_ids: torch.Tensor) -> int:
    """The bytes of the key/value cache one forward pass over ``input_ids`` ``(B, T)`` allocates."""
    cache = model(input_ids=input_ids.to(model.device), use_cache=True).past_key_values
    return sum(t.numel() * t.element_size() for t in _cache_tensors(cache))

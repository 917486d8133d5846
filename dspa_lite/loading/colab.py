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

__all__ = ["LOGIN", "enough_ram", "export_hf_token", "gpu_plan", "kv_cache_bytes", "missing_model_message",
           "offline_empty_cache", "ram_gb", "token_status"]

GB = 1e9
HUB_VARIABLES = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE")


LOGIN = ("accept the licence on the model page, then run `from huggingface_hub import notebook_login; "
         "notebook_login()` (it saves the token where `!dspa-lite ...` subprocesses find it too), or add it as the "
         "Colab secret HF_TOKEN and call dspa_lite.loading.colab.export_hf_token() before any `!` command")


def token_status() -> str:
    """Whether ``huggingface_hub`` finds a token (``HF_TOKEN``, ``notebook_login``/``hf auth login`` or Colab's
    secret, which only this notebook's own process can read), and the fix."""
    from huggingface_hub import get_token

    if get_token():
        sub = "" if os.environ.get("HF_TOKEN") or _saved_token() else (
            "; `!` subprocesses cannot read Colab secrets: call export_hf_token() before `!dspa-lite pipeline`")
        return "a Hugging Face token is set" + sub
    return f"no Hugging Face token found: {LOGIN}"


def _saved_token() -> bool:
    from huggingface_hub import constants

    return os.path.isfile(constants.HF_TOKEN_PATH)


def export_hf_token(secret: str = "HF_TOKEN") -> bool:
    """Copy the Colab secret ``secret`` into ``os.environ["HF_TOKEN"]``, so that subprocesses (``!dspa-lite
    pipeline``, ``!python ...``) inherit it: ``huggingface_hub`` reads Colab secrets only inside the notebook's own
    process. Returns whether ``HF_TOKEN`` is set afterwards; outside Colab it only reports."""
    if os.environ.get("HF_TOKEN"):
        return True
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        return False
    try:
        token = userdata.get(secret)
    except Exception:  # noqa: BLE001 - SecretNotFoundError / NotebookAccessError: the user has not granted it
        return False
    if token:
        os.environ["HF_TOKEN"] = token
    return bool(token)


def gpu_plan(profile, work=None) -> dict | None:
    """:func:`dspa_lite.loading.memory.plan` for this machine's first CUDA GPU (``None`` without one), plus its name."""
    from .memory import Workload, plan
    from .profiles import get_profile

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "total_gb": props.total_memory / GB,
            **plan(get_profile(profile), props.total_memory, (props.major, props.minor), work or Workload())}


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

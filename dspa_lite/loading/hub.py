"""The Hugging Face Hub as the loaders meet it: settings honoured when a call runs, and failures people can fix
translated into one :class:`ModelLoadError` that says what to do.

``huggingface_hub`` and ``datasets`` read ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``HF_HOME`` and
``HF_HUB_CACHE`` at import only; notebooks set them later, so :func:`hub_env` re-reads them for each call.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .config import env_flag

__all__ = ["ModelLoadError", "hub_env", "translated"]


class ModelLoadError(RuntimeError):
    """A model, tokenizer or SAE could not be loaded or does not fit; the message says what to do."""


@contextlib.contextmanager
def hub_env(datasets: bool = False):
    """Honour the offline switches and ``HF_HOME``/``HF_HUB_CACHE`` as they are now, not as at import.

    With ``datasets=True`` the ``datasets`` library's own offline flags follow too. Yields the
    ``huggingface_hub.constants`` module; everything is restored on exit.
    """
    import huggingface_hub.constants as hub

    targets = [(hub, "HF_HUB_OFFLINE"), (hub, "HF_HUB_CACHE")]
    if datasets:
        import datasets.config as ds

        targets += [(ds, "HF_HUB_OFFLINE"), (ds, "HF_DATASETS_OFFLINE")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in targets if hasattr(obj, name)]
    try:
        offline = any(env_flag(n) for n in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))
        for obj, name, _ in saved:
            if offline and name.endswith("OFFLINE"):
                setattr(obj, name, True)
        if os.environ.get("HF_HUB_CACHE"):
            hub.HF_HUB_CACHE = os.path.expanduser(os.environ["HF_HUB_CACHE"])
        elif os.environ.get("HF_HOME"):
            hub.HF_HUB_CACHE = os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
        yield hub
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def translate(e: BaseException, what: str, repo: str, fetch: str) -> ModelLoadError | None:
    """A :class:`ModelLoadError` for the failures people can fix, or ``None`` to let ``e`` through."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled

    chain = _chain(e)
    text = " ".join(str(x) for x in chain)
    said = f"[{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}]"[:300]
    if any(isinstance(x, torch.cuda.OutOfMemoryError) for x in chain) or "can't allocate memory" in text:
        return ModelLoadError(
            f"out of memory while loading {what}. Load in bfloat16 (dtype='bfloat16', the GPU default), use "
            "narrower SAEs (a width_16k template), free the GPU (del old models, torch.cuda.empty_cache()), or "
            f"run a smaller profile ('gemma-2-2b', or 'tiny' on a CPU). {said}")
    if any(isinstance(x, GatedRepoError) for x in chain) or "gated repo" in text.lower():
        return ModelLoadError(
            f"{repo} is a gated repository: accept the licence at https://huggingface.co/{repo}, then log in: "
            "notebook_login() in a notebook, `hf auth login` in a shell, or set HF_TOKEN (a Colab secret reaches only "
            "the notebook itself: dspa_lite.loading.colab.export_hf_token() passes it to `!` commands), then load "
            f"{what} again. {said}")
    offline = any(isinstance(x, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for x in chain) or any(
        s in text.lower() for s in ("couldn't connect", "offline mode", "cannot find the requested files"))
    if offline:
        import huggingface_hub.constants as hub

        return ModelLoadError(
            f"could not load {what}: {repo} is not in the Hugging Face cache ({hub.HF_HUB_CACHE}) and the hub "
            f"cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}, or no network). {fetch} "
            "where there is network (into the same cache), or load local copies with "
            f"profile.with_paths(model_path=..., sae_paths={{layer: folder}}). {said}")
    if "does not recognize this architecture" in text or ("model type" in text and "not recognized" in text):
        import transformers

        return ModelLoadError(
            f"transformers {transformers.__version__} cannot build {what}: upgrade it (Gemma-2 needs >= 4.42, "
            f"Qwen3 >= 4.51): pip install -U transformers. {said}")
    return None


@contextlib.contextmanager
def translated(what: str, repo: str, fetch: str):
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - translated when we know the cause, re-raised unchanged otherwise
        if (err := translate(e, what, repo, fetch)) is not None:
            raise err from e
        raise

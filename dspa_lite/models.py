"""Load a profile's causal LM, tokenizer and SAEs (hub ids or local folders), with errors people can act on.

``load(profile)`` goes through ``AutoModelForCausalLM`` / ``AutoTokenizer`` (never
``trust_remote_code``); ``load_sae(profile, layer)`` through ``sae_lens.SAE.from_pretrained`` or
``SAE.load_from_disk``; ``load_all(profile)`` returns ``(model, tokenizer, sae_in, sae_out)``.
The same functions load the real models and the tiny hub-layout checkpoints of the offline tests.

SAEs stay in float32 even next to a bfloat16 model: the hook code casts the residual to the SAE's
dtype and the edit back to the model's (``features.sae_encode``, ``dspa.LatentEdit``).

Whatever goes wrong while loading (no network and no cached copy, a gated model without a token,
out of memory, an SAE for another model or layer) surfaces as one :class:`ModelLoadError` that says
what to do. ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` are read by ``huggingface_hub`` at
import only; notebooks set them later, so each call here re-reads them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from . import config
from .hooks import check_layer, decoder_layers
from .profiles import PROFILES, Profile, get_profile

__all__ = ["ModelLoadError", "load", "load_all", "load_sae", "residual_module", "resolve_dtype"]


class ModelLoadError(RuntimeError):
    """A model, tokenizer or SAE could not be loaded or does not fit; the message says what to do."""


def resolve_dtype(profile: Profile, device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given, else the profile's dtype on a GPU that supports it, and float32 elsewhere.

    >>> resolve_dtype(PROFILES["gemma-2-2b"], torch.device("cpu"))
    torch.float32
    """
    if dtype is not None:
        resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
            raise ValueError(f"dtype={dtype!r} is not a floating-point torch dtype; use 'bfloat16' or 'float32'")
        return resolved
    wanted = getattr(torch, profile.dtype)
    if device.type != "cuda" or wanted == torch.float32:
        return torch.float32
    if wanted == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return torch.float32  # fp16 overflows in Gemma-2's residual stream: fall back to fp32, not fp16
    return wanted


def residual_module(model: nn.Module, layer: int) -> nn.Module:
    """The decoder layer whose output is the residual stream an SAE at ``layer`` reads (``resid_post``)."""
    check_layer(model, layer)
    return decoder_layers(model)[layer]


# --- hub environment and error translation --------------------------------------------------------------


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


@contextlib.contextmanager
def _hub_env():
    """Honour ``HF_HUB_OFFLINE`` and ``HF_HOME``/``HF_HUB_CACHE`` as they are now, not as at import."""
    import huggingface_hub.constants as hub

    saved = {name: getattr(hub, name) for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    try:
        if _true("HF_HUB_OFFLINE") or _true("TRANSFORMERS_OFFLINE"):
            hub.HF_HUB_OFFLINE = True
        if os.environ.get("HF_HUB_CACHE"):
            hub.HF_HUB_CACHE = os.path.expanduser(os.environ["HF_HUB_CACHE"])
        elif os.environ.get("HF_HOME"):
            hub.HF_HUB_CACHE = os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
        yield hub
    finally:
        for name, value in saved.items():
            setattr(hub, name, value)


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _translate(e: BaseException, what: str, repo: str, fetch: str) -> ModelLoadError | None:
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
            f"{repo} is a gated repository: accept the licence at https://huggingface.co/{repo} and run "
            f"`huggingface-cli login` (or `hf auth login`) or set HF_TOKEN, then load {what} again. {said}")
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
def _translated(what: str, repo: str, fetch: str):
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - translated when we know the cause, re-raised unchanged otherwise
        if (err := _translate(e, what, repo, fetch)) is not None:
            raise err from e
        raise


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
        device: default :func:`dspa_lite.config.device`; with several GPUs the model is spread
            over them (``device_map="auto"``).
        dtype: default bfloat16 on a GPU (the profile's dtype), float32 on CPU/MPS.
    """
    profile = get_profile(profile)
    if profile.name == "tiny" and profile.model_path is None:
        world = _toyworld()
        dev = _device(device)
        return world.model.to(dev, resolve_dtype(profile, dev, dtype)), world.tokenizer
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = _device(device)
    torch_dtype = resolve_dtype(profile, dev, dtype)
    source = _local_folder(profile.model_path, profile.name) if profile.model_path else profile.model_id
    what = f"{profile.name} ({source})"
    new_kwarg = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)  # torch_dtype -> dtype
    kwargs: dict = {"dtype" if new_kwarg else "torch_dtype": torch_dtype, "trust_remote_code": False}
    if dev.type == "cuda":  # straight onto the GPU(s): a 9B model staged in CPU RAM would not fit in Colab's
        kwargs["device_map"] = "auto" if torch.cuda.device_count() > 1 and dev.index is None else str(dev)
    with _hub_env() as hub, _translated(what, profile.model_id, f"Download it once (`hf download {source}`)"):
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
    tokenizer.dspa_chat_kwargs = dict(profile.chat_kwargs)  # read by generation.format_prompts
    return model, tokenizer


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else config.device()


def _toyworld():
    from . import toyworld

    return toyworld.load()


def _check_shape(profile: Profile, model: nn.Module) -> None:
    got = (len(decoder_layers(model)), model.config.hidden_size)
    if got != (profile.n_layers, profile.d_model):
        raise ModelLoadError(
            f"the model loaded for profile {profile.name!r} from {profile.model_path or profile.model_id} has "
            f"{got[0]} layers of hidden size {got[1]}, but the profile says {profile.n_layers} x {profile.d_model}: "
            "is model_path a copy of another model? (For a different model, make a profile for it with "
            "dataclasses.replace(profile, model_id=..., n_layers=..., d_model=..., l_in=..., l_out=...).)")


# --- SAEs -----------------------------------------------------------------------------------------------


def _guess(d_in: int) -> str:
    names = [p.name for p in PROFILES.values() if p.d_model == d_in]
    return f"the SAE for {' / '.join(names)}" if names else "an SAE for another model"


def load_sae(profile: Profile | str, layer: int, device: str | torch.device | None = None, *,
             model: nn.Module | None = None):
    """The profile's SAE at ``layer``, in float32, checked against the model (or the profile's ``d_model``).

    From ``profile.sae_path(layer)`` if :meth:`Profile.with_paths` set one, else
    ``SAE.from_pretrained(profile.sae_release, profile.sae_id(layer))``. The SAE's metadata records
    the release and id either way, so fitted maps name the SAE the same from a local copy.

    Args:
        device: default: the device of ``model``'s layer ``layer`` if a model is given, else
            :func:`dspa_lite.config.device`.
    """
    profile = get_profile(profile)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < profile.n_layers:
        raise ModelLoadError(f"layer={layer!r}: {profile.name} has {profile.n_layers} layers "
                             f"(0..{profile.n_layers - 1})")
    if model is not None:
        check_layer(model, layer)
        dev = torch.device(device) if device is not None else next(residual_module(model, layer).parameters()).device
    else:
        dev = _device(device)
    sid = profile.sae_id(layer)
    path = profile.sae_path(layer)
    if path is not None:
        sae = _load_local_sae(path, dev)
        where = str(path)
    elif profile.name == "tiny":
        sae = _toy_sae(layer).to(dev)
        where = "the toy world"
    else:
        sae = _load_hub_sae(profile, layer, sid, dev)
        where = f"{profile.sae_release}/{sid}"
    sae = sae.to(torch.float32)  # fp32 next to a bf16 model: the hooks cast at the hook
    sae.cfg.dtype = "float32"
    meta = sae.cfg.metadata
    if profile.sae_release and not meta.release:
        meta.release, meta.sae_id = profile.sae_release, sid
    _check_sae(profile, layer, sae, where, model)
    return sae


def _load_local_sae(path: Path, dev: torch.device):
    from .sae import load_from_disk

    try:
        return load_from_disk(path, device=dev)
    except FileNotFoundError as e:
        raise ModelLoadError(f"{e}; write one with sae.save_model(folder), e.g. after SAE.from_pretrained "
                             "on a machine with network") from None


def _toy_sae(layer: int):
    world = _toyworld()
    saes = {world.l_in: world.sae_in, world.l_out: world.sae_out}
    if layer not in saes:
        raise ModelLoadError(f"the toy world has SAEs at layers {world.l_in} and {world.l_out} only, not {layer}")
    return saes[layer]


def _load_hub_sae(profile: Profile, layer: int, sid: str, dev: torch.device):
    import sae_lens
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release = profile.sae_release
    if release is None:
        raise ModelLoadError(f"profile {profile.name!r} has no SAE release: pass a local folder with "
                             f"profile.with_paths(sae_paths={{{layer}: folder}})")
    entry = get_pretrained_saes_directory().get(release)  # sae-lens's registry, read offline
    if entry is None and "/" not in release:  # a name with a slash is a hub repo id, which sae-lens also takes
        raise ModelLoadError(
            f"sae-lens {sae_lens.__version__} does not list the release {release!r}: upgrade it "
            "(pip install -U sae-lens) or pass local SAE folders with profile.with_paths(sae_paths=...)")
    if entry is not None and sid not in entry.saes_map:
        layers = profile.registry_layers()
        have = f"layers {', '.join(map(str, layers))}" if layers else "no layer"
        raise ModelLoadError(
            f"no SAE {sid!r} in release {release!r} for layer {layer} of {profile.name}: with the template "
            f"{profile.sae_id_template!r} the registry has {have}. Choose one of those layers "
            "(dataclasses.replace(profile, l_in=..., l_out=...)) or another width in sae_id_template")
    fetch = f"Load it once (SAE.from_pretrained({release!r}, {sid!r}) caches just this SAE)"
    with _hub_env(), _translated(f"the SAE {release}/{sid}", entry.repo_id if entry else release, fetch):
        sae = SAE.from_pretrained(release, sid, device=str(dev), dtype="float32")
    return sae.eval().requires_grad_(False)


def _check_sae(profile: Profile, layer: int, sae, where: str, model: nn.Module | None) -> None:
    from .dspa import sae_layer

    hidden = model.config.hidden_size if model is not None else profile.d_model
    if sae.cfg.d_in != hidden:
        said = f" (its cfg names model {sae.cfg.metadata.model_name!r})" if sae.cfg.metadata.model_name else ""
        raise ModelLoadError(
            f"SAE expects d_in={sae.cfg.d_in} but layer {layer} of {profile.name} has hidden size {hidden}: "
            f"did you pass {_guess(sae.cfg.d_in)}? The SAE came from {where}{said}")
    try:
        read = sae_layer(sae)
    except ValueError:
        return  # no layer in the hook name: nothing to check
    if read != layer:
        raise ModelLoadError(
            f"the SAE from {where} reads layer {read} (hook {sae.cfg.metadata.hook_name!r}) but was loaded as "
            f"the SAE of layer {layer}: check the layer keys of sae_paths")


def load_all(profile: Profile | str, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None):
    """``(model, tokenizer, sae_in, sae_out)`` for the profile's ``l_in`` and ``l_out``.

    The SAEs sit on the devices of their layers, in float32, checked against the model.
    """
    profile = get_profile(profile)
    if profile.name == "tiny" and profile.model_path is None and not profile.sae_paths:
        world = _toyworld()
        dev = _device(device)
        return world.model.to(dev), world.tokenizer, world.sae_in.to(dev), world.sae_out.to(dev)
    model, tokenizer = load(profile, device, dtype)
    sae_in = load_sae(profile, profile.l_in, model=model)
    sae_out = load_sae(profile, profile.l_out, model=model)
    return model, tokenizer, sae_in, sae_out

"""Load a profile's SAEs: a sae-lens release from the hub, a local sae-lens folder, or the builtin world's.

All SAEs are sae-lens objects (``sae_lens.SAE``), kept in float32 even next to a bfloat16 model (the
hook code casts at the hook), and checked against the model before they are returned.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..method.checks import check_finite_weights
from ..method.hooks import check_layer, decoder_layers
from ..method.saes import check_sae
from . import config
from .hub import ModelLoadError, hub_env, translated
from .profiles import PROFILES, Profile, get_profile

__all__ = ["load_from_disk", "load_sae"]


def load_from_disk(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load an SAE saved in sae-lens layout (``cfg.json`` + ``sae_weights.safetensors``)."""
    from sae_lens import SAE

    path = Path(path)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"no SAE at {path}: {name} is missing (an sae-lens folder holds cfg.json and "
                                    "sae_weights.safetensors)")
    sae = SAE.load_from_disk(str(path), device=str(device))
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    check_finite_weights(sae, f"the SAE at {path}")
    return sae


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
            :func:`dspa_lite.loading.config.device`.
    """
    profile = get_profile(profile)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < profile.n_layers:
        raise ModelLoadError(f"layer={layer!r}: {profile.name} has {profile.n_layers} layers "
                             f"(0..{profile.n_layers - 1})")
    if model is not None:
        check_layer(model, layer)
        dev = torch.device(device) if device is not None else next(decoder_layers(model)[layer].parameters()).device
    else:
        dev = config.device(device)
    sid = profile.sae_id(layer)
    path = profile.sae_path(layer)
    if path is not None:
        sae = _load_local_sae(path, dev)
        where = str(path)
    elif profile.builtin:
        sae = _builtin_sae(profile, layer).to(dev)
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
    check_finite_weights(sae, f"the SAE from {where}")
    return sae


def _load_local_sae(path: Path, dev: torch.device):
    try:
        return load_from_disk(path, device=dev)
    except FileNotFoundError as e:
        raise ModelLoadError(f"{e}; write one with sae.save_model(folder), e.g. after SAE.from_pretrained "
                             "on a machine with network") from None


def _builtin_sae(profile: Profile, layer: int):
    world = profile.builtin_world()
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
    with hub_env(), translated(f"the SAE {release}/{sid}", entry.repo_id if entry else release, fetch):
        sae = SAE.from_pretrained(release, sid, device=str(dev), dtype="float32")
    return sae.eval().requires_grad_(False)


def _check_sae(profile: Profile, layer: int, sae, where: str, model: nn.Module | None) -> None:
    hidden = model.config.hidden_size if model is not None else profile.d_model
    try:
        check_sae(sae, layer, "SAE", hidden_size=hidden, model_name=profile.name)
    except ValueError as e:
        said = f" (its cfg names model {sae.cfg.metadata.model_name!r})" if sae.cfg.metadata.model_name else ""
        hint = (f"Did you pass {_guess(sae.cfg.d_in)}?" if sae.cfg.d_in != hidden
                else "Check the layer keys of sae_paths.")
        raise ModelLoadError(f"{e} {hint} The SAE came from {where}{said}") from None

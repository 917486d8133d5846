"""Model profiles: which model, which SAEs, which layers, and what it costs (docs/design.md §4).

A :class:`Profile` names everything a chapter needs to run DSPA on one model: the Hugging Face
model id, the sae-lens release and id template of its residual SAEs, the default input/output
layers ``l_in``/``l_out``, the dtype on a GPU, and rough memory/time estimates.
:func:`dspa_lite.loading.models.load_all` turns a profile into ``(model, tokenizer, sae_in, sae_out)``.

``Profile.with_paths(model_path=..., sae_paths={layer: folder})`` returns a copy that loads from
local folders instead of the hub: for pre-downloaded weights, and for the offline tests, which
build tiny random-weight checkpoints in the hub's layout (``tests/hubfixtures.py``).

The SAE ids below were checked against the registry sae-lens ships
(``sae_lens/pretrained_saes.yaml``, read offline by :func:`registry_ids`); ``tests/test_realpath.py``
checks them again for the installed version.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PROFILES", "ConfigError", "Profile", "SettingError", "get_profile", "registry_ids"]

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A setting (a profile name, an environment variable) has a value we cannot use."""


class SettingError(ConfigError):
    """An environment variable (``DSPA_PROFILE``, ``DSPA_CACHE``, ``DSPA_TOY_SEED``...) has a value we cannot use."""


@dataclass(frozen=True)
class Profile:
    """One model world: model, SAEs, default layers, dtype and cost estimates.

    Args:
        model_id: the Hugging Face model id (also the model's identity in fitted maps).
        sae_release: the sae-lens release (``None``: local SAEs only, as in the toy world).
        sae_id_template: the SAE id with ``{L}`` for the layer, e.g. ``layer_{L}/width_16k/canonical``.
        l_in, l_out: default input (prompt-feature) and output (edited) layers, ``l_in < l_out``.
        d_mlp, n_heads, n_kv_heads, head_dim, vocab_size, tied_embeddings: the rest of the model's shape
            (from its ``config.json``), read by the FLOP counts.
        dtype: the model dtype on a GPU; on a CPU models load in float32.
        d_sae: width of the SAEs named by the template.
        est_minutes_a100: chapter 07's pipeline on one A100 (see ``est_note``); ``None`` if not meant for one.
        chat_template_kwargs: extra template variables, as pairs (Qwen3: ``enable_thinking=False`` for
            direct answers); :attr:`chat_kwargs` gives them as a dict.
        model_path, sae_paths: local folders that replace the hub (set with :meth:`with_paths`).
        builtin: ``"module:function"`` that returns a world object with ``model``, ``tokenizer``, ``sae_in``,
            ``sae_out``, ``l_in`` and ``l_out`` instead of the hub (the toy world); imported by name when
            loaded, so that loading code does not import the toy world.
    """

    name: str
    model_id: str
    sae_release: str | None
    sae_id_template: str
    l_in: int
    l_out: int
    n_layers: int
    d_model: int
    d_sae: int
    # the rest of the model's shape, for FLOP counts (``evaluation.flops.ModelShape.from_profile``)
    d_mlp: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    tied_embeddings: bool = True
    dtype: str = "bfloat16"
    sae_note: str = ""  # which model the SAEs were trained on, and what that implies
    chat_note: str = ""  # the chat template's quirks
    chat_template_kwargs: tuple[tuple[str, Any], ...] = ()  # extra variables for apply_chat_template
    est_minutes_a100: float | None = None
    est_note: str = ""
    model_path: str | None = None
    sae_paths: tuple[tuple[int, str], ...] = ()
    builtin: str | None = None  # "module:function" returning a world with model, tokenizer and SAEs (the toy world)

    def __post_init__(self) -> None:
        if "{L}" not in self.sae_id_template:
            raise ValueError(f"profile {self.name!r}: sae_id_template={self.sae_id_template!r} needs a {{L}} "
                             "placeholder for the layer, e.g. 'layer_{L}/width_16k/canonical'")
        if not 0 <= self.l_in < self.l_out < self.n_layers:
            raise ValueError(f"profile {self.name!r}: need 0 <= l_in < l_out < n_layers, got l_in={self.l_in}, "
                             f"l_out={self.l_out}, n_layers={self.n_layers} (DSPA conditions on an earlier layer "
                             "and edits a later one)")
        if self.dtype not in DTYPES:
            raise ValueError(f"profile {self.name!r}: dtype={self.dtype!r}; choose one of {', '.join(DTYPES)}")
        for layer, _ in self.sae_paths:
            if not 0 <= layer < self.n_layers:
                raise ValueError(f"profile {self.name!r}: sae_paths has layer {layer}, but the model has "
                                 f"{self.n_layers} layers (0..{self.n_layers - 1})")

    def builtin_world(self):
        """The world object named by :attr:`builtin` (the toy world), imported when asked for."""
        if not self.builtin:
            raise ConfigError(f"profile {self.name!r} has no builtin world; it loads from the hub or local folders")
        module, _, function = self.builtin.partition(":")
        return getattr(importlib.import_module(module), function)()

    def sae_id(self, layer: int) -> str:
        """The SAE id of ``layer`` in :attr:`sae_release`.

        >>> PROFILES["gemma-2-2b"].sae_id(12)
        'layer_12/width_16k/canonical'
        """
        return self.sae_id_template.format(L=layer)

    @property
    def chat_kwargs(self) -> dict[str, Any]:
        """Keyword arguments to pass to ``tokenizer.apply_chat_template`` (e.g. Qwen3's ``enable_thinking``)."""
        return dict(self.chat_template_kwargs)

    @property
    def est_gpu_memory_gb(self) -> float:
        """Modelled GB on a GPU in :attr:`dtype` at ``dspa-lite pipeline``'s sizes: resident weights, SAEs and map
        plus the largest stage (:mod:`dspa_lite.loading.memory`, the one memory model; its ``plan`` is the gate)."""
        from .memory import need_bytes

        return round(need_bytes(self) / 1e9, 1)

    def sae_path(self, layer: int) -> Path | None:
        """The local SAE folder for ``layer``, if :meth:`with_paths` set one."""
        return next((Path(p) for lay, p in self.sae_paths if lay == layer), None)

    def registry_layers(self) -> list[int]:
        """Layers whose id (by the template) exists in sae-lens's registry; empty if the release is not listed."""
        pattern = re.compile(re.escape(self.sae_id_template).replace(re.escape("{L}"), r"(\d+)") + "$")
        return sorted(int(m.group(1)) for sid in registry_ids(self.sae_release) if (m := pattern.match(sid)))

    def with_paths(self, model_path: str | Path | None = None,
                   sae_paths: Mapping[int, str | Path] | None = None) -> Profile:
        """A copy that loads the model and/or the SAEs of some layers from local folders.

        ``model_path`` is a folder in the hub's layout (``config.json``, ``*.safetensors``,
        tokenizer files); ``sae_paths`` maps layers to sae-lens folders (``cfg.json`` +
        ``sae_weights.safetensors``, as ``SAE.save_model`` writes). Layers not in ``sae_paths``
        still load from the hub. The model keeps its identity (``model_id``) in fitted maps, so a
        map fitted on a local copy applies to the hub model and back.

        >>> p = PROFILES["gemma-2-2b"].with_paths(sae_paths={12: "/data/sae12"})
        >>> p.sae_path(12), p.sae_path(20), p.model_path
        (PosixPath('/data/sae12'), None, None)
        """
        merged = dict(self.sae_paths) | {int(k): str(Path(v).expanduser()) for k, v in (sae_paths or {}).items()}
        return dataclasses.replace(
            self,
            model_path=str(Path(model_path).expanduser()) if model_path is not None else self.model_path,
            sae_paths=tuple(sorted(merged.items())),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for a notebook's setup cell."""
        where = f" (local model {self.model_path})" if self.model_path else ""
        return (f"{self.name}: {self.model_id}{where}, SAEs {self.sae_release or 'local'} "
                f"{self.sae_id(self.l_in)} -> {self.sae_id(self.l_out)}, ~{self.est_gpu_memory_gb:g} GB on GPU")


def registry_ids(release: str | None) -> list[str]:
    """The SAE ids sae-lens's own registry lists for ``release`` (an offline read of its YAML).

    >>> "layer_20/width_16k/canonical" in registry_ids("gemma-scope-2b-pt-res-canonical")
    True
    """
    if release is None:
        return []
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory().get(release)
    return list(entry.saes_map) if entry is not None else []


_EST_NOTE = ("rough planning figure, not a measurement: load, fit on 250 triples, generate 80 answers of up to 512 "
             "tokens for none/static/DSPA, multiple-choice with and without DSPA; a T4 (float32, no bf16 tensor cores) is "
             "several times slower, as chapter 07's modelled table shows "
             "(`dspa-lite pipeline --dry-run` prints the full benchmark's plan; a run records each stage's wall time "
             "in timings.json)")
_GEMMA_CHAT = ("Gemma's chat template writes <bos> itself, names the assistant 'model', trims each message and "
               "raises on a 'system' role: put instructions in the user turn")

# Default layers. DSPA reads prompt features at an early/mid layer (l_in) and edits a later one (l_out):
# the prompt's topic and intent are well formed by mid-depth, while the discourse and style features the
# paper's audit finds in the edits live late; l_out still leaves a quarter of the model to turn an edit
# into fluent tokens. Every default below has a canonical width-16k (Gemma) / every-layer (Qwen) SAE in
# the registry; the Gemma picks are also the layers Gemma Scope released extra widths for.
_GEMMA_2B = Profile(
    # 26 layers: l_in=12 (46% depth, the layer with every Gemma Scope width), l_out=20 (77% depth).
    name="gemma-2-2b", model_id="google/gemma-2-2b", sae_release="gemma-scope-2b-pt-res-canonical",
    sae_id_template="layer_{L}/width_16k/canonical", l_in=12, l_out=20, n_layers=26, d_model=2304, d_sae=16384,
    d_mlp=9216, n_heads=8, n_kv_heads=4, head_dim=256, vocab_size=256000,
    sae_note="Gemma Scope JumpReLU SAEs trained on this (pre-trained) model's residual stream",
    chat_note="a base model: it has Gemma's chat template but was not trained on it. " + _GEMMA_CHAT,
    est_minutes_a100=15.0, est_note=_EST_NOTE,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(
        # The toy world (dspa_lite.toyworld): its own Gemma-2-architecture model and sae-lens SAEs,
        # shipped with the package; l_in/l_out follow ToyConfig.
        name="tiny", model_id="dspa-lite/toy", sae_release=None, sae_id_template="layer_{L}/width_1024",
        l_in=1, l_out=2, n_layers=4, d_model=128, d_sae=1024, dtype="float32",
        d_mlp=512, n_heads=4, n_kv_heads=2, head_dim=32, vocab_size=193,
        sae_note="standard (ReLU + L1) SAEs trained by dspa_lite on the toy model itself",
        chat_note="a word-level toy template: <bos> <start_of_turn> user ... <end_of_turn> <start_of_turn> model",
        est_minutes_a100=None,
        est_note="ships with the package (worlds of other seeds build in about five minutes); runs on a CPU",
        builtin="dspa_lite.toyworld:load",
    ),
    _GEMMA_2B,
    dataclasses.replace(  # the same shapes, layers and (pre-trained) SAEs
        _GEMMA_2B, name="gemma-2-2b-it", model_id="google/gemma-2-2b-it", chat_note=_GEMMA_CHAT,
        sae_note="the SAEs were trained on the Base model (gemma-2-2b), not on -it: applying them here is a "
                 "transfer assumption (Gemma Scope reports that its pt SAEs reconstruct -it activations well)",
    ),
    Profile(
        # 42 layers: l_in=20 (48%), l_out=31 (74%); both also have gemma-scope-9b-it-res-canonical SAEs
        # (layers 9, 20, 31 only), so switching to the -it model and its SAEs keeps the layers.
        name="gemma-2-9b", model_id="google/gemma-2-9b", sae_release="gemma-scope-9b-pt-res-canonical",
        sae_id_template="layer_{L}/width_16k/canonical", l_in=20, l_out=31, n_layers=42, d_model=3584,
        d_sae=16384, d_mlp=14336, n_heads=16, n_kv_heads=8, head_dim=256, vocab_size=256000,
        sae_note="Gemma Scope JumpReLU SAEs trained on this (pre-trained) model's residual stream",
        chat_note="a base model. " + _GEMMA_CHAT,
        est_minutes_a100=35.0, est_note=_EST_NOTE + "; needs a 40 GB or larger GPU",
    ),
    Profile(
        # 36 layers: l_in=18 (50%), l_out=27 (75%). Qwen-Scope has an SAE at every layer (layer0..layer35).
        name="qwen3-8b", model_id="Qwen/Qwen3-8B", sae_release="qwen-scope-3-8b-base-w64k-l100",
        sae_id_template="layer{L}", l_in=18, l_out=27, n_layers=36, d_model=4096, d_sae=65536,
        d_mlp=12288, n_heads=32, n_kv_heads=8, head_dim=128, vocab_size=151936, tied_embeddings=False,  # untied head
        sae_note="Qwen-Scope TopK SAEs (k=100, width 64k) trained on Qwen3-8B-Base, not on the post-trained "
                 "Qwen3-8B: applying them here is a transfer assumption the results depend on",
        chat_note="ChatML (<|im_start|>user ... <|im_end|>), no BOS token; Qwen3 thinks (<think>...</think>) "
                  "before answering unless the template gets enable_thinking=False (chat_kwargs)",
        chat_template_kwargs=(("enable_thinking", False),),
        est_minutes_a100=30.0, est_note=_EST_NOTE + "; needs a 40 GB or larger GPU",
    ),
)}


def get_profile(name: str | Profile) -> Profile:
    """The profile called ``name`` (a :class:`Profile` is returned as is).

    >>> get_profile("gemma-3")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dspa_lite.loading.profiles.ConfigError: unknown profile 'gemma-3'; known profiles: tiny, gemma-2-2b, ..., qwen3-8b
    """
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}")
    return PROFILES[name]

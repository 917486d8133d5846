"""The toy preference world: a small language with known preferences, a ~1M-parameter Gemma-2 trained on it,
two SAEs trained with sae-lens, preference triples, a quiz, and a judge that knows the ground truth.

``load()`` returns a :class:`ToyWorld`: the reference world (seed 0) that ships with the package, or, for
another seed (``DSPA_TOY_SEED``), one built once (about five minutes on one CPU thread, with progress bars
on stderr) into ``DSPA_CACHE/toyworld/<config-hash>/``.

Modules, lowest first: ``language`` (the styles, categories and judge), ``store`` (manifests, locks,
where worlds live), ``data`` (the world's text from its config), ``world`` (a built world read back),
``report`` (what a world measures about itself), ``audit`` (scoring what a steerer edits against the
ground truth), ``build`` (training it all) and ``loader`` (``load`` and ``build_into``).
"""

from . import language
from .data import ToyConfig, base_response
from .loader import build_into, load, world_path
from .report import style_activity, style_latents
from .store import WorldError
from .world import ToyWorld

__all__ = ["ToyConfig", "ToyWorld", "WorldError", "base_response", "build_into", "language", "load",
           "style_activity", "style_latents", "world_path"]

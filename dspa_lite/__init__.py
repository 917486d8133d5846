"""dspa_lite: Dynamic SAE Steering for Preference Alignment (arXiv 2603.21461), small and readable.

The stable public names: :func:`generate`, :func:`fit_cdmap`, :class:`DSPA`, :class:`CDMap`,
:func:`estimate_map`, and the embedded toy world :mod:`dspa_lite.toyworld`.
"""

from importlib.metadata import PackageNotFoundError, version

from . import toyworld
from .cdmap import CDMap, CDMapConfig, estimate_map
from .data import PreferenceTriple
from .dspa import DSPA, fit_cdmap
from .generation import generate

try:
    __version__ = version("dspa-lite")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["DSPA", "CDMap", "CDMapConfig", "PreferenceTriple", "estimate_map", "fit_cdmap", "generate", "toyworld",
           "__version__"]

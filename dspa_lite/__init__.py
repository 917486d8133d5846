"""dspa_lite: Dynamic SAE Steering for Preference Alignment (arXiv 2603.21461), small and readable.

The stable public names: :func:`generate`, :func:`fit_cdmap`, :class:`DSPA`, :class:`CDMap`, :class:`CDMapConfig`,
:func:`estimate_map`, :class:`PreferenceTriple`, and the toy world's ``dspa_lite.toyworld.load``.

The layers, lowest first (a module imports only from its own layer or lower ones):

- :mod:`dspa_lite.method`: the method itself (features, the map, the edit, the baselines);
- :mod:`dspa_lite.loading`: settings, model profiles, loading real models, SAEs and preference data;
- :mod:`dspa_lite.evaluation`: judges, benchmarks, FLOPs, fine-tuning baselines, experiments;
- :mod:`dspa_lite.toyworld`: the offline toy world with its ground truth;
- :mod:`dspa_lite.notebook`: widgets and exercise checks for the book;
- :mod:`dspa_lite.cli`: the ``dspa-lite`` command.

How the paper's equations map onto functions: docs/design.md in the repository.
"""

from importlib.metadata import PackageNotFoundError, version

from .method.cdmap import CDMap, CDMapConfig, estimate_map
from .method.dspa import DSPA, fit_cdmap
from .method.generation import generate
from .method.triples import PreferenceTriple

try:
    __version__ = version("dspa-lite")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["DSPA", "CDMap", "CDMapConfig", "PreferenceTriple", "estimate_map", "fit_cdmap", "generate", "__version__"]

"""Check functions for the book's exercises: each runs the reader's function on cases with known
answers and explains the first mistake it finds, in the manner of ARENA's ``tests.test_x(fn)``.

Every check prints a one-line confirmation when the function is right and raises
``AssertionError`` with a diagnosis when it is not.
"""

from .core import attempt
from .evaluation import (
    check_nested_subsets,
    check_pairwise_win_rate,
    check_precision_at_k,
    check_saved_by_stopping,
    check_training_steps,
)
from .method import (
    check_delta,
    check_dominant_style,
    check_preferred_share,
    check_prompt_features,
    check_ridge,
)
from .representations import check_fve, check_static_sets, check_style_labels

__all__ = [
    "attempt",
    "check_delta",
    "check_dominant_style",
    "check_fve",
    "check_nested_subsets",
    "check_pairwise_win_rate",
    "check_precision_at_k",
    "check_preferred_share",
    "check_prompt_features",
    "check_ridge",
    "check_saved_by_stopping",
    "check_static_sets",
    "check_style_labels",
    "check_training_steps",
]

"""What an optimizer is: primitive update terms, the genome built from them, its search space and JSON form.

The lowest layer: it imports nothing else from optsearch but ``errors``.
"""

from __future__ import annotations

from optsearch.genome.core import (
    ALPHA_RANGE,
    BOOL_GENES,
    CLIP_CHOICES,
    EXTRA_CHOICES,
    FLOAT_RANGES,
    FORMAT_VERSION,
    K,
    LATER_GENES,
    NAMED,
    SIGN_CHOICES,
    Genome,
    define_search_space,
    search_space,
    upgrade_params,
)
from optsearch.genome.named import BASELINES, resolve  # also fills NAMED

__all__ = [
    "ALPHA_RANGE", "BASELINES", "BOOL_GENES", "CLIP_CHOICES", "EXTRA_CHOICES", "FLOAT_RANGES", "FORMAT_VERSION", "K", "LATER_GENES", "NAMED", "SIGN_CHOICES",
    "Genome", "define_search_space", "resolve", "search_space", "upgrade_params",
]

"""Parent selection: a tournament over positions in a ranked pool (0 = best)."""

from __future__ import annotations

import numpy as np


def tournament_select(n: int, rng: np.random.Generator, exclude: int | None = None, *, k: int) -> int:
    """Position of the winner of a size-``k`` tournament over a ranked pool of ``n`` (0 = best).

    ``exclude`` (the other parent) does not enter, unless it is the only candidate.
    """
    candidates = [i for i in range(n) if i != exclude] or list(range(n))
    entrants = rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
    return candidates[int(entrants.min())]

"""Parent selection: a tournament over positions in a ranked pool (0 = best)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def tournament_select(n: int, rng: np.random.Generator, exclude: int | None = None, *, k: int) -> int:
    """Position of the winner of a size-``k`` tournament over a ranked pool of ``n`` (0 = best).

    ``exclude`` (the other parent) does not enter, unless it is the only candidate.
    """
    candidates = [i for i in range(n) if i != exclude] or list(range(n))
    entrants = rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
    return candidates[int(entrants.min())]


@dataclass(frozen=True, kw_only=True)
class TournamentSelection:
    """Selection strategy: ``(n, rng, exclude) -> position`` of a parent in a ranked pool of ``n``.

    On a pool ranked by NSGA-II's crowded comparison this is NSGA-II's crowded tournament.
    """

    size: int = 3
    """Entrants per tournament (1 = uniform over the pool)."""

    def __call__(self, n: int, rng: np.random.Generator, exclude: int | None = None) -> int:
        return tournament_select(n, rng, exclude, k=self.size)

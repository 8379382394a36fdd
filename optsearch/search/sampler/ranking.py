"""Ranking a generation best first: by fitness, or NSGA-II's fronts and crowding distance.

A position in the ranked list is the crowded-comparison order, so a tournament on positions is
NSGA-II's crowded tournament and a prefix of the list is the elite set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from optuna.samplers.nsgaii._elite_population_selection_strategy import _calc_crowding_distance
from optuna.study import StudyDirection
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import FrozenTrial

from optsearch.search.sampler.slots import MEMBER_KEY


def trial_order(t: FrozenTrial) -> tuple[int, int]:
    """Deterministic tie order: member index, then trial number."""
    return int(t.system_attrs.get(MEMBER_KEY, 0)), t.number


def rank_by_fitness(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """Best first by the single objective; ties keep member order."""
    sign = 1.0 if directions[0] == StudyDirection.MAXIMIZE else -1.0
    return sorted(sorted(trials, key=trial_order), key=lambda t: -sign * t.value)


def rank_nsga2(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """NSGA-II order: non-dominated fronts in turn, each by crowding distance (largest first)."""
    if not trials:
        return []
    trials = sorted(trials, key=trial_order)
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    ranks = _fast_non_domination_rank(np.array([t.values for t in trials], dtype=float) * signs)
    ranked: list[FrozenTrial] = []
    for r in range(int(ranks.max()) + 1):
        front = [t for t, rk in zip(trials, ranks) if rk == r]
        distance = _calc_crowding_distance(list(front))  # sorts its argument: pass a copy
        ranked.extend(sorted(front, key=lambda t: -distance[t.number]))
    return ranked

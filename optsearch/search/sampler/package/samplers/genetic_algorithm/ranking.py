"""Ranking a generation best first: by fitness, or NSGA-II's fronts and crowding distance; NSGA-II survival.

A position in the ranked list is the crowded-comparison order, so a tournament on positions is
NSGA-II's crowded tournament and a prefix of the list is the elite set.

Inside a front the order is: the best point of each objective first (objectives in a seeded random
order, so with fewer elites than objectives no task is always favoured), then decreasing crowding
distance. Every boundary point of a front has infinite distance — the *worst* point of an objective
as much as the best — so ties are frequent; they are broken by a seeded RNG, never by member index
(which would let low-index members keep winning generation after generation).
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import numpy as np
from optuna.samplers.nsgaii._elite_population_selection_strategy import _calc_crowding_distance
from optuna.study import StudyDirection
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import FrozenTrial

from .slots import MEMBER_KEY, trial_generation


def trial_order(t: FrozenTrial) -> tuple[int, int]:
    """Deterministic base order: member index, then trial number."""
    return int(t.system_attrs.get(MEMBER_KEY, 0)), t.number


def rank_by_fitness(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """Best first by the single objective; ties keep member order."""
    sign = 1.0 if directions[0] == StudyDirection.MAXIMIZE else -1.0
    return sorted(sorted(trials, key=trial_order), key=lambda t: -sign * t.value)


def rank_nsga2(
    trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection], rng: np.random.Generator | None = None
) -> list[FrozenTrial]:
    """NSGA-II order: non-dominated fronts in turn; in each, the objectives' best points, then crowding.

    ``rng`` breaks ties (equal crowding distance, equal best values); ``None`` keeps member order.
    """
    if not trials:
        return []
    trials = sorted(trials, key=trial_order)
    if rng is not None:
        trials = [trials[i] for i in rng.permutation(len(trials))]
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    losses = np.array([t.values for t in trials], dtype=float) * signs  # lower is better
    ranks = _fast_non_domination_rank(losses)
    objectives = list(range(len(directions)))
    if rng is not None:
        objectives = [objectives[i] for i in rng.permutation(len(objectives))]
    ranked: list[FrozenTrial] = []
    for r in range(int(ranks.max()) + 1):
        idx = [i for i in range(len(trials)) if ranks[i] == r]
        first: list[int] = []
        for k in objectives:  # the best point of each objective (the first of ties in the shuffled order)
            best = min(idx, key=lambda i: losses[i, k])
            if best not in first:
                first.append(best)
        front = [trials[i] for i in idx]
        distance = _calc_crowding_distance(list(front))  # sorts its argument: pass a copy
        rest = sorted((i for i in idx if i not in first), key=lambda i: -distance[trials[i].number])  # stable
        ranked.extend(trials[i] for i in first + rest)
    return ranked


def survivors(parents: Sequence[FrozenTrial], children: Sequence[FrozenTrial], size: int,
              rank: Callable[[list[FrozenTrial]], list[FrozenTrial]],
              key: Callable[[FrozenTrial], Hashable]) -> list[FrozenTrial]:
    """NSGA-II survival: the ``size`` best of parents + children, ranked by ``rank(trials)``.

    Parameters equal by ``key`` (an elite re-measured as a child member) count once, by the newest
    trial, whose value averages all its evaluations.
    """
    newest: dict[Hashable, FrozenTrial] = {}
    for t in [*parents, *children]:
        key_ = key(t)
        old = newest.get(key_)
        if old is None or (trial_generation(t) or 0, t.number) > (trial_generation(old) or 0, old.number):
            newest[key_] = t
    return rank(list(newest.values()))[:size]

"""One analysis of one objective: the loaded trials with their importances and principles.

:func:`analyze` computes, nothing is written: the figures (:mod:`optsearch.analysis.figures`) draw
an :class:`Analysis` and the report (:mod:`optsearch.analysis.report`) writes it, so each of them
can be used (or replaced) on its own.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from optsearch.analysis.adjusted import adjusted_principles
from optsearch.analysis.data import StudyData
from optsearch.analysis.evolution import Member, read_members
from optsearch.analysis.child import in_child
from optsearch.analysis.importance import Features, Importance, compute_importance, fanova, genome_features, unit_view
from optsearch.analysis.principles import (ALPHA, CORRECTION, Principle, continuous_principles, correct,
                                           principles_without_surrogate)


@dataclass
class Analysis:
    """The result of :func:`analyze`: what the figures draw and the report writes.

    ``data`` holds every analysed trial (the history figures draw them all); ``distinct`` the same
    with repeated genomes merged, which is what the importances and principles are computed on.
    """

    data: StudyData
    distinct: StudyData
    features: Features
    importance: Importance
    principles: list[Principle]
    seconds: float = 0.0

    @functools.cached_property
    def members(self) -> list[Member]:
        """Every trial with a generation, read once for the search figures of the report and the dashboard."""
        return read_members(self.data.study)

    @property
    def tests(self) -> int:
        """How many principles were tested (the family the multiple-testing correction spans)."""
        return sum(p.p is not None for p in self.principles)

    def to_dict(self) -> dict[str, Any]:
        d = self.data
        return {
            "study": d.name,
            "objective": d.objective,
            "objective_label": d.label,
            "counts": {**d.counts, "distinct_genomes": len(self.distinct.genomes)},
            "excluded": ("diverged trials carry a sentinel fitness, not a measurement: they are excluded from the "
                         "fitness effects and reported separately as divergence-rate effects; pruned trials have "
                         "no final value and are excluded"),
            "best": {"trial": int(d.numbers[np.argmax(d.y)]), "value": float(d.y.max()),
                     "formula": d.genomes[int(np.argmax(d.y))].formula()},
            "importance": self.importance.to_dict(),
            "correction": {"method": CORRECTION, "alpha": ALPHA, "tests": self.tests,
                           "rule": f"established: 95 % interval excludes 0 and {CORRECTION}-adjusted p ≤ alpha"},
            "principles": [p.to_dict() for p in self.principles],
        }


def _independent(features: Features, d: StudyData, data: StudyData, seed: int) -> tuple[dict, tuple, list[Principle]]:
    """fANOVA's importances, the principles that need no forest and the adjusted principles: the steps that
    need neither the forest nor each other."""
    plain = principles_without_surrogate(d.genomes, d.y, diverged=data.diverged, unit=data.label, seed=seed)
    return (fanova(unit_view(features, d.y)), plain,
            adjusted_principles(d.genomes, d.y, d.generation, unit=data.label, seed=seed))


def analyze(data: StudyData, *, seed: int = 0, in_parallel: bool = True) -> Analysis:
    """Importances and principles of the loaded trials' distinct genomes (nothing is written).

    Repeated genomes are merged first (:meth:`StudyData.distinct`), so the surrogate's K-fold CV is
    grouped by genome (no genome on both sides of a split) and every resampling counts a genome once;
    the effects with the other genes held fixed resample within generations. ``in_parallel``: fANOVA, the
    effects that need no forest and the adjusted effects run in a forked child
    (:func:`~optsearch.analysis.child.in_child`) while this process does the rest; ``False`` runs everything
    here, in order (the same numbers: every estimator has its own seed).
    """
    t0 = time.perf_counter()
    d = data.distinct()
    features = genome_features(d.genomes)
    # fANOVA, the effects and the adjusted effects need neither the forest nor each other: a forked child
    # computes them while this process fits the forest and reads the continuous genes' partial dependence
    # from it (both cores; same numbers, in the same order as compute_principles gives them).
    if in_parallel:
        pending = in_child(_independent, features, d, data, seed)
    else:
        done = _independent(features, d, data, seed)
        pending = lambda: done  # noqa: E731
    imp = compute_importance(d.genomes, d.y, seed=seed, features=features, with_fanova=False)
    continuous = continuous_principles(d.genomes, d.y, surrogate=imp.surrogate, features=features,
                                       unit=data.label, seed=seed)
    fa, (effects, rates), adjusted = pending()
    imp = replace(imp, fanova=fa)
    principles = effects + continuous + rates + adjusted
    correct(principles)  # one family: every test this analysis reports
    return Analysis(data, d, features, imp, principles, time.perf_counter() - t0)


__all__ = ["Analysis", "analyze"]

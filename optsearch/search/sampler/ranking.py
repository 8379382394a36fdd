"""Ranking (by fitness, NSGA-II) from the generic GA core, and the genome's identity for survival and the funnel."""

from __future__ import annotations

from optuna.trial import FrozenTrial

from optsearch.errors import GenomeError
from optsearch.genome import LATER_GENES
from optsearch.genome.core import canonical_key
from optsearch.search.sampler.package.samplers.genetic_algorithm.ranking import (
    rank_by_fitness, rank_nsga2, survivors, trial_order,
)
from optsearch.search.sampler.space import SPACE

__all__ = ["genome_key", "rank_by_fitness", "rank_nsga2", "survivors", "trial_order"]


def genome_key(t: FrozenTrial) -> tuple:
    """A hashable identity of a trial's genome: its canonical form (:meth:`optsearch.genome.Genome.canonical`), so
    two spellings of one optimizer (a silent gene, slot order, a term split over slots) are one genome."""
    try:
        return canonical_key(t.params)
    except GenomeError:  # not a whole genome (a trial that never got its parameters)
        return tuple((n, t.params.get(n, LATER_GENES.get(n))) for n in SPACE)  # an old trial lacks later genes

"""Parent selection: a tournament over positions in a ranked pool (the generic GA core's, re-exported)."""

from __future__ import annotations

from optsearch.search.sampler.package.samplers.genetic_algorithm.operators import (
    TournamentSelection, tournament_select,
)

__all__ = ["TournamentSelection", "tournament_select"]

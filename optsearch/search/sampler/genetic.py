"""GeneticSampler: the generic GA core with the genome's strategies, as the optimizer search uses it."""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from optsearch.errors import ConfigError
from optsearch.genome import Genome
from optsearch.search.control import RELATIVE_ATTR
from optsearch.search.sampler.config import GAConfig
from optsearch.search.sampler.crossover import OnePointCrossover
from optsearch.search.sampler.mutation import AnnealedMutation
from optsearch.search.sampler.package.samplers.genetic_algorithm import GeneticAlgorithmSampler, TournamentSelection
from optsearch.search.sampler.space import SPACE, Params, expressed_genes, genes, has_genome


def _canonical(params: Params) -> Params:
    """A child in the genome's canonical form (what ``Genome`` reads back and writes)."""
    return Genome.from_params(params).to_params()


def _genome_of(params: Mapping[str, Any]) -> Params | None:
    """A trial's genome as a parent (later genes filled with their "absent" value), or None."""
    return genes(params) if has_genome(params) else None


class GeneticSampler(GeneticAlgorithmSampler):
    """Genetic algorithm over the static genome space (see the package docstring).

    Args:
        population_size: Members per generation.
        seed: Seed of every member's random stream; ``None`` picks one (not reproducible).
        config: :class:`GAConfig` or a ``[sampler]`` table.
        ranking: ``(trials, directions) -> ranked trials`` (best first); default by fitness for one
            objective, NSGA-II for several.
        selection: strategy ``(n, rng, exclude) -> position`` in the ranked pool; default
            :class:`TournamentSelection` of ``config.tournament_size``.
        crossover: strategy ``(a, b, rng) -> child params``; default :class:`OnePointCrossover` with
            ``config.swap_prob``.
        mutation: strategy ``(params, rng, generation) -> params``; default :class:`AnnealedMutation`
            with ``config``. Its ``change_one(params, gene, rng)`` (the default's, when it has none)
            forces a visible change on a child that copies a parent.
        fixed_params: genes held at these values in every member (not mutated, not crossed over), e.g. a
            training recipe shared by all genomes.

    Strategies are plain callables (the classes above are small frozen dataclasses), so one can be
    swapped without subclassing, as with ``optuna.samplers.NSGAIISampler(crossover=…)``.
    """

    def __init__(
        self,
        population_size: int,
        seed: int | None = None,
        config: GAConfig | Mapping[str, Any] | None = None,
        *,
        ranking: Callable[[Sequence[FrozenTrial], Sequence[StudyDirection]], list[FrozenTrial]] | None = None,
        selection: Callable[..., int] | None = None,
        crossover: Callable[[Params, Params, np.random.Generator], Params] | None = None,
        mutation: Callable[[Params, np.random.Generator, int], Params] | None = None,
        fixed_params: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 2:
            raise ConfigError(f"population size must be an integer ≥ 2, got {population_size!r}")
        cfg = config if isinstance(config, GAConfig) else GAConfig.from_dict(config)
        cfg.check_population(population_size)
        unknown = sorted(set(fixed_params or {}) - set(SPACE))
        if unknown:
            raise ConfigError(f"fixed gene(s) {', '.join(unknown)} are not genes; known: {', '.join(SPACE)}")
        mutation = mutation or AnnealedMutation(config=cfg)
        if not hasattr(mutation, "change_one"):  # the forced change stays a gene-aware one
            mutation = _WithChangeOne(mutation, AnnealedMutation(config=cfg))
        try:
            super().__init__(
                population_size, seed, search_space=SPACE, fixed_params=fixed_params,
                elites=cfg.elites, crossover_prob=cfg.crossover_prob, slot_retries=cfg.slot_retries,
                initial_params={name: genome.to_params() for name, genome in cfg.seed_genomes()},
                ranking=ranking, selection=selection or TournamentSelection(size=cfg.tournament_size),
                crossover=crossover or OnePointCrossover(swap_prob=cfg.swap_prob), mutation=mutation,
                mutable_params=expressed_genes, repair=_canonical, parent_params=_genome_of,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.config = cfg

    def rank(self, trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection],
             generation: int = 0) -> list[FrozenTrial]:
        """The core's ranking, on values relative to each trial's generation control when the trials carry them
        (:data:`~optsearch.search.control.RELATIVE_ATTR`): an elite's told value averages raw scores from
        generations on other seeds, its relative value does not mix seed difficulty into the comparison."""
        if not trials or not all(isinstance(t.user_attrs.get(RELATIVE_ATTR), list) for t in trials):
            return super().rank(trials, directions, generation)
        shifted = []
        for t in trials:
            c = copy.copy(t)
            rel = [float(v) for v in t.user_attrs[RELATIVE_ATTR]]
            c.values = rel + list(t.values[len(rel):])  # a +memory study's last value is no measurement
            shifted.append(c)
        by_id = {t._trial_id: t for t in trials}
        return [by_id[c._trial_id] for c in super().rank(shifted, directions, generation)]


class _WithChangeOne:
    """A user's mutation strategy, with the default's gene-aware ``change_one``."""

    def __init__(self, mutation: Callable[[Params, np.random.Generator, int], Params], default: AnnealedMutation):
        self._mutation = mutation
        self.change_one = default.change_one

    def __call__(self, params: Params, rng: np.random.Generator, generation: int) -> Params:
        return self._mutation(params, rng, generation)

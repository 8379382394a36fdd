"""GeneticSampler: the Optuna sampler that asks a generation's members and breeds them from the last one."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import RandomSampler
from optuna.samplers._ga import BaseGASampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optsearch.errors import ConfigError
from optsearch.genome import Genome
from optsearch.search.sampler.config import GAConfig
from optsearch.search.sampler.crossover import OnePointCrossover
from optsearch.search.sampler.mutation import AnnealedMutation
from optsearch.search.sampler.ranking import rank_by_fitness, rank_nsga2, survivors
from optsearch.search.sampler.selection import TournamentSelection
from optsearch.search.sampler.slots import (
    CLAIM_POLL, GENERATION_KEY, MEMBER_KEY, ORIGIN_KEY, PARENTS_KEY, REPLACED_KEY, claim_slot, slot_failures,
    trial_generation,
)
from optsearch.search.sampler.space import SPACE, Params, expressed_genes, genes, has_genome, random_params

_LOG = logging.getLogger(__name__)
RANK_STREAM = 2**32 - 1  # third word of the seed sequence of a generation's tie-breaking RNG
SETTLE_WARN = 30.0  # seconds of waiting for a previous generation before saying so


class GeneticSampler(BaseGASampler):
    """Genetic algorithm over the static genome space (see the package docstring).

    Args:
        population_size: Members per generation.
        seed: Seed of every member's random stream; ``None`` picks one (not reproducible).
        config: :class:`GAConfig` or a ``[sampler]`` table.
        ranking: ``(trials, directions) -> ranked trials`` (best first); default
            :func:`rank_by_fitness` for one objective, :func:`rank_nsga2` for several.
        selection: strategy ``(n, rng, exclude) -> position`` in the ranked pool; default
            :class:`TournamentSelection` of ``config.tournament_size``.
        crossover: strategy ``(a, b, rng) -> child params``; default :class:`OnePointCrossover` with
            ``config.swap_prob``.
        mutation: strategy ``(params, rng, generation) -> params``; default :class:`AnnealedMutation`
            with ``config``. A strategy with a ``change_one(params, gene, rng)`` method is also used
            to force a visible change on a child that copies a parent.

    Strategies are plain callables (the classes above are small frozen dataclasses), so one can be
    swapped without subclassing, as with ``optuna.samplers.NSGAIISampler(crossover=…)``.

    Attributes:
        target_generation: When the run loop sets it, newly asked trials join that generation (the
            loop knows when a generation is finished); when ``None`` the fill rule decides (the
            latest generation until it holds ``population_size`` trials that are not FAIL).
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
    ) -> None:
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 2:
            raise ConfigError(f"population size must be an integer ≥ 2, got {population_size!r}")
        cfg = config if isinstance(config, GAConfig) else GAConfig.from_dict(config)
        cfg.check_population(population_size)
        super().__init__(population_size=population_size)
        self.config = cfg
        self.target_generation: int | None = None
        self._slots: dict[tuple[int, int], tuple[int, int]] = {}  # (storage, trial id) -> (generation, member)
        self._seed = int(np.random.SeedSequence().entropy if seed is None else seed) % 2**64
        self._random = RandomSampler(seed=None if seed is None else int(self._seed % 2**32))
        self._ranking = ranking
        self._selection = selection or TournamentSelection(size=cfg.tournament_size)
        self._crossover = crossover or OnePointCrossover(swap_prob=cfg.swap_prob)
        self._mutation = mutation or AnnealedMutation(config=cfg)
        self._nudge = getattr(self._mutation, "change_one", None) or AnnealedMutation(config=cfg).change_one

    # --------------------------------------------------------------- Optuna sampler interface
    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(SPACE)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Claim the generation and member slot at ask time, before any parameter is suggested.
        self.get_trial_generation(study, trial)
        self._random.before_trial(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> Params:
        if not search_space:
            return {}
        generation = self.get_trial_generation(study, trial)
        member = self.member_index(study, trial)
        failures = slot_failures(study, trial, generation, member)
        attempt = failures // (self.config.slot_retries + 1)  # 0: the slot's own genome; k: the k-th fresh child
        rng = self.member_rng(generation, member, attempt)
        params, origin, parents = self._breed(study, generation, member, rng, fresh=attempt > 0)
        if attempt:
            study._storage.set_trial_system_attr(
                trial._trial_id, REPLACED_KEY,
                f"slot failed {failures} times (slot_retries = {self.config.slot_retries}): fresh child {attempt}")
        study._storage.set_trial_system_attr(trial._trial_id, ORIGIN_KEY, origin)
        study._storage.set_trial_system_attr(trial._trial_id, PARENTS_KEY, parents)
        return {n: params[n] for n in search_space if n in params}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only parameters outside the genome space get here.
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._random.after_trial(study, trial, state, values)

    # --------------------------------------------------------------- generations and members
    def get_trial_generation(self, study: Study, trial: FrozenTrial) -> int:
        """The trial's generation, assigned (with its member index) on first call.

        Unlike ``BaseGASampler``'s rule (which counts only COMPLETE trials and so never fills a
        generation with PRUNED members), a generation is full when ``population_size`` of its trials
        are not FAIL; see :func:`~optsearch.search.sampler.slots.claim_slot`.
        """
        slot = self._slots.get((id(study._storage), trial._trial_id))
        if slot is not None:
            return slot[0]
        stored = trial.system_attrs.get(GENERATION_KEY)
        if stored is None:
            stored = study._storage.get_trial_system_attrs(trial._trial_id).get(GENERATION_KEY)
        if stored is not None:
            return int(stored)
        slot = claim_slot(study, trial, self._population_size, self.target_generation)
        self._slots[(id(study._storage), trial._trial_id)] = slot
        return slot[0]

    def member_index(self, study: Study, trial: FrozenTrial) -> int:
        """The trial's slot in its generation (0 .. population_size − 1)."""
        slot = self._slots.get((id(study._storage), trial._trial_id))
        if slot is not None:
            return slot[1]
        member = trial.system_attrs.get(MEMBER_KEY)
        if member is None:
            self.get_trial_generation(study, trial)
            member = study._storage.get_trial_system_attrs(trial._trial_id)[MEMBER_KEY]
        return int(member)

    def member_rng(self, generation: int, member: int, attempt: int = 0) -> np.random.Generator:
        """The member's own random stream: independent of ask order and of other processes.

        ``attempt`` > 0 is the stream of the slot's ``attempt``-th fresh child (after failed retries).
        """
        words = [self._seed, generation, member] + ([attempt] if attempt else [])
        return np.random.default_rng(np.random.SeedSequence(words))

    # --------------------------------------------------------------- parents
    def rank(self, trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection],
             generation: int = 0) -> list[FrozenTrial]:
        """Best first: by fitness, or by NSGA-II fronts and crowding when there are several objectives
        (ties broken by a stream seeded from (seed, ``generation``))."""
        if self._ranking is not None:
            return self._ranking(trials, directions)
        if len(directions) == 1:
            return rank_by_fitness(trials, directions)
        rng = np.random.default_rng(np.random.SeedSequence([self._seed, generation, RANK_STREAM]))
        return rank_nsga2(trials, directions, rng=rng)

    def select_parent(self, study: Study, generation: int) -> list[FrozenTrial]:
        """The ranked parent pool of ``generation`` (PRUNED and FAIL never breed).

        One objective: generation − 1's COMPLETE genomes (the elites carried into it were re-measured
        there). Several objectives: NSGA-II survival — the ``population_size`` best of generation − 1's
        pool and its COMPLETE genomes together, so a genome best on one task survives until something
        beats it, whatever generation it came from.
        """
        prev = [
            t for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=False)
            if trial_generation(t) == generation - 1 and has_genome(t.params)
        ]
        if len(study.directions) == 1:
            return self.rank(prev, study.directions, generation)
        parents = self.get_parent_population(study, generation - 1)
        return survivors(parents, prev, self._population_size,
                         lambda ts: self.rank(ts, study.directions, generation))

    def get_parent_population(self, study: Study, generation: int) -> list[FrozenTrial]:
        """The ranked parent pool of ``generation``, cached in rank order once generation − 1 is settled.

        (The base class caches ids but returns the trials in id order, losing the ranking.)
        """
        if generation == 0:
            return []
        key = self._get_parent_cache_key_prefix() + str(generation)
        cached = study._storage.get_study_system_attrs(study._study_id).get(key)
        trials = study._get_trials(deepcopy=False, use_cache=False)  # not a snapshot older than the wait
        if cached is not None:
            by_id = {t._trial_id: t for t in trials}
            return [by_id[i] for i in cached if i in by_id]
        self._wait_until_settled(study, generation - 1)
        pool = self.select_parent(study, generation)
        study._storage.set_study_system_attr(study._study_id, key, [t._trial_id for t in pool])
        return pool

    def _wait_until_settled(self, study: Study, generation: int) -> None:
        """Block until ``generation`` has no RUNNING or WAITING trial.

        Parents chosen while a member is still running would depend on which members finished first
        (``study.optimize(n_jobs=…)`` asks the next generation while the last one trains). The run
        loop never gets here early; a crashed worker's trial is failed by the storage's heartbeat.
        """
        start = warned = time.monotonic()
        while True:
            running = [t for t in study._get_trials(deepcopy=False, use_cache=False)
                       if trial_generation(t) == generation and t.state in (TrialState.RUNNING, TrialState.WAITING)]
            if not running:
                return
            optuna.storages.fail_stale_trials(study)
            if time.monotonic() - warned > SETTLE_WARN:
                warned = time.monotonic()
                _LOG.warning("waiting %.0f s for generation %d's trials %s to finish before breeding generation %d",
                             warned - start, generation, [t.number for t in running], generation + 1)
            time.sleep(CLAIM_POLL * 5)

    # --------------------------------------------------------------- breeding
    def _breed(
        self, study: Study, generation: int, member: int, rng: np.random.Generator, *, fresh: bool = False
    ) -> tuple[Params, str, list[int]]:
        """(params, origin, parent trial numbers) of one member; ``fresh``: never a seed genome or elite."""
        if generation == 0:
            seeds = [] if fresh else self.config.seed_genomes()
            if member < len(seeds):
                name, genome = seeds[member]
                return genome.to_params(), f"seed:{name}", []
            return random_params(rng), "random", []
        pool = self.get_parent_population(study, generation)
        if not pool:  # the whole previous generation was pruned or failed: start afresh
            return random_params(rng), "random", []
        if not fresh and member < min(self.config.elites, len(pool)):
            return genes(pool[member].params), "elite", [pool[member].number]
        i = self._selection(len(pool), rng, None)
        j = self._selection(len(pool), rng, i)
        a, b = pool[i], pool[j]
        if rng.random() < self.config.crossover_prob:
            child, parents, origin = self._crossover(genes(a.params), genes(b.params), rng), [a.number, b.number], \
                "crossover"
        else:
            child, parents, origin = genes(a.params), [a.number], "mutation"
        child = self._mutation(child, rng, generation)
        for _ in range(20):  # a copy of a parent would waste an evaluation: force a visible change
            if all(child != genes(t.params) for t in (a, b)):
                break
            genes_ = expressed_genes(child)
            self._nudge(child, genes_[int(rng.integers(len(genes_)))], rng)
        return Genome.from_params(child).to_params(), origin, parents

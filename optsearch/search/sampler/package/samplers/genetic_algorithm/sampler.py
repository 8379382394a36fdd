"""GeneticAlgorithmSampler: a generational GA for any static space, deterministic whatever the number of workers.

Built on Optuna's ``BaseGASampler`` (generation numbers in trial system attrs, each generation's ranked
parent pool cached in study system attrs). A generation is ``population_size`` trials:

* generation 0: the ``initial_params`` first, the rest drawn uniformly over the space;
* generation g+1: the ``elites`` best of its parent pool carried over unchanged as the first members
  (evaluated again there), the rest children of two tournament winners: crossover with probability
  ``crossover_prob``, then mutation; a child that copies a parent gets one parameter changed;
* one objective: the parent pool is generation g's COMPLETE trials, best first. Several objectives:
  NSGA-II's (μ+λ) survival — the ``population_size`` best of generation g's pool and its COMPLETE trials
  together, by non-dominated front, each objective's best point, then crowding distance, ties broken
  by a stream seeded from (seed, generation);
* a slot whose trial FAILs (an exception, a NaN value) is asked again with the same parameters up to
  ``slot_retries`` times, then filled with a fresh child from a new stream, so a point that always
  crashes cannot stall the study; PRUNED and FAIL trials never breed.

Why not ``NSGAIISampler``: it draws every child from one shared random stream, so the points depend on
the order in which concurrent workers ask; here member i of generation g is a function of the seed, g,
i, the parent pool and the slot's failure count alone. Slots are claimed in trial-number order
(:mod:`.slots`) and generation g+1's pool is computed only once generation g has no RUNNING trial.

Parameters in ``fixed_params`` are held at their values: never drawn, crossed over or mutated (they
are set on the parents before breeding and on the child after it). ``optuna.samplers.PartialFixedSampler``
and ``study.enqueue_trial`` work as with any sampler.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers._ga import BaseGASampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .operators import GaussianMutation, Params, TournamentSelection, UniformCrossover, contains, random_params
from .operators import sample_value
from .ranking import rank_by_fitness, rank_nsga2, survivors
from .slots import (
    CLAIM_POLL, GENERATION_KEY, MEMBER_KEY, ORIGIN_KEY, PARENTS_KEY, REPLACED_KEY, claim_slot, slot_failures,
    trial_generation,
)

_LOG = logging.getLogger(__name__)
RANK_STREAM = 2**32 - 1  # third word of the seed sequence of a generation's tie-breaking RNG
INDEPENDENT_STREAM = 2**32 - 2  # fifth word of a parameter's stream outside the relative space
SETTLE_WARN = 30.0  # seconds of waiting for a previous generation before saying so


class GeneticAlgorithmSampler(BaseGASampler):
    """Genetic algorithm over a static space of float/int/categorical distributions (see the module docstring).

    Args:
        population_size: Members per generation (≥ 2).
        seed: Seed of every member's random stream; ``None`` picks one (not reproducible).
        search_space: The space bred; ``None`` infers it per generation as the parameters every parent holds
            with one distribution (generation 0 is then drawn parameter by parameter).
        fixed_params: Parameters held at these values in every trial (not mutated, not crossed over).
        elites: Best members of a generation carried over unchanged into the next.
        crossover_prob: Probability that a child is a crossover of two parents (else a mutated copy of one).
        swapping_prob: Per-parameter probability of the default :class:`UniformCrossover`.
        mutation_prob: Per-parameter probability of the default :class:`GaussianMutation` (None: 1/#params).
        mutation_sigma: Gaussian step of the default mutation, as a fraction of each range.
        tournament_size: Entrants per tournament of the default :class:`TournamentSelection`.
        slot_retries: Times a FAILed slot is asked again with the same parameters before a fresh child.
        initial_params: Points that open generation 0, in order (name -> params, or a sequence of params).
        ranking: ``(trials, directions) -> ranked trials``; default by value, or NSGA-II for several objectives.
        selection: ``(n, rng, exclude) -> position`` in the ranked pool.
        crossover: ``(a, b, rng) -> child params``.
        mutation: ``(params, rng, generation) -> params``; its ``change_one(params, name, rng)`` (if any) is
            the change forced on a child that copies a parent.
        mutable_params: ``params -> names`` that may take that forced change (default: all not fixed).
        repair: ``params -> params`` applied to every child (e.g. a canonical form of a structured point).
        parent_params: ``trial.params -> params`` of a parent, or None when the trial holds no whole point.

    Attributes:
        target_generation: When set, newly asked trials join that generation (a run loop that knows when a
            generation is finished); when ``None``, the latest generation until ``population_size`` of its
            trials are not FAIL.
    """

    def __init__(
        self,
        population_size: int = 50,
        seed: int | None = None,
        *,
        search_space: Mapping[str, BaseDistribution] | None = None,
        fixed_params: Mapping[str, Any] | None = None,
        elites: int = 2,
        crossover_prob: float = 0.9,
        swapping_prob: float = 0.5,
        mutation_prob: float | None = None,
        mutation_sigma: float = 0.1,
        tournament_size: int = 3,
        slot_retries: int = 2,
        initial_params: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]] = (),
        ranking: Callable[[Sequence[FrozenTrial], Sequence[StudyDirection]], list[FrozenTrial]] | None = None,
        selection: Callable[..., int] | None = None,
        crossover: Callable[[Params, Params, np.random.Generator], Params] | None = None,
        mutation: Callable[[Params, np.random.Generator, int], Params] | None = None,
        mutable_params: Callable[[Params], Sequence[str]] | None = None,
        repair: Callable[[Params], Params] | None = None,
        parent_params: Callable[[Mapping[str, Any]], Params | None] | None = None,
    ) -> None:
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 2:
            raise ValueError(f"population_size must be an integer ≥ 2, got {population_size!r}")
        if not 0 <= elites < population_size:
            raise ValueError(f"elites must be in [0, population_size), got {elites!r}")
        for name, p in (("crossover_prob", crossover_prob), ("swapping_prob", swapping_prob),
                        ("mutation_prob", 0.0 if mutation_prob is None else mutation_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p!r}")
        if slot_retries < 0 or tournament_size < 1:
            raise ValueError("slot_retries must be ≥ 0 and tournament_size ≥ 1")
        self._search_space = None if search_space is None else dict(search_space)
        self._fixed = dict(fixed_params or {})
        for name, value in self._fixed.items():
            dist = (self._search_space or {}).get(name)
            if dist is not None and not contains(dist, value):
                raise ValueError(f"fixed parameter {name}={value!r} is outside its distribution {dist}")
        super().__init__(population_size=population_size)
        self.target_generation: int | None = None
        self._slots: dict[tuple[int, int], tuple[int, int]] = {}  # (storage, trial id) -> (generation, member)
        self._attempts: dict[tuple[int, int], int] = {}
        self._seeded = seed is not None
        self._seed = int(np.random.SeedSequence().entropy if seed is None else seed) % 2**64
        self._elites = elites
        self._crossover_prob = crossover_prob
        self._slot_retries = slot_retries
        items = initial_params.items() if isinstance(initial_params, Mapping) else enumerate(initial_params)
        self._initial = [(str(k), dict(p)) for k, p in items]
        self._ranking = ranking
        self._selection = selection or TournamentSelection(size=tournament_size)
        self._crossover = crossover or UniformCrossover(swapping_prob=swapping_prob)
        self._mutation = mutation
        self._mutation_args = {"prob": mutation_prob, "sigma": mutation_sigma}
        self._mutable = mutable_params
        self._repair = repair
        self._parent_params = parent_params

    # --------------------------------------------------------------- Optuna sampler interface
    def reseed_rng(self) -> None:
        # Streams are per (seed, generation, member), so copies of a seeded sampler cannot collide: keep the seed.
        if not self._seeded:
            self._seed = int(np.random.SeedSequence().entropy) % 2**64

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._search_space is not None:
            space = self._search_space
        else:
            generation = self.get_trial_generation(study, trial)
            space = {} if generation == 0 else _common_space(self.get_parent_population(study, generation))
        return {n: d for n, d in space.items() if n not in self._fixed and not d.single()}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Claim the generation and member slot at ask time, before any parameter is suggested.
        self.get_trial_generation(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> Params:
        if not search_space:
            return {}
        generation = self.get_trial_generation(study, trial)
        member = self.member_index(study, trial)
        failures = slot_failures(study, trial, generation, member)
        attempt = self._attempt(study, trial, generation, member, failures)
        space = dict(self._search_space if self._search_space is not None else search_space)
        rng = self.member_rng(generation, member, attempt)
        params, origin, parents = self._breed(study, generation, member, rng, space, fresh=attempt > 0)
        if attempt:
            study._storage.set_trial_system_attr(
                trial._trial_id, REPLACED_KEY,
                f"slot failed {failures} times (slot_retries = {self._slot_retries}): fresh child {attempt}")
        study._storage.set_trial_system_attr(trial._trial_id, ORIGIN_KEY, origin)
        study._storage.set_trial_system_attr(trial._trial_id, PARENTS_KEY, parents)
        return {n: params[n] for n in search_space if n in params}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """Fixed and seed values, else a draw from the member's own stream for this parameter."""
        if param_name in self._fixed:
            return self._fixed[param_name]
        generation = self.get_trial_generation(study, trial)
        member = self.member_index(study, trial)
        attempt = self._attempt(study, trial, generation, member)
        if generation == 0 and not attempt and member < len(self._initial):
            point = self._initial[member][1]
            if param_name in point and contains(param_distribution, point[param_name]):
                return point[param_name]
        words = [self._seed, generation, member, attempt, INDEPENDENT_STREAM, zlib.crc32(param_name.encode())]
        return sample_value(param_distribution, np.random.default_rng(np.random.SeedSequence(words)))

    # --------------------------------------------------------------- generations and members
    def _attempt(self, study: Study, trial: FrozenTrial, generation: int, member: int,
                 failures: int | None = None) -> int:
        """0 for the slot's own point; k for its k-th fresh child (after ``slot_retries`` failed retries each)."""
        key = (id(study._storage), trial._trial_id)
        if key not in self._attempts:
            if failures is None:
                failures = slot_failures(study, trial, generation, member)
            self._attempts[key] = failures // (self._slot_retries + 1)
        return self._attempts[key]

    def get_trial_generation(self, study: Study, trial: FrozenTrial) -> int:
        """The trial's generation, assigned (with its member index) on first call.

        Unlike ``BaseGASampler``'s rule (which counts only COMPLETE trials and so never fills a
        generation with PRUNED members), a generation is full when ``population_size`` of its trials
        are not FAIL; see :func:`.slots.claim_slot`.
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
        """Best first: by value, or by NSGA-II fronts and crowding when there are several objectives
        (ties broken by a stream seeded from (seed, ``generation``))."""
        if self._ranking is not None:
            return self._ranking(trials, directions)
        if len(directions) == 1:
            return rank_by_fitness(trials, directions)
        rng = np.random.default_rng(np.random.SeedSequence([self._seed, generation, RANK_STREAM]))
        return rank_nsga2(trials, directions, rng=rng)

    def select_parent(self, study: Study, generation: int) -> list[FrozenTrial]:
        """The ranked parent pool of ``generation`` (PRUNED and FAIL never breed; see the module docstring)."""
        prev = [
            t for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=False)
            if trial_generation(t) == generation - 1 and self._point(t) is not None
        ]
        if len(study.directions) == 1:
            return self.rank(prev, study.directions, generation)
        parents = self.get_parent_population(study, generation - 1)
        return survivors(parents, prev, self._population_size,
                         lambda ts: self.rank(ts, study.directions, generation), key=self._key)

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
        (``study.optimize(n_jobs=…)`` asks the next generation while the last one runs). A crashed
        worker's trial is failed by the storage's heartbeat.
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

    def _point(self, t: FrozenTrial) -> Params | None:
        """A trial's parameters as a parent, or None when it holds no whole point of the space."""
        if self._parent_params is not None:
            return self._parent_params(t.params)
        if self._search_space is None:
            return dict(t.params)
        if not all(n in t.params for n in self._search_space):
            return None
        return {n: t.params[n] for n in self._search_space}

    def _key(self, t: FrozenTrial) -> Hashable:
        point = self._point(t) or {}
        return tuple(sorted(point.items()) if self._search_space is None else point.items())

    # --------------------------------------------------------------- breeding
    def _fix(self, params: Params) -> Params:
        return {**params, **self._fixed} if self._fixed else params

    def _breed(
        self, study: Study, generation: int, member: int, rng: np.random.Generator,
        space: dict[str, BaseDistribution], *, fresh: bool = False,
    ) -> tuple[Params, str, list[int]]:
        """(params, origin, parent trial numbers) of one member; ``fresh``: never an initial point or elite."""
        if generation == 0:
            seeds = [] if fresh else self._initial
            if member < len(seeds):
                name, point = seeds[member]
                return self._fix({**random_params(space, rng), **point}), f"seed:{name}", []
            return self._fix(random_params(space, rng)), "random", []
        pool = self.get_parent_population(study, generation)
        if not pool:  # the whole previous generation was pruned or failed: start afresh
            return self._fix(random_params(space, rng)), "random", []
        if not fresh and member < min(self._elites, len(pool)):
            return self._fix(self._parent(pool[member], space)), "elite", [pool[member].number]
        i = self._selection(len(pool), rng, None)
        j = self._selection(len(pool), rng, i)
        a, b = self._fix(self._parent(pool[i], space)), self._fix(self._parent(pool[j], space))
        if rng.random() < self._crossover_prob:
            child, parents, origin = self._crossover(a, b, rng), [pool[i].number, pool[j].number], "crossover"
        else:
            child, parents, origin = dict(a), [pool[i].number], "mutation"
        mutation = self._mutation or GaussianMutation(search_space=space, **self._mutation_args)
        nudge = getattr(mutation, "change_one", None) or GaussianMutation(search_space=space).change_one
        child = self._fix(mutation(child, rng, generation))
        for _ in range(20):  # a copy of a parent would waste an evaluation: force a visible change
            if child != a and child != b:
                break
            names = [n for n in (self._mutable(child) if self._mutable else space) if n not in self._fixed]
            if not names:
                break
            nudge(child, names[int(rng.integers(len(names)))], rng)
        return self._fix(self._repair(child) if self._repair else child), origin, parents

    def _parent(self, t: FrozenTrial, space: Mapping[str, BaseDistribution]) -> Params:
        point = self._point(t) or {}
        return point if self._parent_params is not None else {n: point[n] for n in space if n in point}


def _common_space(trials: Sequence[FrozenTrial]) -> dict[str, BaseDistribution]:
    """The parameters every trial holds with one and the same distribution, by name (order-free)."""
    if not trials:
        return {}
    first = trials[0].distributions
    names = [n for n in sorted(first) if all(t.distributions.get(n) == first[n] for t in trials[1:])]
    return {n: first[n] for n in names}

"""GeneticSampler: an Optuna sampler that breeds genomes a generation at a time.

Built on Optuna 5's ``BaseGASampler`` (generation numbers in trial system attrs, the parent pool of
each generation cached in study system attrs) over the static genome space of
:func:`optsearch.genome.search_space`. A generation is ``population_size`` trials:

* generation 0: the named baselines (:data:`optsearch.genome.BASELINES`, optionally the paper's
  evolved genome) as the first members, the rest uniform over the space;
* generation g+1: the ``elites`` best of generation g carried over unchanged as the first members
  (re-evaluated: fitness is noisy, so an elite's number is re-measured rather than trusted), the
  rest children: two tournament winners, structure-respecting crossover, annealed mutation.

Only generation g's COMPLETE trials are parents: PRUNED and FAIL trials never breed, and a diverged
member told COMPLETE with fitness −1 ranks last.

**Per-task objectives (NSGA-II) live inside this sampler**, not in ``optuna.samplers.NSGAIISampler``
with our crossover and mutation. In a multi-objective study the only thing that changes is the
*ranking* of a generation: non-dominated fronts, each ordered by crowding distance (Optuna's own
non-dominated sort and crowding distance are reused). Tournament selection on that order is
NSGA-II's crowded tournament, and the elites are the first fronts. Why not ``NSGAIISampler``:

* its generation bookkeeping counts only COMPLETE trials, so a generation with PRUNED members never
  fills, and its parent cache returns trials in id order, not rank order;
* it draws every child from one shared random stream, so the genomes depend on the order in which
  concurrent workers ask; ours derive each member's stream from (seed, generation, member index);
* its crossover treats parameters independently (a term would be separated from its α), its
  mutation has no annealing, and it keeps elites with their old (lucky, noisy) values instead of
  re-evaluating them. Replacing all of that through its ``child_generation_strategy`` hook would
  leave little of it but the name.

Determinism: with a seed, the genome of member i of generation g is a function of the seed, g, i and
generation g−1's results; nothing depends on how many processes ask or in which order.

Concurrency: Optuna storages offer no atomic "claim a slot", but trial numbers are unique and
ordered. A new trial picks its member slot only after every older trial has picked its own (older
trials still unclaimed are waited for, up to ``CLAIM_WAIT`` seconds — a worker killed inside ``ask``
leaves one that never claims), so claims form a queue in trial-number order and two processes
never take the same slot. A trial that finds its generation already full gets a member index
≥ ``population_size``: the run loop fails it at once (a *surplus* trial) instead of training it.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from dataclasses import asdict, dataclass, fields
from functools import partial
from itertools import count
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import RandomSampler
from optuna.samplers._ga import BaseGASampler
from optuna.samplers.nsgaii._elite_population_selection_strategy import _calc_crowding_distance
from optuna.study import Study, StudyDirection
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import FrozenTrial, TrialState

from optsearch.errors import ConfigError
from optsearch.genome import ALPHA_RANGE, BASELINES, CLIP_CHOICES, FLOAT_RANGES, K, NAMED, Genome, search_space
from optsearch.genome.primitives import NONE, TERM_CHOICES

Params = dict[str, Any]

SPACE: dict[str, BaseDistribution] = search_space()
SLOT_GENES: tuple[str, ...] = tuple(f"{kind}_{i}" for i in range(K) for kind in ("term", "alpha"))
SCALAR_GENES: tuple[str, ...] = tuple(n for n in SPACE if n not in SLOT_GENES)
LOG_GENES: tuple[str, ...] = ("lr_log10", "eps_log10", "wd_log10")  # already log10 values: Gaussian steps
BOUNDED_GENES: tuple[str, ...] = ("beta1", "beta2", "warmup_frac")  # bounded uniform steps, clipped
SWITCHES: tuple[str, ...] = ("weight_decay", "bias_correction", "warmup", "cosine_decay")
TERMS: tuple[str, ...] = tuple(t for t in TERM_CHOICES if t != NONE)

GENERATION_KEY = "GeneticSampler:generation"
MEMBER_KEY = "GeneticSampler:member"
ORIGIN_KEY = "GeneticSampler:origin"
PARENTS_KEY = "GeneticSampler:parents"
CLAIM_WAIT = 10.0  # seconds a new trial waits for older trials to claim their slots
CLAIM_POLL = 0.02


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class GAConfig:
    """The genetic algorithm's settings (the study TOML's ``[sampler]`` table).

    Mutation rates anneal: a gene mutates with probability
    ``max(mutation_floor, mutation_prob · mutation_decay**generation)`` — broad exploration first,
    fine-tuning of the survivors later. Step sizes stay fixed; the rate sets how much changes.
    """

    tournament_size: int = 3
    """Entrants per tournament (1 = parents drawn uniformly from the generation's COMPLETE trials)."""
    elites: int = 2
    """Best members of a generation carried over unchanged (and re-evaluated) into the next."""
    crossover_prob: float = 0.9
    """Probability a child is a crossover of two parents (else a mutated copy of one)."""
    swap_prob: float = 0.5
    """Per-gene probability that a scalar or switch comes from the second parent."""
    mutation_prob: float = 0.15
    """Per-gene mutation probability in generation 0."""
    mutation_decay: float = 0.97
    """Factor applied to the mutation probability per generation."""
    mutation_floor: float = 0.03
    """The mutation probability never anneals below this."""
    log_sigma: float = 0.3
    """Gaussian step, in decades, for lr_log10, eps_log10, wd_log10 and clip_threshold."""
    alpha_sigma: float = 0.25
    """Gaussian step for a term's weight α."""
    beta_step: float = 0.1
    """Largest step for β1, β2 and warmup_frac, as a fraction of the gene's range."""
    seed_baselines: bool = True
    """Generation 0 starts with the named baselines (SGD-momentum, Adam, AdamW, RMSProp)."""
    seed_paper_evolved: bool = False
    """Generation 0 also contains the paper's published evolved genome."""

    def mutation_rate(self, generation: int) -> float:
        """The per-gene mutation probability in ``generation`` (annealed, floored)."""
        return max(self.mutation_floor, self.mutation_prob * self.mutation_decay**generation)

    def seed_genomes(self) -> list[tuple[str, Genome]]:
        """The named genomes that open generation 0, in order."""
        names = list(BASELINES) if self.seed_baselines else []
        if self.seed_paper_evolved:
            names.append("paper_evolved")
        return [(n, NAMED[n]) for n in names]

    def check_population(self, population: int) -> None:
        """Raise :class:`ConfigError` when the settings cannot work with this population size."""
        if self.elites >= population:
            raise ConfigError(f"'elites' must be less than the population ({population}), got {self.elites}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "GAConfig":
        """Validate a ``[sampler]`` table; a bad key or value is a one-line :class:`ConfigError` naming it."""
        d = dict(d or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        for key, value in d.items():
            _check_value(key, value)
        cfg = cls(**{k: float(v) if _RULES[k][0] == "float" else v for k, v in d.items()})
        if cfg.mutation_floor > cfg.mutation_prob:
            raise ConfigError(f"'mutation_floor' ({cfg.mutation_floor}) must not exceed 'mutation_prob' "
                              f"({cfg.mutation_prob})")
        return cfg


# key -> (kind, low, high, low inclusive)
_RULES: dict[str, tuple[str, float, float, bool]] = {
    "tournament_size": ("int", 1, math.inf, True),
    "elites": ("int", 0, math.inf, True),
    "crossover_prob": ("float", 0.0, 1.0, True),
    "swap_prob": ("float", 0.0, 1.0, True),
    "mutation_prob": ("float", 0.0, 1.0, True),
    "mutation_decay": ("float", 0.0, 1.0, False),
    "mutation_floor": ("float", 0.0, 1.0, True),
    "log_sigma": ("float", 0.0, math.inf, True),
    "alpha_sigma": ("float", 0.0, math.inf, True),
    "beta_step": ("float", 0.0, 1.0, True),
    "seed_baselines": ("bool", 0, 0, True),
    "seed_paper_evolved": ("bool", 0, 0, True),
}


def _check_value(key: str, value: Any) -> None:
    kind, lo, hi, lo_incl = _RULES[key]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key!r} must be true or false, got {value!r}")
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int" and not is_int:
        raise ConfigError(f"{key!r} must be an integer, got {value!r}")
    if kind == "float" and not (is_int or isinstance(value, float)):
        raise ConfigError(f"{key!r} must be a number, got {value!r}")
    ok = math.isfinite(value) and (lo <= value if lo_incl else lo < value) and value <= hi
    if not ok:
        bounds = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}]" if hi < math.inf else f"≥ {lo:g}"
        raise ConfigError(f"{key!r} must be {'in ' if hi < math.inf else ''}{bounds}, got {value!r}")


# ----------------------------------------------------------------------------- operators
def random_params(rng: np.random.Generator) -> Params:
    """A genome drawn uniformly over the search space (log-uniform where the distribution is log)."""
    p: Params = {}
    for name, dist in SPACE.items():
        if isinstance(dist, CategoricalDistribution):
            p[name] = dist.choices[int(rng.integers(len(dist.choices)))]
        elif dist.log:
            p[name] = _clip(10.0 ** rng.uniform(math.log10(dist.low), math.log10(dist.high)), dist.low, dist.high)
        else:
            p[name] = float(rng.uniform(dist.low, dist.high))
    return p


def rank_by_fitness(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """Best first by the single objective; ties keep member order."""
    sign = 1.0 if directions[0] == StudyDirection.MAXIMIZE else -1.0
    return sorted(sorted(trials, key=_order), key=lambda t: -sign * t.value)


def rank_nsga2(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
    """NSGA-II order: non-dominated fronts in turn, each by crowding distance (largest first).

    A position in this list is exactly NSGA-II's crowded-comparison order (rank, then distance), so
    a tournament on positions is the crowded tournament and a prefix is the elite set.
    """
    if not trials:
        return []
    trials = sorted(trials, key=_order)
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    ranks = _fast_non_domination_rank(np.array([t.values for t in trials], dtype=float) * signs)
    ranked: list[FrozenTrial] = []
    for r in range(int(ranks.max()) + 1):
        front = [t for t, rk in zip(trials, ranks) if rk == r]
        distance = _calc_crowding_distance(list(front))  # sorts its argument: pass a copy
        ranked.extend(sorted(front, key=lambda t: -distance[t.number]))
    return ranked


def tournament_select(n: int, rng: np.random.Generator, exclude: int | None = None, *, k: int) -> int:
    """Position of the winner of a size-``k`` tournament over a ranked pool of ``n`` (0 = best).

    ``exclude`` (the other parent) does not enter, unless it is the only candidate.
    """
    candidates = [i for i in range(n) if i != exclude] or list(range(n))
    entrants = rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
    return candidates[int(entrants.min())]


def one_point_crossover(a: Params, b: Params, rng: np.random.Generator, *, swap_prob: float = 0.5) -> Params:
    """Slots ``[0, cut)`` from ``a`` and ``[cut, K)`` from ``b``, each term with its own α; scalars uniform.

    A term's α is only meaningful next to that term, so (term_i, alpha_i) travel together.
    """
    cut = int(rng.integers(1, K))
    child: Params = {}
    for i in range(K):
        src = a if i < cut else b
        child[f"term_{i}"] = src[f"term_{i}"]
        child[f"alpha_{i}"] = src[f"alpha_{i}"]
    for name in SCALAR_GENES:
        child[name] = (b if rng.random() < swap_prob else a)[name]
    return child


def mutate(params: Params, rng: np.random.Generator, *, rate: float, cfg: GAConfig) -> Params:
    """Each gene mutates with probability ``rate`` (α only while its slot holds a term)."""
    p = dict(params)
    for name in SPACE:
        if name.startswith("alpha_") and p[f"term_{name[6:]}"] == NONE:
            continue
        if rng.random() < rate:
            mutate_gene(p, name, rng, cfg)
    return p


def mutate_gene(p: Params, name: str, rng: np.random.Generator, cfg: GAConfig) -> None:
    """Mutate one gene of ``p`` in place, staying inside the search space."""
    if name.startswith("term_"):
        _mutate_term(p, int(name[5:]), rng)
    elif name.startswith("alpha_"):
        p[name] = _clip(p[name] + rng.normal(0.0, cfg.alpha_sigma), *ALPHA_RANGE)
    elif name in LOG_GENES:
        lo, hi, _ = FLOAT_RANGES[name]
        p[name] = _clip(p[name] + rng.normal(0.0, cfg.log_sigma), lo, hi)
    elif name == "clip_threshold":  # log-distributed: the same step in decades
        lo, hi, _ = FLOAT_RANGES[name]
        p[name] = _clip(10.0 ** (math.log10(p[name]) + rng.normal(0.0, cfg.log_sigma)), lo, hi)
    elif name in BOUNDED_GENES:
        lo, hi, _ = FLOAT_RANGES[name]
        p[name] = _clip(p[name] + rng.uniform(-1.0, 1.0) * cfg.beta_step * (hi - lo), lo, hi)
    elif name in SWITCHES:
        p[name] = not p[name]
    elif name == "clip":
        p[name] = _other(CLIP_CHOICES, p[name], rng)
    else:
        raise KeyError(f"no mutation for gene {name!r}")


def _mutate_term(p: Params, i: int, rng: np.random.Generator) -> None:
    """Add a term to an empty slot (with a fresh α), or remove or change the slot's term.

    The last term is changed, never removed: an empty genome does not train.
    """
    key = f"term_{i}"
    if p[key] == NONE:
        p[key] = TERMS[int(rng.integers(len(TERMS)))]
        p[f"alpha_{i}"] = float(rng.uniform(*ALPHA_RANGE))
        return
    others = sum(p[f"term_{j}"] != NONE for j in range(K) if j != i)
    if others and rng.random() < 0.5:
        p[key] = NONE
    else:
        p[key] = _other(TERMS, p[key], rng)


def expressed_genes(p: Params) -> list[str]:
    """Genes that change the update rule (an α of an empty slot, or λ with weight decay off, do not)."""
    silent = {f"alpha_{i}" for i in range(K) if p[f"term_{i}"] == NONE}
    if not p["weight_decay"]:
        silent.add("wd_log10")
    if p["clip"] == "none":
        silent.add("clip_threshold")
    if not p["warmup"]:
        silent.add("warmup_frac")
    return [n for n in SPACE if n not in silent]


def _clip(x: float, lo: float, hi: float) -> float:
    return float(min(hi, max(lo, x)))


def _other(choices: Sequence[Any], current: Any, rng: np.random.Generator) -> Any:
    rest = [c for c in choices if c != current]
    return rest[int(rng.integers(len(rest)))]


def _order(t: FrozenTrial) -> tuple[int, int]:
    """Deterministic tie order: member index, then trial number."""
    return int(t.system_attrs.get(MEMBER_KEY, 0)), t.number


def generation_and_member(study: Study, trial: Any) -> tuple[int, int]:
    """(generation, member index) of an asked trial (an ``optuna.Trial`` has no ``system_attrs``)."""
    trial_id = trial._trial_id
    attrs = study._storage.get_trial_system_attrs(trial_id)
    return int(attrs[GENERATION_KEY]), int(attrs[MEMBER_KEY])


def _generation(t: FrozenTrial) -> int | None:
    g = t.system_attrs.get(GENERATION_KEY)
    return None if g is None else int(g)


# ----------------------------------------------------------------------------- the sampler
class GeneticSampler(BaseGASampler):
    """Genetic algorithm over the static genome space (see the module docstring).

    Args:
        population_size: Members per generation.
        seed: Seed of every member's random stream; ``None`` picks one (not reproducible).
        config: :class:`GAConfig` or a ``[sampler]`` table.
        ranking: ``(trials, directions) -> ranked trials`` (best first); default
            :func:`rank_by_fitness` for one objective, :func:`rank_nsga2` for several.
        selection: ``(n, rng, exclude) -> position`` in the ranked pool; default a tournament of
            ``config.tournament_size``.
        crossover: ``(a, b, rng) -> child params``; default :func:`one_point_crossover`.
        mutation: ``(params, rng, generation) -> params``; default :func:`mutate` at
            ``config.mutation_rate(generation)``.

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
        selection: Callable[[int, np.random.Generator, int | None], int] | None = None,
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
        self._selection = selection or partial(tournament_select, k=cfg.tournament_size)
        self._crossover = crossover or partial(one_point_crossover, swap_prob=cfg.swap_prob)
        self._mutation = mutation or (lambda p, rng, g: mutate(p, rng, rate=cfg.mutation_rate(g), cfg=cfg))

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
        rng = self.member_rng(generation, member)
        params, origin, parents = self._breed(study, generation, member, rng)
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
        are not FAIL; a FAIL trial frees its slot, and the refill takes the lowest free member index,
        so it is asked the same genome again. With ``target_generation`` set and that generation
        full, the index is ≥ ``population_size``: a surplus trial, which the run loop fails unevaluated.
        """
        slot = self._slots.get((id(study._storage), trial._trial_id))
        if slot is not None:
            return slot[0]
        stored = trial.system_attrs.get(GENERATION_KEY)
        if stored is None:
            stored = study._storage.get_trial_system_attrs(trial._trial_id).get(GENERATION_KEY)
        if stored is not None:
            return int(stored)
        others = self._after_older_claims(study, trial)
        alive = [t for t in others if t.state != TrialState.FAIL and _generation(t) is not None]
        if self.target_generation is not None:
            generation = int(self.target_generation)
        elif not alive:
            generation = 0
        else:
            latest = max(_generation(t) for t in alive)  # type: ignore[type-var]
            full = sum(_generation(t) == latest for t in alive) >= self._population_size  # type: ignore[operator]
            generation = latest + 1 if full else latest
        used = {t.system_attrs.get(MEMBER_KEY) for t in alive if _generation(t) == generation}
        member = next(i for i in count() if i not in used)
        # Member first: the generation is the "claimed" mark newer trials wait for, so it must come last.
        study._storage.set_trial_system_attr(trial._trial_id, MEMBER_KEY, member)
        study._storage.set_trial_system_attr(trial._trial_id, GENERATION_KEY, generation)
        self._slots[(id(study._storage), trial._trial_id)] = (generation, member)
        return generation

    @staticmethod
    def _after_older_claims(study: Study, trial: FrozenTrial) -> list[FrozenTrial]:
        """The study's other trials, read once every older RUNNING trial has claimed its slot.

        An older trial still without a generation is mid-``ask`` in some process; claiming before it
        would let both read the same free slot. One older than ``CLAIM_WAIT`` seconds is an orphan.
        """
        deadline = time.monotonic() + CLAIM_WAIT
        while True:
            others = [t for t in study._get_trials(deepcopy=False, use_cache=False) if t._trial_id != trial._trial_id]
            now = datetime.now()
            pending = [
                t for t in others
                if t.number < trial.number and t.state == TrialState.RUNNING and _generation(t) is None
                and t.datetime_start is not None and (now - t.datetime_start).total_seconds() < CLAIM_WAIT
            ]
            if not pending or time.monotonic() > deadline:
                return others
            time.sleep(CLAIM_POLL)

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

    def member_rng(self, generation: int, member: int) -> np.random.Generator:
        """The member's own random stream: independent of ask order and of other processes."""
        return np.random.default_rng(np.random.SeedSequence([self._seed, generation, member]))

    # --------------------------------------------------------------- parents
    def rank(self, trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[FrozenTrial]:
        """Best first: by fitness, or by NSGA-II fronts and crowding when there are several objectives."""
        if self._ranking is not None:
            return self._ranking(trials, directions)
        return (rank_nsga2 if len(directions) > 1 else rank_by_fitness)(trials, directions)

    def select_parent(self, study: Study, generation: int) -> list[FrozenTrial]:
        """Generation − 1's COMPLETE genomes, ranked best first (PRUNED and FAIL never breed)."""
        prev = [
            t for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
            if _generation(t) == generation - 1 and all(n in t.params for n in SPACE)
        ]
        return self.rank(prev, study.directions)

    def get_parent_population(self, study: Study, generation: int) -> list[FrozenTrial]:
        """The ranked parent pool of ``generation``, cached in rank order once generation − 1 is settled.

        (The base class caches ids but returns the trials in id order, losing the ranking.)
        """
        if generation == 0:
            return []
        key = self._get_parent_cache_key_prefix() + str(generation)
        cached = study._storage.get_study_system_attrs(study._study_id).get(key)
        trials = study._get_trials(deepcopy=False, use_cache=True)
        if cached is not None:
            by_id = {t._trial_id: t for t in trials}
            return [by_id[i] for i in cached if i in by_id]
        pool = self.select_parent(study, generation)
        settled = not any(
            _generation(t) == generation - 1 and t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials
        )
        if settled:
            study._storage.set_study_system_attr(study._study_id, key, [t._trial_id for t in pool])
        return pool

    # --------------------------------------------------------------- breeding
    def _breed(
        self, study: Study, generation: int, member: int, rng: np.random.Generator
    ) -> tuple[Params, str, list[int]]:
        """(params, origin, parent trial numbers) of one member."""
        if generation == 0:
            seeds = self.config.seed_genomes()
            if member < len(seeds):
                name, genome = seeds[member]
                return genome.to_params(), f"seed:{name}", []
            return random_params(rng), "random", []
        pool = self.get_parent_population(study, generation)
        if not pool:  # the whole previous generation was pruned or failed: start afresh
            return random_params(rng), "random", []
        if member < min(self.config.elites, len(pool)):
            return dict(pool[member].params), "elite", [pool[member].number]
        i = self._selection(len(pool), rng, None)
        j = self._selection(len(pool), rng, i)
        a, b = pool[i], pool[j]
        if rng.random() < self.config.crossover_prob:
            child, parents, origin = self._crossover(a.params, b.params, rng), [a.number, b.number], "crossover"
        else:
            child, parents, origin = dict(a.params), [a.number], "mutation"
        child = self._mutation(child, rng, generation)
        for _ in range(20):  # a copy of a parent would waste an evaluation: force a visible change
            if all(child != {n: t.params[n] for n in SPACE} for t in (a, b)):
                break
            genes = expressed_genes(child)
            mutate_gene(child, genes[int(rng.integers(len(genes)))], rng, self.config)
        return Genome.from_params(child).to_params(), origin, parents


__all__ = [
    "GAConfig",
    "GeneticSampler",
    "expressed_genes",
    "generation_and_member",
    "mutate",
    "mutate_gene",
    "one_point_crossover",
    "random_params",
    "rank_by_fitness",
    "rank_nsga2",
    "tournament_select",
]

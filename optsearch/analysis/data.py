"""A study's trials, reduced to what the analysis needs: the first stage of the analysis.

:func:`load_study_data` reads a (finished or running) study, picks one objective (the aggregate
fitness, a task's fitness, or the mean of a per-task study's values) and splits the trials by
outcome. Each trial contributes its *own* measurement (the ``measured`` user attr): the value told to
Optuna is the mean over the genome's evaluations so far, so an elite's told value repeats earlier
trials' measurements and would count them twice. Diverged trials carry a sentinel fitness, not a
measurement, so they are kept apart from the analysed ones. Everything later in the analysis (importance, principles, figures, report) reads the
:class:`StudyData` this returns and nothing else of the study, except the lineage figures, which also
read the sampler's parent records through :attr:`StudyData.study`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.errors import GenomeError, StudyError
from optsearch.genome import LATER_GENES, Genome, search_space, upgrade_params
from optsearch.search.config import MEMORY_OBJECTIVE
from optsearch.search.noise import measured
from optsearch.search.storage import open_existing_study
from optsearch.train.tasks import WORST_FITNESS

MIN_TRIALS = 10
"""Fewer analysable trials than this cannot support any of the estimates."""
AGGREGATE = "aggregate"


@dataclass
class StudyData:
    """The trials of one study, reduced to what the analysis needs.

    Attributes:
        study: the Optuna study (for saving the dashboard note and figures).
        objective: ``fitness``, a task name, or ``aggregate`` (mean of a per-task study's values).
        label: how the objective is named in sentences ("fitness", "digits fitness", …).
        objective_names: the study's metric names (one per value).
        genomes, y, numbers, generation: the analysed trials — complete and not diverged; ``y`` is each
            trial's own measurement of the objective, not the running mean Optuna was told.
        values: (n, m) the analysed trials' own objective values (for the Pareto front).
        diverged, diverged_generation: trials that diverged (excluded from fitness effects).
        population: (generation, genome) of every trial that has a genome, for term frequencies.
        counts: trial counts by outcome.
        repeats: after :meth:`distinct`, how many analysed trials each row merges (None before).
        keys: per analysed row, the genome's identity (its parameters); :meth:`distinct` merges rows by it.
    """

    study: optuna.Study
    objective: str
    label: str
    objective_names: list[str]
    genomes: list[Genome]
    y: np.ndarray
    numbers: np.ndarray
    generation: np.ndarray
    values: np.ndarray
    diverged: list[Genome] = field(default_factory=list)
    diverged_generation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    population: list[tuple[int, Genome]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    repeats: np.ndarray | None = None

    @property
    def keys(self) -> list[tuple]:
        return [genome_key(g) for g in self.genomes]

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def per_task(self) -> bool:
        return len(self.objective_names) > 1

    def distinct(self) -> "StudyData":
        """The analysed trials with repeated genomes merged into one row each (mean value, first generation).

        An elite carried into the next generation is the same genome measured again. Left as separate
        rows it would count as independent evidence, land on both sides of a cross-validation split
        (so the surrogate scores its own memory) and be resampled as if i.i.d.; merged, each genome is
        one observation whose value is the mean of its measurements. ``repeats`` says how many.
        """
        first: dict[tuple, int] = {}
        rows: list[list[int]] = []
        for i, key in enumerate(self.keys):
            if key not in first:
                first[key] = len(rows)
                rows.append([])
            rows[first[key]].append(i)
        pick = [r[0] for r in rows]
        return replace(self, genomes=[self.genomes[i] for i in pick],
                       y=np.array([self.y[r].mean() for r in rows]), numbers=self.numbers[pick],
                       generation=self.generation[pick],
                       values=np.array([self.values[r].mean(axis=0) for r in rows]).reshape(len(rows), -1),
                       repeats=np.array([len(r) for r in rows], dtype=int))


def genome_key(g: Genome) -> tuple:
    """A genome's identity: its parameters (two trials with the same key measured the same genome)."""
    return tuple(sorted(g.to_params().items()))


def trial_generation(t: FrozenTrial) -> int | None:
    """The generation a trial belongs to: the study layer's user attr, else the GA sampler's system attr."""
    g = t.user_attrs.get("generation")
    if g is None:  # the GA sampler's own record, "<Sampler>:generation"
        g = next((v for k, v in t.system_attrs.items() if k.endswith(":generation")), None)
    return int(g) if isinstance(g, (int, float)) else None


def _fitness_names(study: optuna.Study) -> list[str]:
    """The study's fitness objectives: its metric names less a ``+memory`` study's optimizer state (no fitness)."""
    names = list(study.user_attrs.get("objectives") or study.metric_names or ["fitness"])
    if len(names) != len(study.directions):
        names = [f"objective_{i}" for i in range(len(study.directions))]
    return names[:-1] if names[-1:] == [MEMORY_OBJECTIVE] else names


def _objective(study: optuna.Study, objective: str | None) -> tuple[str, str, Any]:
    """(key, label, value function of (trial, its own values)) for the chosen objective."""
    names = _fitness_names(study)
    tasks = list(study.user_attrs.get("tasks") or [])
    if any(d != optuna.study.StudyDirection.MAXIMIZE for d in study.directions[: len(names)]):
        raise StudyError(f"study {study.study_name!r} minimizes an objective; optsearch analyses maximized fitness")
    if objective in (None, AGGREGATE, "fitness", "mean"):
        if len(names) == 1:
            return names[0], names[0], lambda t, v: v[0]
        return AGGREGATE, "mean task fitness", lambda t, v: float(np.mean(v))
    if objective in names:
        i = names.index(objective)
        return objective, f"{objective} fitness", lambda t, v: v[i]
    if objective in tasks:  # single-objective study: the task's fitness is a user attr (this trial's own)
        return objective, f"{objective} fitness", lambda t, v: t.user_attrs.get(f"{objective}_fitness", math.nan)
    known = ", ".join(dict.fromkeys([*([AGGREGATE] if len(names) > 1 else []), *names, *tasks]))
    raise StudyError(f"study {study.study_name!r} has no objective {objective!r}; choose one of: {known}")


def load_study_data(name: str, storage: str | None = None, objective: str | None = None) -> StudyData:
    """Read a study's trials for the chosen objective (see :class:`StudyData`)."""
    return study_data(open_existing_study(name, storage), objective)


def study_data(study: optuna.Study, objective: str | None = None) -> StudyData:
    """:func:`load_study_data` of an open study (an in-memory one too)."""
    name = study.study_name
    key, label, value_of = _objective(study, objective)
    cfg = study.user_attrs.get("config") or {}
    pop = cfg.get("population") or (cfg.get("search") or {}).get("population")
    counts = {"complete": 0, "diverged": 0, "pruned": 0, "failed": 0, "running": 0}
    genomes, y, numbers, gens, values, div, div_gen, population = [], [], [], [], [], [], [], []
    names = set(search_space()) - set(LATER_GENES)  # an old trial lacks genes added later
    for i, t in enumerate(study.get_trials(deepcopy=False)):
        if t.state == TrialState.FAIL:
            counts["failed"] += 1
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            counts["running"] += 1
            continue
        if not names <= set(upgrade_params(t.params)):  # an old trial stores β itself
            if t.state == TrialState.COMPLETE:
                raise StudyError(f"study {name!r}: trial {t.number} has no genome parameters (not an optsearch study?)")
            continue
        try:
            g = Genome.from_params(t.params)
        except GenomeError as e:
            raise StudyError(f"study {name!r}: trial {t.number}: {e}") from None
        gen = trial_generation(t)
        gen = gen if gen is not None else (t.number // int(pop) if pop else 0)
        population.append((gen, g))
        diverged = bool(t.user_attrs.get("diverged")) or (
            t.state == TrialState.COMPLETE and any(v <= WORST_FITNESS for v in t.values))
        if diverged:
            counts["diverged"] += 1
            div.append(g)
            div_gen.append(gen)
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        else:
            own = measured(t)
            v = value_of(t, own)
            if v is None or not math.isfinite(v):
                continue
            counts["complete"] += 1
            genomes.append(g)
            y.append(float(v))
            numbers.append(t.number)
            gens.append(gen)
            values.append(own)
    if len(genomes) < MIN_TRIALS:
        raise StudyError(f"study {name!r} has {len(genomes)} completed, non-diverged trials with a {label}; "
                         f"the analysis needs at least {MIN_TRIALS} (run more generations)")
    return StudyData(study, key, label, _fitness_names(study),
                     genomes, np.array(y), np.array(numbers), np.array(gens, dtype=int),
                     np.array(values, dtype=float), div, np.array(div_gen, dtype=int), population, counts)


__all__ = ["AGGREGATE", "MIN_TRIALS", "StudyData", "genome_key", "load_study_data", "study_data", "trial_generation"]

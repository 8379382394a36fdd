"""Resumable evaluations outside the generations: a fixed set of genomes over (task, seed) units.

The funnel and the ablation train a population that is not a generation of the study, so their
results cannot be trials (the genetic sampler would take them for members, and ``best_trials``
would rank them beside search values measured on other tasks). They are stored as **study user
attrs** instead, one per finished unit, written the moment the unit ends:

* ``KEY`` — the stage's header: the genomes' params and the units, fixed when the stage starts;
* ``KEY:unit:U`` — the fitness of every member on unit ``U`` (a list, in member order).

Each attr is one storage write, so a run killed at any moment (even by SIGKILL) keeps every unit it
finished, and running again trains only the units that are missing. A unit trains all members as one
population (one evaluator call), as a generation does.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import optuna

from optsearch.errors import StudyError
from optsearch.genome import Genome
from optsearch.train.spec import RunSpec

Unit = tuple[str, int]
RunUnit = Callable[[Sequence[Genome], Unit], Sequence[float]]
"""Trains the genomes on one (task, seed) unit and returns each one's fitness."""


def unit_key(key: str, u: int) -> str:
    return f"{key}:unit:{u}"


def stored_scores(attrs: dict[str, Any], key: str, n_units: int) -> list[list[float] | None]:
    """The stored fitness lists of a stage's units (None where a unit has not finished)."""
    return [attrs.get(unit_key(key, u)) for u in range(n_units)]


def header(genomes: Sequence[Genome], units: Sequence[Unit], **extra: Any) -> dict[str, Any]:
    return {"params": [g.to_params() for g in genomes], "units": [[t, int(s)] for t, s in units], **extra}


def run_stage(study: optuna.Study, key: str, genomes: Sequence[Genome], units: Sequence[Unit], run_unit: RunUnit, *,
              extra: dict[str, Any] | None = None, progress: Any = None) -> list[list[float]]:
    """Train ``genomes`` on every unit not stored yet under ``key``; returns scores[member][unit].

    The header is written before the first unit; a stage found under ``key`` with other genomes or
    units is a :class:`StudyError` (the caller must rebuild its stage from the stored header).
    """
    attrs = study.user_attrs
    head = header(genomes, units, **(extra or {}))
    old = attrs.get(key)
    if old is None:
        study.set_user_attr(key, head)
    elif old.get("params") != head["params"] or old.get("units") != head["units"]:
        raise StudyError(f"study {study.study_name!r}: stored stage {key!r} holds other genomes or units")
    columns: list[list[float]] = []
    for u, unit in enumerate(units):
        got = attrs.get(unit_key(key, u))
        if got is None:
            got = [_clean(v) for v in run_unit(genomes, (unit[0], int(unit[1])))]
            if len(got) != len(genomes):
                raise RuntimeError(f"unit {unit} returned {len(got)} scores for {len(genomes)} genomes")
            study.set_user_attr(unit_key(key, u), got)
        columns.append([float(v) for v in got])
        if progress is not None:
            progress.update(1)
    return [[col[m] for col in columns] for m in range(len(genomes))]


def complete_scores(attrs: dict[str, Any], key: str) -> tuple[dict[str, Any], list[list[float]]] | None:
    """A finished stage's header and scores[member][unit] from stored attrs; None if absent or unfinished."""
    head = attrs.get(key)
    if not isinstance(head, dict):
        return None
    cols = stored_scores(attrs, key, len(head["units"]))
    if any(c is None for c in cols):
        return None
    return head, [[float(c[m]) for c in cols] for m in range(len(head["params"]))]  # type: ignore[index]


def evaluator_unit(spec: RunSpec, *, evaluator: Callable[..., Any] | None = None) -> RunUnit:
    """A :data:`RunUnit` over :func:`optsearch.train.evaluate.evaluate` with ``spec`` (or a stand-in).

    ``spec`` is the stage's whole training contract (e.g. :meth:`StudyConfig.funnel_spec`), so the funnel
    and the ablation run at the study's precision on validation splits like every other call.
    """
    if evaluator is None:
        from optsearch.train.evaluate import evaluate as evaluator

    def run(genomes: Sequence[Genome], unit: Unit) -> list[float]:
        result = evaluator(list(genomes), [unit[0]], [unit[1]], spec)
        return [m.fitness for m in result.members]

    return run


def _clean(v: Any) -> float:
    """A finite fitness; a diverged or unscored member gets the worst fitness, as in the search."""
    from optsearch.train.tasks import WORST_FITNESS

    v = float(v) if v is not None else math.nan
    return v if math.isfinite(v) else WORST_FITNESS

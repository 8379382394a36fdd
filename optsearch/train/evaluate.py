"""Train a batch of genomes on tasks, together, and score them: the study layer's one entry point.

The work is split into *units*, (task, seed) pairs in a fixed order (``for seed in seeds: for task in
tasks``), each trained by :class:`optsearch.train.unit.UnitRun` with one
:class:`optsearch.train.population.Population` holding all members of the unit.

A callback receives a :class:`Checkpoint` every ``checkpoint_every`` steps and at the end of each
unit, and returns the members to prune; pruned members stop being trained for the rest of the call.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, Sequence

import torch

from optsearch.errors import ConfigError
from optsearch.genome import Genome
from optsearch.train.device import precision_mode, preserve_rng
from optsearch.train.population import Population
from optsearch.train.results import PROXY_EXAMPLES, Callback, Checkpoint, EvalResult, MemberResult, UnitResult
from optsearch.train.spec import SPLITS, RunSpec
from optsearch.train.tasks import WORST_FITNESS, Task, get_task
from optsearch.train.unit import (
    UnitRun, batch_indices, build_model, data_seed, default_device, derive_seed, init_seed, task_data,
)

AUTO_COMPILE_GENOME_STEPS = 10_000
"""``compile_update=None`` compiles the update when a call trains at least this many genome-steps.
Compiling costs seconds once per process (less with Inductor's disk cache) and the compiled update is
several times faster than the eager one at large P (``benchmarks/throughput.py`` measures both), so it
pays from a few thousand steps of a large population on."""


def auto_compile(population: int, tasks: Sequence[str | Task], seeds: int, steps: int | None = None) -> bool:
    """The ``compile_update=None`` rule: compile when ``population`` members train this many genome-steps.

    A study's workers decide it once for the whole generation, not for their share of it: the compiled
    and the eager update round differently, so otherwise a member's result would depend on how many
    batch-mates its worker happened to train.
    """
    per_member = seeds * sum(steps or (get_task(t) if isinstance(t, str) else t).steps for t in tasks)
    return population * per_member >= AUTO_COMPILE_GENOME_STEPS


def evaluate(
    genomes: Sequence[Genome],
    tasks: Sequence[str | Task],
    seeds: Sequence[int] = (0,),
    spec: RunSpec | None = None,
    *,
    callback: Callback | None = None,
) -> EvalResult:
    """Train every genome on every (task, seed) unit, all members of a unit at once, and score them.

    Args:
        genomes: the population.
        tasks: task names (or :class:`~optsearch.train.tasks.Task` objects).
        seeds: each seed is one more run of every task (initial weights and data order differ).
        spec: how every unit is trained (budget, device, split, precision, …; default ``RunSpec()``).
        callback: called at every checkpoint; returns member indices to prune (or None).

    Returns:
        An :class:`EvalResult`; nothing is logged (progress is the callback's business).
    """
    spec = (spec or RunSpec()).validate()
    genomes = list(genomes)
    task_list = [get_task(t) if isinstance(t, str) else t for t in tasks]
    seeds = [int(s) for s in seeds]
    _check(genomes, task_list, seeds)
    dev = spec.torch_device()
    units = [(task, seed) for seed in seeds for task in task_list]
    compile_update = spec.compile_update
    if compile_update is None:
        compile_update = auto_compile(len(genomes), task_list, len(seeds), spec.steps)
    unit_keys = tuple((t.name, s) for t, s in units)
    n = len(genomes)
    done: list[list[UnitResult]] = [[] for _ in range(n)]
    pruned: set[int] = set()
    diverged: set[int] = set()
    fallbacks = 0
    member_steps = [0] * n

    # dropout seeding must not disturb the caller's RNG (torch.manual_seed reseeds every GPU)
    with preserve_rng(dev), precision_mode(spec.precision, deterministic=spec.deterministic):
        for u, (task, seed) in enumerate(units):
            members = [i for i in range(n) if i not in pruned and not (spec.stop_diverged and i in diverged)]
            if not members:
                break
            unit_steps = spec.steps or task.steps
            built: list[Population] = []

            def make(model: torch.nn.Module, ids: list[int], unit_steps: int = unit_steps,
                     built: list[Population] = built) -> Population:
                built.append(Population([genomes[i] for i in ids], model, unit_steps, backend=spec.backend,
                                        compile_update=compile_update, members=ids, precision=spec.precision,
                                        compile_model=spec.compile_model))
                return built[-1]

            run = UnitRun(u, len(units), task, seed, members, make, done, diverged, spec, callback=callback)
            results, newly_pruned = run.train()
            fallbacks += sum(pop.update.eager_fallbacks for pop in built)
            for m, trained in run.member_steps.items():
                member_steps[m] += trained
            pruned |= newly_pruned
            for r in results:
                done[r.member].append(r)
                if r.diverged:
                    diverged.add(r.member)

    names = list(dict.fromkeys(t.name for t in task_list))
    member_results = tuple(_aggregate(done[i], names, pruned=i in pruned) for i in range(n))
    per_unit = tuple(sorted((r for rs in done for r in rs), key=lambda r: (r.unit_index, r.member)))
    if fallbacks:
        logging.getLogger("optsearch").warning(
            "%d population updates ran eagerly although compiling was asked for", fallbacks)
    return EvalResult(members=member_results, units=unit_keys, per_unit=per_unit, split=spec.split,
                      eager_updates=fallbacks, member_steps=tuple(member_steps),
                      planned_steps=sum(spec.steps or t.steps for t, _ in units))


def _check(genomes: list, tasks: list[Task], seeds: list[int]) -> None:
    if not tasks:
        raise ConfigError("evaluate needs at least one task")
    if not seeds:
        raise ConfigError("evaluate needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    if not all(isinstance(g, Genome) for g in genomes):
        raise ConfigError("evaluate takes Genome objects")


def _nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _aggregate(units: list[UnitResult], task_names: list[str], *, pruned: bool) -> MemberResult:
    is_diverged = any(r.diverged for r in units)
    if is_diverged:
        fit = WORST_FITNESS
    else:
        fit = sum(r.fitness for r in units) / len(units) if units else math.nan
    per_task = {}
    for name in task_names:
        rs = [r for r in units if r.task == name]
        per_task[name] = {
            "fitness": sum(r.fitness for r in rs) / len(rs) if rs else math.nan,
            "accuracy": _nanmean(r.accuracy for r in rs if not r.diverged),
            "loss": _nanmean(r.loss for r in rs if not r.diverged),
        }
    return MemberResult(
        fitness=fit, per_task=per_task, diverged=is_diverged, pruned=pruned, units_done=len(units),
        curves={(r.task, r.seed): r.curve for r in units}, units=tuple(units),
    )


__all__ = [
    "AUTO_COMPILE_GENOME_STEPS", "auto_compile", "PROXY_EXAMPLES", "RunSpec", "SPLITS", "Callback", "Checkpoint", "EvalResult", "MemberResult", "UnitResult", "batch_indices",
    "build_model", "data_seed", "default_device", "derive_seed", "evaluate", "init_seed", "task_data",
]

"""Stopping hopeless members mid-evaluation: the evaluator's checkpoint callback and the Optuna pruners."""

from __future__ import annotations

import math
from typing import Any, Sequence

import optuna

from optsearch.search.config import StudyConfig


class Pruning:
    """The evaluator's checkpoint callback: reports intermediate values and decides which members stop.

    Single objective: the fitness estimate at each checkpoint is reported (step = checkpoint index,
    the same schedule for every member of every generation) and the configured Optuna pruner decides.
    Per-task objectives (where Optuna forbids ``report``): after the first finished unit, a member
    whose accuracy is within ``chance_margin`` of chance did not learn and is pruned.
    """

    def __init__(self, cfg: StudyConfig, trials: Sequence[optuna.Trial]):
        self.cfg = cfg
        self.trials = trials
        self.count = 0

    def __call__(self, cp: Any) -> list[int]:
        self.count += 1
        prune: list[int] = []  # with pruner "none" values are still reported: the dashboard draws them
        for i in cp.active:
            value = float(cp.proxy_fitness[i])
            if not self.cfg.per_task:
                if math.isfinite(value):
                    self.trials[i].report(value, step=self.count - 1)
                if self.count > self.cfg.pruning.warmup_checkpoints and self.trials[i].should_prune():
                    prune.append(i)
            elif cp.is_unit_end and cp.unit_index == 0:
                from optsearch.train.tasks import get_task

                chance = 1.0 / get_task(cp.task).num_classes
                if float(cp.proxy_accuracy[i]) <= chance + self.cfg.pruning.chance_margin:
                    prune.append(i)
        return prune


def pruner_for(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The Optuna pruner a study's config names (single-objective studies only)."""
    p = cfg.pruning
    if p.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, cfg.population // 2), n_warmup_steps=p.warmup_checkpoints)
    if p.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.warmup_checkpoints))
    if p.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=p.warmup_checkpoints)
    return optuna.pruners.NopPruner()

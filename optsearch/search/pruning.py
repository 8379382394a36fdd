"""Stopping hopeless members mid-evaluation: the evaluator's checkpoint callback and the Optuna pruners.

Every decision depends only on the member's own curve and on *earlier, settled* generations, never
on batch-mates or on members other workers are training at the same time: with 1 process or many,
the same members are pruned at the same checkpoints, so the study's genomes do not depend on timing.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.search.config import OPTUNA_PRUNERS, StudyConfig
from optsearch.search.sampler.slots import trial_generation


class PastGenerations:
    """What an Optuna pruner sees of the study: the trials of generations before ``generation`` only.

    Those generations are settled before ``generation`` is asked, so the snapshot taken here is final.
    Writes (a successive-halving rung on the pruned trial) go to the real storage.
    """

    def __init__(self, study: optuna.Study, generation: int):
        self._study = study
        self._trials = [t for t in study.get_trials(deepcopy=False)
                        if (g := trial_generation(t)) is not None and g < generation]

    @property
    def _storage(self) -> Any:
        return self._study._storage

    @property
    def _study_id(self) -> int:
        return self._study._study_id

    @property
    def direction(self) -> optuna.study.StudyDirection:
        return self._study.direction

    @property
    def directions(self) -> list[optuna.study.StudyDirection]:
        return self._study.directions

    def get_trials(self, deepcopy: bool = False, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return [t for t in self._trials if states is None or t.state in states]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    @property
    def best_trial(self) -> FrozenTrial:
        done = self.get_trials(states=(TrialState.COMPLETE,))
        if not done:
            raise ValueError("no COMPLETE trial in earlier generations")
        sign = 1.0 if self.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        return max(done, key=lambda t: sign * t.value)


class Pruning:
    """The evaluator's checkpoint callback: reports intermediate values and decides which members stop.

    * Optuna pruners (single objective): the fitness estimate at each checkpoint is reported (step =
      checkpoint index, the same schedule for every member of every generation), and the pruner
      decides against :class:`PastGenerations` — the generation's own members are never compared
      with each other, so who finishes first does not matter.
    * ``chance``: when the first seed of every task is done (units run ``for seed: for task``), a
      member whose accuracy was within ``chance_margin`` of chance on *every* task did not learn
      anything and is pruned; one good on some task is kept (it may be Pareto-optimal).
    * ``none``: nothing is pruned (values are still reported where Optuna allows it: the dashboard
      draws them).
    """

    def __init__(self, cfg: StudyConfig, trials: Sequence[optuna.Trial], study: optuna.Study | None = None,
                 generation: int = 0):
        self.cfg = cfg
        self.trials = trials
        self.count = 0
        self.pruner = pruner_for(cfg) if cfg.pruning.pruner in OPTUNA_PRUNERS and not cfg.per_task else None
        self.past = PastGenerations(study, generation) if self.pruner is not None and study is not None else None
        self.first_round: dict[int, dict[str, float]] = {}  # member -> task -> accuracy on the first seed

    def __call__(self, cp: Any) -> list[int]:
        self.count += 1
        prune: list[int] = []
        for i in cp.active:
            value = float(cp.proxy_fitness[i])
            if not self.cfg.per_task and math.isfinite(value):
                self.trials[i].report(value, step=self.count - 1)
            if self.pruner is not None and self.past is not None and self.count > self.cfg.pruning.warmup_checkpoints:
                if self.pruner.prune(self.past, self.trials[i]._get_latest_trial()):
                    prune.append(i)
        if self.cfg.pruning.pruner == "chance" and cp.is_unit_end:
            prune += self._chance(cp)
        return prune

    def _chance(self, cp: Any) -> list[int]:
        from optsearch.train.tasks import get_task

        n_tasks = len(self.cfg.tasks)
        if cp.unit_index >= n_tasks:
            return []
        for i in cp.active:
            self.first_round.setdefault(i, {})[cp.task] = float(cp.proxy_accuracy[i])
        if cp.unit_index != n_tasks - 1:
            return []
        margin = self.cfg.pruning.chance_margin
        out = []
        for i in cp.active:
            seen = self.first_round.get(i, {})
            if len(seen) == n_tasks and all(
                    acc <= 1.0 / get_task(task).num_classes + margin for task, acc in seen.items()):
                out.append(i)
        return out


def pruner_for(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The Optuna pruner a study's config names (a :class:`NopPruner` for ``chance`` and ``none``)."""
    p = cfg.pruning
    if p.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, cfg.population // 2), n_warmup_steps=p.warmup_checkpoints)
    if p.pruner == "percentile":
        # Optuna's percentile is the share it keeps (25: keep the top quarter); ours is the share it prunes
        return optuna.pruners.PercentilePruner(100.0 - p.percentile, n_startup_trials=max(1, cfg.population // 2),
                                               n_warmup_steps=p.warmup_checkpoints)
    if p.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.warmup_checkpoints))
    if p.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=p.warmup_checkpoints)
    return optuna.pruners.NopPruner()

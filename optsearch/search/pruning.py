"""Stopping hopeless members mid-evaluation: the evaluator's checkpoint callback and the Optuna pruners.

Every decision depends only on the member's own curve and on *earlier, settled* generations, never
on batch-mates or on members other workers are training at the same time: with 1 process or many,
the same members are pruned at the same checkpoints, so the study's genomes do not depend on timing.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.genome import Genome
from optsearch.search.config import MULTI_OBJECTIVE_PRUNERS, OPTUNA_PRUNERS, StudyConfig
from optsearch.search.control import Controls
from optsearch.search.generations import ranking_fitness
from optsearch.search.sampler.slots import trial_generation

CURVES_ATTR = "curves"
"""Trial user attr of a study with several objectives: fitness objective -> its checkpoint values (Optuna
stores no intermediate values there), for the percentile rule of later generations."""


class PastGenerations:
    """What an Optuna pruner sees of the study: the trials of generations before ``generation`` only.

    Those generations are settled before ``generation`` is asked, so the snapshot taken here is final.
    Writes (a successive-halving rung on the pruned trial) go to the real storage.
    """

    def __init__(self, study: optuna.Study, generation: int, *, relative: bool = False):
        self._study = study
        self._trials = [t for t in study.get_trials(deepcopy=False)
                        if (g := trial_generation(t)) is not None and g < generation]
        self.controls = Controls(self._trials, relative=relative or None)
        if relative:  # each curve relative to its generation's control curve (see optsearch.search.control)
            self._trials = [self.controls.shifted(t) for t in self._trials]

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
        return max(done, key=lambda t: sign * ranking_fitness(t, self.controls))  # relative with a control


class Pruning:
    """The evaluator's checkpoint callback: reports intermediate values and decides which members stop.

    * Optuna pruners (single objective): the fitness estimate at each checkpoint is reported (step =
      checkpoint index, the same schedule for every member of every generation), and the pruner
      decides against :class:`PastGenerations` — the generation's own members are never compared
      with each other, so who finishes first does not matter.
    * ``percentile`` with several objectives (per-task or ``+memory`` studies; Optuna RFC #3450): each
      fitness objective's curve is kept (a per-task study's task, else the aggregate fitness; the memory
      objective is no curve and never prunes) and stored with the trial (:data:`CURVES_ATTR`). A member
      is pruned when, on *every* fitness objective, its best value so far is below ``percentile`` of
      the earlier generations' COMPLETE curves at the same checkpoint of that objective, as Optuna's
      PercentilePruner does for one; an objective needs ``warmup_checkpoints`` values first, so
      nothing is pruned before every task has been trained a while. In a ``+memory`` study a member is
      compared only with earlier members holding no more optimizer state than it does: plain SGD is not
      pruned for trailing Adam, which it may still beat on the memory axis of the front.
    * ``chance`` (the default with several objectives): when the first seed of every task is done (units
      run ``for seed: for task``), a member whose accuracy was within ``chance_margin`` of chance on
      *every* task did not learn anything and is pruned; one good on some task is kept (it may be
      Pareto-optimal).
    * ``none``: nothing is pruned (values are still reported where Optuna allows it: the dashboard
      draws them).

    With ``control`` (the study's control member is trained as member ``len(trials)`` of the batch; see
    :mod:`.control`) the curve rules compare each member's values less the control's at the same checkpoint
    with earlier members' values less their own generation's control: a generation drawn on hard seeds is
    not pruned wholesale. The reported intermediate values stay raw.
    """

    def __init__(self, cfg: StudyConfig, trials: Sequence[optuna.Trial], study: optuna.Study | None = None,
                 generation: int = 0, *, control: bool = False):
        self.cfg = cfg
        self.trials = trials
        self.ctrl = len(trials) if control else None
        self.ctrl_curve: dict[str, list[float]] = {}  # the control's values so far, per fitness objective
        self.count = 0
        self.single = len(cfg.objective_names) == 1
        self.pruner = pruner_for(cfg) if cfg.pruning.pruner in OPTUNA_PRUNERS and self.single else None
        multi = not self.single and cfg.pruning.pruner in MULTI_OBJECTIVE_PRUNERS
        # member -> fitness objective -> its values so far (several objectives and a curve pruner only)
        self.curves: list[dict[str, list[float]]] | None = [{} for _ in trials] if multi else None
        self.past = (PastGenerations(study, generation, relative=control)
                     if (self.pruner is not None or multi) and study is not None else None)
        self._earlier: dict[tuple[str, int, float], list[float]] = {}  # (objective, index, state) -> values
        # each member's optimizer state: in a +memory study it compares only with members of no more
        self.state = ([float(Genome.from_params(t.params).state_floats()) for t in trials]
                      if multi and cfg.memory else [math.inf] * len(trials))
        self.first_round: dict[int, dict[str, float]] = {}  # member -> task -> accuracy on the first seed

    def __call__(self, cp: Any) -> list[int]:
        self.count += 1
        prune: list[int] = []
        name = cp.task if self.cfg.per_task else "fitness"
        if self.ctrl is not None:
            self.ctrl_curve.setdefault(name, []).append(
                float(cp.proxy_fitness[self.ctrl]) if self.ctrl in cp.active else math.nan)
        for i in cp.active:
            if i == self.ctrl:  # the control is never pruned
                continue
            value = float(cp.proxy_fitness[i])
            if self.single and math.isfinite(value):
                self.trials[i].report(value, step=self.count - 1)
            if self.pruner is not None and self.past is not None and self.count > self.cfg.pruning.warmup_checkpoints:
                if self.pruner.prune(self.past, self._relative_trial(i)):
                    prune.append(i)
            if self.curves is not None:
                self.curves[i].setdefault(name, []).append(value)
                if self._below_everywhere(i):
                    prune.append(i)
        members = [i for i in cp.active if i != self.ctrl]
        if self.cfg.pruning.pruner == "chance" and cp.is_unit_end:
            prune += self._chance(cp, members)
        if self.curves is not None and cp.is_unit_end and cp.unit_index == cp.num_units - 1:
            self.save_curves(members)  # the last unit's end: these members' curves are complete
        return prune

    def _control_at(self, name: str, index: int) -> float:
        """The control's value at checkpoint ``index`` of ``name`` (0 without a control; the study's mean control
        when this generation's is unknown there)."""
        if self.ctrl is None:
            return 0.0
        curve = self.ctrl_curve.get(name, [])
        v = curve[index] if index < len(curve) else math.nan
        if math.isfinite(v):
            return v
        return self.past.controls.fallback_at(name, index) if self.past is not None else 0.0

    def _relative_trial(self, i: int) -> FrozenTrial:
        """Member ``i`` as the pruner sees it: its intermediate values less the control's (raw without one)."""
        t = self.trials[i]._get_latest_trial()
        if self.ctrl is None:
            return t
        t.intermediate_values = {s: v - self._control_at("fitness", s) for s, v in t.intermediate_values.items()}
        return t

    def _below_everywhere(self, i: int) -> bool:
        """Member ``i`` is below the percentile of earlier generations on every fitness objective."""
        if self.past is None or self.curves is None:
            return False
        p = self.cfg.pruning
        for name in self.cfg.fitness_names:
            curve = self.curves[i].get(name, [])
            if len(curve) <= p.warmup_checkpoints:
                return False
            earlier = self._earlier_values(name, len(curve) - 1, self.state[i])
            if len(earlier) < max(1, self.cfg.population // 2):  # n_startup_trials, as pruner_for's
                return False
            best = max((v - self._control_at(name, k) for k, v in enumerate(curve) if math.isfinite(v)),
                       default=math.nan)
            if not best < float(np.percentile(earlier, p.percentile)):
                return False
        return True

    def _earlier_values(self, name: str, index: int, state: float) -> list[float]:
        """The earlier generations' COMPLETE members' values of objective ``name`` at its checkpoint ``index``
        (in a ``+memory`` study only those whose optimizer state, their last value, is at most ``state``)."""
        key = (name, index, state)
        if key not in self._earlier:
            assert self.past is not None
            done = self.past.get_trials(states=(TrialState.COMPLETE,))
            kept = [t for t in done if not self.cfg.memory or t.values[-1] <= state]
            shift = [self.past.controls.at_checkpoint(t, name, index) if self.ctrl is not None else 0.0 for t in kept]
            curves = [t.user_attrs.get(CURVES_ATTR) or {} for t in kept]
            self._earlier[key] = [float(c[name][index]) - d for c, d in zip(curves, shift)
                                  if len(c.get(name) or ()) > index and math.isfinite(c[name][index])]
        return self._earlier[key]

    def save_curves(self, members: Sequence[int]) -> None:
        """Store these members' fitness curves with their trials (one write each), for later generations' pruning."""
        if self.curves is not None:
            for i in members:
                self.trials[i].set_user_attr(CURVES_ATTR, self.curves[i])

    def _chance(self, cp: Any, active: Sequence[int]) -> list[int]:
        from optsearch.train.tasks import get_task

        n_tasks = len(self.cfg.tasks)
        if cp.unit_index >= n_tasks:
            return []
        for i in active:
            self.first_round.setdefault(i, {})[cp.task] = float(cp.proxy_accuracy[i])
        if cp.unit_index != n_tasks - 1:
            return []
        margin = self.cfg.pruning.chance_margin
        out = []
        for i in active:
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

"""Pruning decisions (issue 13, items 2 and 3): per-task-aware, switchable, and independent of who finished first."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from optsearch.search.config import StudyConfig
from optsearch.search.pruning import Pruning
from optsearch.search.sampler import GENERATION_KEY, MEMBER_KEY
from optsearch.train.results import Checkpoint

optuna.logging.set_verbosity(optuna.logging.WARNING)
TASKS = ["digits", "mnist1d"]  # 10 classes each: chance 0.1


def cfg(objective="per_task", **pruning) -> StudyConfig:
    return StudyConfig.from_dict({"tasks": TASKS, "seeds": [0, 1], "population": 4, "generations": 2,
                                  "objective": objective, "pruning": pruning})


def unit_end(unit: int, acc: list[float], active=None) -> Checkpoint:
    n = len(acc)
    return Checkpoint(unit_index=unit, task=TASKS[unit % 2], seed=unit // 2, step=30, is_unit_end=True,
                      active=tuple(range(n) if active is None else active), proxy_accuracy=tuple(acc),
                      proxy_fitness=tuple(acc), mean_fitness=tuple(acc), diverged=(), num_units=4)


def test_chance_rule_waits_for_every_task_and_keeps_a_member_good_on_one():
    p = Pruning(cfg(), trials=[None] * 3)
    # member 0: at chance on digits, good on mnist1d; member 1: at chance on both; member 2: good on both
    assert p(unit_end(0, [0.11, 0.10, 0.9])) == []  # the first unit alone decides nothing
    assert p(unit_end(1, [0.8, 0.12, 0.9])) == [1]
    assert p(unit_end(2, [0.1, 0.1, 0.1], active=[0, 2])) == []  # later seeds: no more chance checks


def test_pruner_none_turns_the_chance_rule_off():
    p = Pruning(cfg(pruner="none"), trials=[None] * 2)
    assert p(unit_end(0, [0.1, 0.1])) == [] and p(unit_end(1, [0.1, 0.1])) == []


def _trial(study, generation, member, values, state=None):
    t = study.ask()
    study._storage.set_trial_system_attr(t._trial_id, GENERATION_KEY, generation)
    study._storage.set_trial_system_attr(t._trial_id, MEMBER_KEY, member)
    for step, v in enumerate(values):
        t.report(v, step)
    if state is not None:
        study.tell(t, values[-1] if state == TrialState.COMPLETE else None, state=state)
    return t


def mid(acc: list[float]) -> Checkpoint:
    return Checkpoint(unit_index=0, task="digits", seed=0, step=10, is_unit_end=False, active=tuple(range(len(acc))),
                      proxy_accuracy=tuple(acc), proxy_fitness=tuple(acc), mean_fitness=(math.nan,) * len(acc),
                      diverged=(), num_units=1)


@pytest.mark.parametrize("mate_finished_first", [False, True])
def test_median_pruning_compares_with_earlier_generations_only(mate_finished_first):
    c = cfg("aggregate", pruner="median", warmup_checkpoints=0)
    study = optuna.create_study(direction="maximize")
    for m in range(3):  # generation 0: curves around 0.5
        _trial(study, 0, m, [0.5, 0.5], TrialState.COMPLETE)
    if mate_finished_first:  # batch-mates of generation 1, far better, finished in another worker
        for m in (1, 3, 4):
            _trial(study, 1, m, [0.99, 0.99], TrialState.COMPLETE)
    weak, strong = _trial(study, 1, 0, []), _trial(study, 1, 2, [])
    p = Pruning(c, [weak, strong], study, generation=1)
    # the weak member is below generation 0's median, the strong one above it; the far better
    # batch-mate (told or not) changes neither decision
    assert p(mid([0.3, 0.7])) == [0]


def test_generation_zero_is_never_pruned_by_an_optuna_pruner():
    c = cfg("aggregate", pruner="median", warmup_checkpoints=0)
    study = optuna.create_study(direction="maximize")
    for m in range(3):
        _trial(study, 0, m, [0.9, 0.9], TrialState.COMPLETE)  # batch-mates, already told
    t = _trial(study, 0, 3, [])
    assert Pruning(c, [t], study, generation=0)(mid([0.1])) == []


def test_percentile_pruning_stops_only_the_bottom_of_earlier_generations():
    """A generation drawn on harder seeds sits a little below the earlier median: the median pruner stops
    all of it, the 25th-percentile pruner only a member below the earlier generations' bottom quarter."""
    study = optuna.create_study(direction="maximize")
    for m, v in enumerate([0.40, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80]):  # generation 0
        _trial(study, 0, m, [v, v], TrialState.COMPLETE)
    members = [_trial(study, 1, m, []) for m in range(3)]
    hard_seeds = mid([0.60, 0.62, 0.45])  # all below generation 0's median (0.625); one in its bottom quarter
    median = Pruning(cfg("aggregate", pruner="median", warmup_checkpoints=0), members, study, generation=1)
    assert median(hard_seeds) == [0, 1, 2]
    members = [_trial(study, 1, m, []) for m in range(3, 6)]
    pct = Pruning(cfg("aggregate", pruner="percentile", warmup_checkpoints=0), members, study, generation=1)
    assert pct.pruner.__class__.__name__ == "PercentilePruner" and pct(hard_seeds) == [2]


def test_percentile_setting_is_checked():
    from optsearch.errors import ConfigError

    assert cfg("aggregate", pruner="percentile", percentile=10).pruning.percentile == 10.0
    for bad in ({"pruner": "percentile", "percentile": 0}, {"pruner": "percentile", "percentile": "x"},
                {"pruner": "median", "percentile": 10}):  # ignored by the median pruner
        with pytest.raises(ConfigError, match="percentile"):
            cfg("aggregate", **bad)

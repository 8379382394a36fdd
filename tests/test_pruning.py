"""Pruning decisions (issue 13, items 2 and 3): per-task-aware, switchable, and independent of who finished first."""

from __future__ import annotations

import math
from dataclasses import replace

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


# ----------------------------------------------------------------------------- several objectives (issue 27)
def _told(study, generation, member, curves, values, genome=None):
    """A trial of an earlier (or the same) generation, told COMPLETE with its stored curves."""
    from optsearch.search.pruning import CURVES_ATTR

    t = _asked(study, generation, member, genome)
    t.set_user_attr(CURVES_ATTR, curves)
    study.tell(t, values)
    return t


def _asked(study, generation, member, genome=None):
    from optsearch.genome import Genome, define_search_space

    if genome is not None:
        study.enqueue_trial(genome.to_params())
    t = study.ask()
    study._storage.set_trial_system_attr(t._trial_id, GENERATION_KEY, generation)
    study._storage.set_trial_system_attr(t._trial_id, MEMBER_KEY, member)
    if genome is not None:
        assert define_search_space(t) == genome
    return t


def at(task: str, fitness: list[float], unit: int = 0) -> Checkpoint:
    return Checkpoint(unit_index=unit, task=task, seed=0, step=10, is_unit_end=False, active=tuple(range(len(fitness))),
                      proxy_accuracy=tuple(fitness), proxy_fitness=tuple(fitness), mean_fitness=(math.nan,) * len(fitness),
                      diverged=(), num_units=2)


@pytest.mark.parametrize("mate_finished_first", [False, True])
def test_percentile_with_several_objectives_prunes_only_below_on_every_task(mate_finished_first):
    """Optuna forbids trial.report with several objectives (RFC #3450): our rule keeps each task's curve and
    prunes a member only when it is below the earlier generations' 25th percentile on every task."""
    c = cfg("per_task", pruner="percentile", warmup_checkpoints=0)
    study = optuna.create_study(directions=["maximize", "maximize"])
    for m, v in enumerate([0.4, 0.5, 0.6, 0.7]):  # generation 0: both tasks' curves at v
        _told(study, 0, m, {"digits": [v, v], "mnist1d": [v, v]}, [v, v])
    if mate_finished_first:  # far better batch-mates, already told by another worker: they change nothing
        for m in (3, 4):
            _told(study, 1, m, {"digits": [0.99, 0.99], "mnist1d": [0.99, 0.99]}, [0.99, 0.99])
    members = [_asked(study, 1, m) for m in range(3)]
    p = Pruning(c, members, study, generation=1)
    # member 0 weak on both, member 1 weak on digits only, member 2 weak on mnist1d only
    assert p(at("digits", [0.3, 0.3, 0.8])) == []  # mnist1d not trained yet: not below on *every* task
    assert p(at("digits", [0.3, 0.3, 0.8])) == []
    assert p(at("mnist1d", [0.3, 0.8, 0.3], unit=1)) == [0]
    # the last unit's end stores the survivors' curves for later generations (no intermediate values exist
    # with several objectives)
    assert p(replace(at("mnist1d", [math.nan, 0.8, 0.3], unit=1), active=(1, 2), is_unit_end=True)) == []
    stored = [study.trials[t.number].user_attrs.get("curves") for t in members]
    assert stored == [None, {"digits": [0.3, 0.3], "mnist1d": [0.8, 0.8]}, {"digits": [0.8, 0.8], "mnist1d": [0.3, 0.3]}]


def test_percentile_in_a_memory_study_compares_only_with_no_more_state():
    """The memory objective is no curve and never prunes, but plain SGD is measured against earlier genomes of
    no more optimizer state, so the zero-state end of the accuracy–memory front survives Adam's higher curves."""
    from optsearch.genome import NAMED

    c = cfg("aggregate+memory", pruner="percentile", warmup_checkpoints=0)
    assert c.objective_names == ["fitness", "state_floats"] and c.directions == ["maximize", "minimize"]
    study = optuna.create_study(directions=c.directions)
    for m, v in enumerate([0.8, 0.85, 0.9, 0.95, 0.97, 0.99]):
        _told(study, 0, m, {"fitness": [v]}, [v, 2.0])  # Adam-like, 2 floats per parameter
    for m, v in enumerate([0.3, 0.35], start=6):
        _told(study, 0, m, {"fitness": [v]}, [v, 0.0])  # plain SGD-like, no state
    members = [_asked(study, 1, 0, NAMED["sgd"]), _asked(study, 1, 1, NAMED["adam"])]
    p = Pruning(c, members, study, generation=1)
    assert p.state == [0.0, 2.0]
    # 0.5: above the stateless genomes, below the 25th percentile of all (0.69): only Adam is pruned
    assert p(at("digits", [0.5, 0.5])) == [1]


def test_percentile_is_allowed_with_several_objectives_and_the_chance_rule_stays_the_default():
    from optsearch.errors import ConfigError

    for objective in ("per_task", "aggregate+memory", "per_task+memory"):
        assert cfg(objective).pruning.pruner == "chance"
        assert cfg(objective, pruner="percentile", percentile=10).pruning.percentile == 10.0
        with pytest.raises(ConfigError, match="cannot run in a .* study.*'percentile'"):
            cfg(objective, pruner="median")


def test_with_a_control_a_generation_on_hard_seeds_is_compared_relative_to_its_control():
    """Issue 23 item 4: generation 1 ran on seeds 0.2 harder (its control 0.4 where generation 0's was 0.6). Raw,
    the median pruner stops all of it; relative to each generation's control at the same checkpoint, only the
    member below generation 0's relative median stops. The control (the batch's last member) is never pruned."""
    from optsearch.search.control import CONTROL_ATTR, CONTROL_CURVE_ATTR

    study = optuna.create_study(direction="maximize")
    for m, v in enumerate([0.50, 0.60, 0.70]):  # generation 0: relative −0.1, 0, +0.1; median 0
        t = _trial(study, 0, m, [v, v])
        t.set_user_attr("generation", 0)
        t.set_user_attr(CONTROL_ATTR, [0.6])
        t.set_user_attr(CONTROL_CURVE_ATTR, {"fitness": [0.6, 0.6]})
        study.tell(t, v)
    c = cfg("aggregate", pruner="median", warmup_checkpoints=0)
    raw = Pruning(c, [_trial(study, 1, m, []) for m in range(2)], study, generation=1)
    assert raw(mid([0.45, 0.35])) == [0, 1]
    # the same members with the control as the batch's last member (0.4): relative +0.05 and −0.05
    fair = Pruning(c, [_trial(study, 1, m, []) for m in range(2, 4)], study, generation=1, control=True)
    assert fair(mid([0.45, 0.35, 0.4])) == [1] and fair.ctrl_curve == {"fitness": [0.4]}


def test_percentile_with_several_objectives_compares_curves_relative_to_each_generations_control():
    """Per-task study, generation 1 on seeds 0.3 harder on both tasks (its control, the batch's last member, at
    0.3 where generation 0's stood at 0.6): raw, every member is below generation 0's bottom quarter on both tasks;
    relative to the controls only the member that is weak relative to its own control stops, and the control's
    curve is kept per task."""
    from optsearch.search.control import CONTROL_ATTR, CONTROL_CURVE_ATTR

    c = cfg("per_task", pruner="percentile", warmup_checkpoints=0)
    study = optuna.create_study(directions=["maximize", "maximize"])
    for m, v in enumerate([0.5, 0.6, 0.7, 0.8]):  # generation 0: relative −0.1 … +0.2 on both tasks
        t = _asked(study, 0, m)
        t.set_user_attr("generation", 0)
        t.set_user_attr(CONTROL_ATTR, [0.6, 0.6])
        t.set_user_attr(CONTROL_CURVE_ATTR, {"digits": [0.6], "mnist1d": [0.6]})
        t.set_user_attr("curves", {"digits": [v], "mnist1d": [v]})
        study.tell(t, [v, v])
    hard = [0.2, 0.4]  # relative to the control (0.3): −0.1 (bottom quarter of generation 0) and +0.1
    raw = Pruning(c, [_asked(study, 1, m) for m in range(2)], study, generation=1)
    assert raw(at("digits", hard)) == [] and raw(at("mnist1d", hard, unit=1)) == [0, 1]
    fair = Pruning(c, [_asked(study, 1, m) for m in range(2, 4)], study, generation=1, control=True)
    assert fair(at("digits", [*hard, 0.3])) == [] and fair(at("mnist1d", [*hard, 0.3], unit=1)) == [0]
    assert fair.ctrl_curve == {"digits": [0.3], "mnist1d": [0.3]}

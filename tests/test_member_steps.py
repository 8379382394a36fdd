"""Each call (generation) measures the member-steps it trained, so pruning's saving is a measurement."""

from __future__ import annotations

import dataclasses

import optuna
from optuna.distributions import FloatDistribution

from optsearch.genome import NAMED
from optsearch.search.worker import MEMBER_STEPS_ATTR, trained_share
from optsearch.train.evaluate import RunSpec, evaluate
from optsearch.train.results import Checkpoint

ADAM, RMSPROP, SGD = NAMED["adam"], NAMED["rmsprop"], NAMED["sgd_momentum"]


def test_a_pruned_member_counts_the_steps_it_trained():
    def prune(cp: Checkpoint):
        if (cp.unit_index, cp.step) == (0, 4):
            return [1]  # trained 4 steps of unit 0, none of unit 1
        if (cp.unit_index, cp.step) == (1, 8):
            return [2]  # all of unit 0, 8 steps of unit 1
        return None

    res = evaluate([ADAM, SGD, RMSPROP], ["digits"], [0, 1], RunSpec(steps=12, checkpoint_every=4, device="cpu", compile_update=False),
                   callback=prune)
    assert res.members[1].pruned and res.members[2].pruned and not res.members[0].pruned
    assert res.planned_steps == 24
    assert res.member_steps == (24, 4, 20)


def test_a_diverged_member_counts_the_steps_until_it_was_retired():
    bad = dataclasses.replace(ADAM)
    object.__setattr__(bad, "lr_log10", 1.0)  # lr = 10, outside the search space: diverges
    res = evaluate([ADAM, bad], ["digits"], [0], RunSpec(steps=12, checkpoint_every=4, device="cpu", compile_update=False))
    assert res.members[1].diverged
    assert res.member_steps[0] == 12 and res.member_steps[1] in (4, 8, 12)  # retired at the checkpoint after it


def test_trained_share_sums_over_the_trials_that_stored_it():
    def trial(attrs: dict) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=1.0,
                                         user_attrs=attrs)

    trials = [trial({MEMBER_STEPS_ATTR: [24, 24]}), trial({MEMBER_STEPS_ATTR: [4, 24]}), trial({})]
    assert trained_share(trials) == 28 / 48
    assert trained_share([trial({})]) is None


def test_device_check_takes_the_share_a_study_measured(tmp_path):
    import importlib.util
    from pathlib import Path

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    for done in (24, 6):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                                  value=1.0, user_attrs={MEMBER_STEPS_ATTR: [done, 24]}))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"
    spec = importlib.util.spec_from_file_location("device_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.measured_share("s", url) == 30 / 48

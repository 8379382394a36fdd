"""The generic GA sampler (the OptunaHub package) under Optuna's own sampler-agnostic test suite, and ours.

``optuna.testing.pytest_samplers`` is the suite Optuna runs on each of its samplers (sampling inside every
distribution kind incl. log/step/int, NaN objectives, PartialFixedSampler, conditional and dynamic spaces,
relative sampling, several objectives, ``n_jobs`` > 1): subclassing it runs every one of its tests here.
"""

from __future__ import annotations

import math
import runpy
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase, MultiObjectiveSamplerTestCase, RelativeSamplerTestCase,
)
from optuna.trial import TrialState

from optsearch.search.sampler.package.samplers.genetic_algorithm import (
    GENERATION_KEY, MEMBER_KEY, ORIGIN_KEY, GeneticAlgorithmSampler,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
REGISTRY = Path(__file__).resolve().parents[1] / "optsearch" / "search" / "sampler" / "package"


# ----------------------------------------------------------------------------- Optuna's suite
class TestBasic(BasicSamplerTestCase):
    """A small population, so the objectives' 10-20 trials span several bred generations."""

    @pytest.fixture
    def sampler(self):
        return lambda: GeneticAlgorithmSampler(population_size=4, seed=0)


class TestRelative(RelativeSamplerTestCase):
    """These tests leave trials RUNNING in generation 0: the population holds them all (no breeding waits)."""

    @pytest.fixture
    def sampler(self):
        return lambda: GeneticAlgorithmSampler(population_size=16, seed=0)


class TestMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return lambda: GeneticAlgorithmSampler(population_size=4, seed=0)


# ----------------------------------------------------------------------------- ours
def _mixed(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    n = trial.suggest_int("n", 0, 20, step=2)
    q = trial.suggest_float("q", 0, 1, step=0.25)
    c = trial.suggest_categorical("c", ["a", "b", "c"])
    return x**2 + (math.log10(lr) + 3) ** 2 + abs(n - 6) + q + (c != "b")


def _points(study: optuna.Study) -> dict[tuple[int, int], dict]:
    return {(t.system_attrs[GENERATION_KEY], t.system_attrs[MEMBER_KEY]): t.params for t in study.trials}


def test_bred_values_stay_on_every_distribution_and_the_search_improves():
    study = optuna.create_study(sampler=GeneticAlgorithmSampler(population_size=10, seed=1))
    study.optimize(_mixed, n_trials=100)
    for t in study.trials:
        assert -5 <= t.params["x"] <= 5 and 1e-5 <= t.params["lr"] <= 1e-1
        assert t.params["n"] in range(0, 21, 2) and t.params["q"] in (0, 0.25, 0.5, 0.75, 1.0)
        assert type(t.params["n"]) is int and type(t.params["x"]) is float
    origins = {t.system_attrs.get(ORIGIN_KEY) for t in study.trials}
    assert {"elite", "crossover", "mutation"} <= origins
    first, last = ([t.value for t in study.trials if t.system_attrs[GENERATION_KEY] == g] for g in (0, 9))
    assert np.median(last) < np.median(first) and study.best_value < min(first)


def test_same_seed_same_trials_with_threads_and_reseed_keeps_a_seeded_stream():
    one = optuna.create_study(sampler=GeneticAlgorithmSampler(population_size=6, seed=3))
    one.optimize(_mixed, n_trials=24)
    many = optuna.create_study(sampler=GeneticAlgorithmSampler(population_size=6, seed=3))
    many.optimize(_mixed, n_trials=24, n_jobs=3)  # Optuna calls reseed_rng in each thread
    assert _points(many) == _points(one)
    other = optuna.create_study(sampler=GeneticAlgorithmSampler(population_size=6, seed=4))
    other.optimize(_mixed, n_trials=6)
    assert _points(other) != {k: v for k, v in _points(one).items() if k[0] == 0}


def test_reseed_rng_changes_an_unseeded_sampler():
    sampler = GeneticAlgorithmSampler(population_size=4)
    before = sampler.member_rng(0, 0).random()
    sampler.reseed_rng()
    assert sampler.member_rng(0, 0).random() != before


def test_nan_values_fail_retry_their_slot_then_get_a_fresh_point_and_never_breed():
    calls = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        calls.append(x)
        return float("nan") if len(calls) <= 3 else x  # the first slot fails 3 times

    study = optuna.create_study(sampler=GeneticAlgorithmSampler(population_size=3, seed=0, slot_retries=2))
    study.optimize(objective, n_trials=9)
    states = [t.state for t in study.trials]
    assert states[:3] == [TrialState.FAIL] * 3
    assert calls[0] == calls[1] == calls[2] != calls[3]  # retried twice with the same point, then a fresh one
    assert all(t.system_attrs[MEMBER_KEY] == 0 for t in study.trials[:4])
    assert sum(s == TrialState.COMPLETE for s in states) == 6


def test_fixed_params_are_never_drawn_crossed_or_mutated():
    study = optuna.create_study(sampler=GeneticAlgorithmSampler(
        population_size=6, seed=0, fixed_params={"c": "c", "n": 4}, mutation_prob=1.0))
    study.optimize(_mixed, n_trials=30)
    assert {(t.params["c"], t.params["n"]) for t in study.trials} == {("c", 4)}
    assert len({t.params["x"] for t in study.trials}) > 10  # the rest still evolves
    with pytest.raises(ValueError, match="outside"):
        GeneticAlgorithmSampler(search_space={"n": IntDistribution(0, 3)}, fixed_params={"n": 9})


def test_partial_fixed_sampler_and_enqueued_params_hold_over_generations():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.PartialFixedSampler({"lr": 1e-3}, GeneticAlgorithmSampler(4, seed=0))
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"x": 0.5, "c": "b"})  # params fixed by the caller for one trial
    study.optimize(_mixed, n_trials=16)
    assert {t.params["lr"] for t in study.trials} == {1e-3}
    assert (study.trials[0].params["x"], study.trials[0].params["c"]) == (0.5, "b")
    assert max(t.system_attrs[GENERATION_KEY] for t in study.trials) == 3


def test_initial_params_open_generation_zero_and_elites_come_first():
    space = {"x": FloatDistribution(-5, 5), "c": CategoricalDistribution(["a", "b"])}
    sampler = GeneticAlgorithmSampler(population_size=4, seed=0, search_space=space, elites=1,
                                      initial_params={"origin": {"x": 0.0, "c": "b"}})
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", -5, 5) ** 2 + (t.suggest_categorical("c", ["a", "b"]) == "a"),
                   n_trials=8)
    assert study.trials[0].params == {"x": 0.0, "c": "b"} and study.trials[0].system_attrs[ORIGIN_KEY] == "seed:origin"
    assert study.trials[4].system_attrs[ORIGIN_KEY] == "elite" and study.trials[4].params == study.trials[0].params


def test_two_objectives_breed_by_nsga2_survival_and_beat_random_search():
    def zdt1(trial: optuna.Trial) -> tuple[float, float]:
        xs = [trial.suggest_float(f"x{i}", 0, 1) for i in range(4)]
        g = 1 + 9 * sum(xs[1:]) / 3
        return xs[0], g * (1 - math.sqrt(xs[0] / g))

    def hypervolume(study: optuna.Study) -> float:
        pts = np.array([t.values for t in study.best_trials])
        return optuna._hypervolume.compute_hypervolume(pts, np.array([1.1, 11.0]))

    ga = optuna.create_study(directions=["minimize"] * 2, sampler=GeneticAlgorithmSampler(12, seed=0))
    ga.optimize(zdt1, n_trials=120)
    rnd = optuna.create_study(directions=["minimize"] * 2, sampler=optuna.samplers.RandomSampler(seed=0))
    rnd.optimize(zdt1, n_trials=120)
    assert hypervolume(ga) > hypervolume(rnd)


# ----------------------------------------------------------------------------- the OptunaHub package
def test_the_folder_loads_with_optunahub_and_its_example_runs(monkeypatch, capsys):
    optunahub = pytest.importorskip("optunahub")
    module = optunahub.load_local_module(package="samplers/genetic_algorithm", registry_root=str(REGISTRY))
    assert module.GeneticAlgorithmSampler.__name__ == "GeneticAlgorithmSampler"
    study = optuna.create_study(sampler=module.GeneticAlgorithmSampler(population_size=4, seed=0))
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=8)
    assert len(study.trials) == 8

    folder = REGISTRY / "samplers" / "genetic_algorithm"
    readme = (folder / "README.md").read_text()
    front = readme.split("---")[1]
    for key in ("author:", "title:", "description:", "tags:", "optuna_versions:", "license:"):
        assert key in front
    assert "sampler" in front.split("tags:")[1].splitlines()[0]
    for section in ("## Abstract", "## Class or Function Names", "## Installation", "## Example", "## Others"):
        assert section in readme
    assert (folder / "LICENSE").read_text().startswith("MIT License")

    # example.py loads the package from the remote registry: point that at this folder.
    monkeypatch.setattr(optunahub, "load_module",
                        lambda package, **kw: optunahub.load_local_module(package, registry_root=str(REGISTRY)))
    runpy.run_path(str(folder / "example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "'activation': 'gelu'" in out and "Pareto front:" in out

"""Minimise a mixed float/int/categorical function with the genetic-algorithm sampler, then two objectives."""

from __future__ import annotations

import math

import optuna
import optunahub


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    layers = trial.suggest_int("layers", 1, 8)
    act = trial.suggest_categorical("activation", ["relu", "tanh", "gelu"])
    return x**2 + (math.log10(lr) + 3) ** 2 + abs(layers - 3) + (act != "gelu")


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    return x, (1.0 + y) * (1.0 - x**0.5)


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    module = optunahub.load_module("samplers/genetic_algorithm")
    GeneticAlgorithmSampler = module.GeneticAlgorithmSampler

    # "activation" is held at "gelu": never drawn, mutated or crossed over.
    sampler = GeneticAlgorithmSampler(population_size=10, seed=42, fixed_params={"activation": "gelu"})
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=100)
    print("best:", study.best_value, study.best_params)

    # Several objectives: NSGA-II's (μ+λ) survival, crowded tournaments.
    mo = optuna.create_study(directions=["minimize", "minimize"], sampler=GeneticAlgorithmSampler(10, seed=0))
    mo.optimize(two_objectives, n_trials=100, n_jobs=2)  # the same trials as n_jobs=1
    print("Pareto front:", len(mo.best_trials), "trials")

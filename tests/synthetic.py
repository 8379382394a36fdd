"""Synthetic studies whose fitness is a known function of the genome: ground truth for the analysis tests.

Test fixtures, not library code: the analysis tests and ``benchmarks/analysis_speed.py`` build
studies here and check what the analysis recovers against the truth written in :func:`synthetic_fitness`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from optsearch.genome import Genome, define_search_space, search_space
from optsearch.search.storage import open_storage
from optsearch.train.tasks import WORST_FITNESS

SYNTHETIC_TASKS = ("digits", "mnist1d")


def synthetic_fitness(g: Genome, rng: np.random.Generator, *, per_task: bool, noise: float = 0.01) -> dict[str, float] | None:
    """Known per-task fitness of a genome, or None when it "diverges".

    Both tasks: +0.10 at lr_log10 = −2.5 (Gaussian bump, width 0.6), +0.02 with an adam term, nothing
    from ε. digits: +0.05 without bias correction. mnist1d: +0.05 without bias correction in the
    aggregate variant; −0.03 in the per-task variant (a trade-off, so there is a Pareto front), and a
    bump at β1 = 0.86. Genomes with lr_log10 > −1 and no clipping diverge.
    """
    if g.lr_log10 > -1.0 and g.clip == "none":
        return None
    common = 0.10 * math.exp(-(((g.lr_log10 + 2.5) / 0.6) ** 2)) + 0.02 * ("adam" in g.merged_terms())
    off = not g.bias_correction
    digits = 0.60 + common + 0.05 * off + rng.normal(0, noise)
    mnist1d = (0.50 + common + 0.05 * math.exp(-(((g.beta1 - 0.86) / 0.1) ** 2)) + (-0.03 if per_task else 0.05) * off
               + rng.normal(0, noise))
    return {"digits": digits, "mnist1d": mnist1d}


def synthetic_study(name: str, storage: str, *, n_trials: int = 400, seed: int = 0, per_task: bool = False,
                    population: int = 50) -> optuna.Study:
    """A study in ``storage`` whose fitness is :func:`synthetic_fitness` of randomly sampled genomes.

    Trials look like the study layer's (params, values, "generation"/"formula"/"diverged"/"seeds" and
    per-task user attrs; diverged members PRUNED), so the analysis can be checked against known truth.
    """
    rng = np.random.default_rng(seed)
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    objectives = list(SYNTHETIC_TASKS) if per_task else ["fitness"]
    trials = []
    dists = search_space()
    for i in range(n_trials):
        g = define_search_space(sampler_study.ask())
        fit = synthetic_fitness(g, rng, per_task=per_task)
        attrs: dict[str, Any] = {"formula": g.formula(), "generation": i // population, "diverged": fit is None}
        for task in SYNTHETIC_TASKS:  # accuracy/loss attrs are left out: the analysis does not read them
            attrs[f"{task}_fitness"] = WORST_FITNESS if fit is None else fit[task]
        if fit is None:
            trials.append(optuna.trial.create_trial(params=g.to_params(), distributions=dists, user_attrs=attrs,
                                                    state=TrialState.PRUNED))
        else:
            vals = [fit[t] for t in SYNTHETIC_TASKS] if per_task else [float(np.mean(list(fit.values())))]
            trials.append(optuna.trial.create_trial(params=g.to_params(), distributions=dists, user_attrs=attrs,
                                                    values=vals))
    study = optuna.create_study(study_name=name, storage=open_storage(storage), directions=["maximize"] * len(objectives))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("tasks", list(SYNTHETIC_TASKS))
    study.set_user_attr("synthetic", synthetic_fitness.__doc__.split("\n\n")[1].strip())
    study.add_trials(trials)
    return study


def bred_study(name: str, storage: str | None = None, *, population: int = 50, generations: int = 50, seed: int = 0,
               per_task: bool = False, noise: float = 0.01) -> optuna.Study:
    """A study bred by the :class:`~optsearch.search.sampler.GeneticSampler` on :func:`synthetic_fitness`.

    Unlike :func:`synthetic_study`'s i.i.d. random genomes, its trials are what the analysis meets in
    practice: generations of children of earlier winners, with elites re-entered as duplicate genomes,
    and the stored parent links. Each generation is asked as a batch and told back, as the run loop does;
    diverged members are told PRUNED with ``diverged`` set. The noise model is the run loop's too: each
    evaluation draws fresh noise, the trial stores its own measurement (``measured``) and the number of
    evaluations of its genome (``evaluations``), and the value told is the mean over the genome's
    measurements in earlier generations and this one.
    """
    from optsearch.search.noise import EVALUATIONS_ATTR, MEASURED_ATTR, combine
    from optsearch.search.sampler import GeneticSampler

    rng = np.random.default_rng(seed + 10_000)
    objectives = list(SYNTHETIC_TASKS) if per_task else ["fitness"]
    study = optuna.create_study(study_name=name, storage=open_storage(storage) if storage else None,
                                directions=["maximize"] * len(objectives),
                                sampler=GeneticSampler(population_size=population, seed=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("tasks", list(SYNTHETIC_TASKS))
    study.set_user_attr("config", {"population": population, "generations": generations})
    history: dict[tuple, list[list[float]]] = {}  # genome -> measurements of earlier generations
    for generation in range(generations):
        batch = [study.ask() for _ in range(population)]
        told: list[tuple[tuple, list[float]]] = []
        for trial in batch:
            g = define_search_space(trial)
            fit = synthetic_fitness(g, rng, per_task=per_task, noise=noise)
            trial.set_user_attr("formula", g.formula())
            trial.set_user_attr("generation", generation)
            trial.set_user_attr("diverged", fit is None)
            for task in SYNTHETIC_TASKS:
                trial.set_user_attr(f"{task}_fitness", WORST_FITNESS if fit is None else fit[task])
            if fit is None:
                study.tell(trial, state=TrialState.PRUNED)
                continue
            own = [fit[t] for t in SYNTHETIC_TASKS] if per_task else [float(np.mean(list(fit.values())))]
            key = tuple(sorted(trial.params.items()))
            earlier = history.get(key, [])
            trial.set_user_attr(MEASURED_ATTR, own)
            trial.set_user_attr(EVALUATIONS_ATTR, 1 + len(earlier))
            study.tell(trial, combine(own, earlier))
            told.append((key, own))
        for key, own in told:
            history.setdefault(key, []).append(own)
    return study

"""Tuning: every contender's learning rate (and weight decay) tuned by its own Optuna study, equal budgets.

The studies live in the storage (``bench:<contender>:<task>:<key>``) so a rerun reuses them; only the first
``trials`` complete trials ever count, so a study tuned with a larger budget earlier cannot favour one contender.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import optuna
from optuna.trial import TrialState

from optsearch.benchmark.config import BenchmarkConfig
from optsearch.benchmark.contenders import WD_RANGE, Contender
from optsearch.benchmark.runs import evaluate_settings

STUDY_PREFIX = "bench"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Our ask/tell loop beats hearts itself (``storage.Heartbeat``); Optuna's advice to use optimize() is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


@dataclass(frozen=True)
class Tuned:
    """A contender's tuning result on one task."""

    params: dict[str, float]
    value: float
    study_name: str
    complete_trials: int
    new_trials: int


def study_name(contender: Contender, task: str, cfg: BenchmarkConfig) -> str:
    """``bench:<contender>:<task>:<key>``; the key hashes the genome and the budget, so a study is reused
    only for the same contender under the same settings."""
    blob = json.dumps({"c": contender.identity(), "u": cfg.unit_settings(task)}, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"{STUDY_PREFIX}:{contender.name}:{task}:{key}"


def _open_tuning_study(contender: Contender, task: str, cfg: BenchmarkConfig, storage: Any) -> optuna.Study:
    from optsearch.search.storage import fail_dead_trials

    name = study_name(contender, task, cfg)
    sampler = optuna.samplers.TPESampler(seed=cfg.sampler_seed, n_startup_trials=rounds(cfg.trials)[0],
                                         multivariate=True, constant_liar=True)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                load_if_exists=True)
    if not study.user_attrs.get("contender"):
        study.set_user_attr("contender", contender.name)
        study.set_user_attr("task", task)
        study.set_user_attr("settings", cfg.unit_settings(task))
        study.set_user_attr("identity", json.loads(json.dumps(contender.identity(), default=str)))
    fail_dead_trials(study)  # RUNNING trials of a killed run; only COMPLETE ones count anyway
    if not study.get_trials(deepcopy=False):
        for params in contender.startup_params(rounds(cfg.trials)[0]):
            study.enqueue_trial(params)
    return study


def rounds(trials: int) -> list[int]:
    """Cumulative trial targets: the start grid (about two thirds) as one batch, then the TPE-guided rest."""
    first = max(1, math.ceil(2 * trials / 3))
    return [first, trials] if trials > first else [first]


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def _mean(values: Iterable[float]) -> float:
    """Mean that maps non-finite results to the worst fitness (a value Optuna can store)."""
    from optsearch.train.tasks import WORST_FITNESS

    v = list(values)
    m = sum(v) / len(v)
    return m if math.isfinite(m) else WORST_FITNESS


def _suggest(trial: optuna.Trial, contender: Contender) -> dict[str, float]:
    p = {"lr_log10": trial.suggest_float("lr_log10", *contender.lr_range)}
    if contender.wd_log10 is not None:
        p["wd_log10"] = trial.suggest_float("wd_log10", *WD_RANGE)
    return p


def tune(contenders: Sequence[Contender], task: str, cfg: BenchmarkConfig, storage: Any,
         *, log: Callable[[str], None] = lambda s: None) -> dict[str, Tuned]:
    """Tune every contender on ``task`` with exactly ``cfg.trials`` trials (validation split).

    Each round asks every contender's missing trials first and trains all genome contenders' trials in
    one batched evaluator call; a study that already holds ``cfg.trials`` complete trials is reused.
    """
    from optsearch.search.storage import Heartbeat, mark_worker

    with quiet_optuna():
        studies = {c.name: _open_tuning_study(c, task, cfg, storage) for c in contenders}
        before = {n: len(_complete(s)) for n, s in studies.items()}
        for target in rounds(cfg.trials):
            asked: list[tuple[Contender, optuna.Trial, dict[str, float]]] = []
            for c in contenders:
                for _ in range(max(0, target - len(_complete(studies[c.name])))):
                    trial = studies[c.name].ask()
                    mark_worker(studies[c.name], trial._trial_id)
                    asked.append((c, trial, _suggest(trial, c)))
            if not asked:
                continue
            log(f"tuning on {task}: {len(asked)} trial(s) of {len({c.name for c, _, _ in asked})} contender(s)")
            try:
                with Heartbeat(storage, [t._trial_id for _, t, _ in asked]):
                    scores = evaluate_settings(task, [(c, p) for c, _, p in asked], cfg.tune_seeds, cfg, split="val")
            except BaseException:
                for c, trial, _ in asked:
                    studies[c.name].tell(trial, state=TrialState.FAIL)
                raise
            for (c, trial, _), per_seed in zip(asked, scores):
                accs = [s.accuracy for s in per_seed if math.isfinite(s.accuracy)]
                trial.set_user_attr("accuracy", sum(accs) / len(accs) if accs else None)
                trial.set_user_attr("diverged", any(s.diverged for s in per_seed))
                studies[c.name].tell(trial, _mean(s.fitness for s in per_seed))
    out: dict[str, Tuned] = {}
    for c in contenders:
        done = _complete(studies[c.name])[: cfg.trials]  # only the budget counts, even in a bigger study
        best = max(done, key=lambda t: (t.value, -t.number))
        out[c.name] = Tuned(params={k: float(v) for k, v in best.params.items()}, value=float(best.value),
                            study_name=studies[c.name].study_name, complete_trials=len(done),
                            new_trials=len(_complete(studies[c.name])) - before[c.name])
    return out

"""Tuning: every contender's learning rate (and weight decay) tuned by its own Optuna study, equal budgets.

The studies live in the storage (``bench:<contender>:<task>:<key>``) so a rerun reuses them; only the first
``trials`` complete trials ever count, so a study tuned with a larger budget earlier cannot favour one contender.

A contender whose best lr is the outermost one tried, in the top or bottom cell of its window, may have its
optimum beyond the window: the window is then extended by :data:`EXTEND` decades on that side (within the
genome's lr range) and :data:`EXTEND_TRIALS` more trials run there, until the best is bracketed or the range
ends (:func:`lr_edge`). Those trials are the same for every contender that needs them, and the report says so.
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
EXTEND = 0.5
"""Decades a window grows by, on the side where the best lr lies at its edge."""
EXTEND_TRIALS = 2
"""Trials per extension, evenly spaced in the new half decade (its middle and its far end)."""
EXTEND_MIN_TRIALS = 3
"""Below this budget the start grid has two cells or fewer, so its best is always at an end: no extension
(the report marks such a verdict not established instead)."""
EXTENSION_ATTR = "extends_window"
"""Trial user attr of an extension trial: the extended window ([lo, hi] in log lr) it was run for."""

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
    window: tuple[float, float] | None = None
    """The log-lr window searched in the end (the contender's, extended where its best lay at an edge)."""
    extensions: tuple[str, ...] = ()
    """One ``top``/``bottom`` per :data:`EXTEND`-decade extension, in order."""
    edge: str | None = None
    """``top``/``bottom`` when the best lr is still at an edge (the genome's lr range ended), else None."""


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


def lr_edge(points: Sequence[tuple[float, float]], window: tuple[float, float], cells: int) -> str | None:
    """``top``/``bottom`` when the best of ``points`` ((lr_log10, value), first best wins ties) is the outermost lr
    tried on that side and lies in that outermost cell of ``window`` (cut into ``cells`` equal cells), else None.

    A best with a worse lr tried beyond it is bracketed: its optimum is inside. With one lr tried the optimum
    could be anywhere: ``untried`` (counted as an edge, never extended).
    """
    if len({x for x, _ in points}) < 2:
        return "untried"
    best = max(range(len(points)), key=lambda i: (points[i][1], -i))
    x = points[best][0]
    lo, hi = window
    cell = (hi - lo) / max(1, cells)
    if x >= max(p[0] for p in points) and x > hi - cell:
        return "top"
    if x <= min(p[0] for p in points) and x < lo + cell:
        return "bottom"
    return None


def _extension(params: dict[str, float], window: tuple[float, float],
               side: str) -> tuple[tuple[float, float], list[dict[str, float]]] | None:
    """The next extended window and its trials (at the best's other params), or None when the lr range ends."""
    from optsearch.genome import FLOAT_RANGES

    lo_all, hi_all, _ = FLOAT_RANGES["lr_log10"]
    lo, hi = window
    if side == "top":
        new = (lo, min(hi_all, hi + EXTEND))
        xs = [hi + (new[1] - hi) * (k + 1) / EXTEND_TRIALS for k in range(EXTEND_TRIALS)]
    else:
        new = (max(lo_all, lo - EXTEND), hi)
        xs = [lo - (lo - new[0]) * (k + 1) / EXTEND_TRIALS for k in range(EXTEND_TRIALS)]
    if new == window:
        return None
    return new, [{**params, "lr_log10": x} for x in xs]


def _suggest(trial: optuna.Trial, contender: Contender,
             window: tuple[float, float] | None = None) -> dict[str, float]:
    p = {"lr_log10": trial.suggest_float("lr_log10", *(window or contender.lr_range))}
    if contender.wd_log10 is not None:
        p["wd_log10"] = trial.suggest_float("wd_log10", *WD_RANGE)
    return p


def tune(contenders: Sequence[Contender], task: str, cfg: BenchmarkConfig, storage: Any,
         *, log: Callable[[str], None] = lambda s: None) -> dict[str, Tuned]:
    """Tune every contender on ``task`` with exactly ``cfg.trials`` trials (validation split), plus the
    extension trials of a contender whose best lr lies at an edge of its window (:func:`lr_edge`).

    Each round asks every contender's missing trials first and trains all genome contenders' trials in
    one batched evaluator call; a study that already holds ``cfg.trials`` complete trials is reused.
    """
    from optsearch.search.storage import mark_worker

    with quiet_optuna():
        studies = {c.name: _open_tuning_study(c, task, cfg, storage) for c in contenders}
        before = {n: len(_complete(s)) for n, s in studies.items()}
        for target in rounds(cfg.trials):
            asked: list[tuple[Contender, optuna.Trial, dict[str, float]]] = []
            for c in contenders:
                for _ in range(max(0, target - len(_base(studies[c.name])))):
                    trial = studies[c.name].ask()
                    mark_worker(studies[c.name], trial._trial_id)
                    asked.append((c, trial, _suggest(trial, c)))
            _run(asked, studies, task, cfg, storage, log)
        # Extensions: replayed from the stored trials, so a rerun counts exactly the same ones.
        state = {c.name: (_base(studies[c.name])[: cfg.trials], c.lr_range, ()) for c in contenders}
        while True:
            asked, grew = [], False
            for c in contenders:
                done, window, ext = state[c.name]
                side = lr_edge([(t.params["lr_log10"], t.value) for t in done], window, rounds(cfg.trials)[0])
                extend = side in ("top", "bottom") and cfg.trials >= EXTEND_MIN_TRIALS
                nxt = _extension(_best(done).params, window, side) if extend else None
                if nxt is None:
                    continue
                grew = True
                have = [t for t in _complete(studies[c.name]) if t.user_attrs.get(EXTENSION_ATTR) == list(nxt[0])]
                state[c.name] = (done + have[: len(nxt[1])], nxt[0], (*ext, side))
                for params in nxt[1][len(have):]:
                    studies[c.name].enqueue_trial(params, user_attrs={EXTENSION_ATTR: list(nxt[0])})
                    trial = studies[c.name].ask()
                    mark_worker(studies[c.name], trial._trial_id)
                    asked.append((c, trial, _suggest(trial, c, nxt[0])))
            if not grew:
                break
            if asked:
                log(f"tuning on {task}: the best lr of {', '.join(dict.fromkeys(c.name for c, _, _ in asked))} lay "
                    f"at an edge of its window: {EXTEND:g} decade more there")
                _run(asked, studies, task, cfg, storage, log)
                for c in {c.name: c for c, _, _ in asked}.values():  # the new trials join the counted ones
                    done, window, ext = state[c.name]
                    new = [t for t in _complete(studies[c.name]) if t.user_attrs.get(EXTENSION_ATTR) == list(window)]
                    state[c.name] = ([t for t in done if t.user_attrs.get(EXTENSION_ATTR) != list(window)] + new,
                                     window, ext)
    out: dict[str, Tuned] = {}
    for c in contenders:
        done, window, ext = state[c.name]  # only the budget (and its extensions) count, even in a bigger study
        best = _best(done)
        side = lr_edge([(t.params["lr_log10"], t.value) for t in done], window, rounds(cfg.trials)[0])
        out[c.name] = Tuned(params={k: float(v) for k, v in best.params.items()}, value=float(best.value),
                            study_name=studies[c.name].study_name, complete_trials=len(done),
                            new_trials=len(_complete(studies[c.name])) - before[c.name], window=window,
                            extensions=ext, edge=side)
    return out


def _base(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials of the base budget (start grid, then TPE), oldest first: extensions left out."""
    return [t for t in _complete(study) if EXTENSION_ATTR not in t.user_attrs]


def _best(done: Sequence[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
    return max(done, key=lambda t: (t.value, -t.number))


def _run(asked: list[tuple[Contender, optuna.Trial, dict[str, float]]], studies: dict[str, optuna.Study], task: str,
         cfg: BenchmarkConfig, storage: Any, log: Callable[[str], None]) -> None:
    """Train the asked trials together (batched) and tell each its mean fitness over the tuning seeds."""
    from optsearch.search.storage import Heartbeat

    if not asked:
        return
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

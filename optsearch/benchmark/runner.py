"""Evolved optimizer(s) against tuned baselines, on searched and held-out tasks, with confidence intervals.

The protocol a reviewer would accept, and what the reference paper did not do:

1. **Equal tuning budget.** Every contender — the evolved genome included — gets its learning rate
   (and its weight decay, when it has one) tuned by its own Optuna study with exactly ``trials``
   trials on the **validation** split, the same sampler and seed, the same search window relative to
   its own default lr (from 2.5 decades below to 1.5 above) and the same start: the window cut into
   equal log-lr cells, the default standing in for its nearest cell, the others tried at their
   centres, then TPE. The studies live in the storage
   (``bench:<contender>:<task>:<key>``) so a rerun reuses them; only the first ``trials`` complete
   trials ever count, so a study tuned with a larger budget earlier cannot favour one contender.
2. **Paired seeds on the test split.** Each contender then runs with its tuned setting on N final
   seeds (disjoint from the tuning seed) and is scored on the **test** split. In one (task, seed) unit
   every contender starts from the same initial weights and sees the same batches, so differences are
   paired per seed and reported with a paired t interval.
3. **Held-out tasks.** The tasks the study searched on are reported apart from the others.

Genome contenders (the evolved genome, SGD-momentum, Adam, AdamW, RMSProp, Lion, the paper's evolved
genome) are trained together by the batched evaluator. ``torch.optim.Muon`` is not a genome; it trains
one model at a time through :func:`train_single`, which follows the evaluator's conventions for data,
initialisation and batch order (a test checks that an Adam genome scores the same on both paths).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import optuna
from optuna.trial import TrialState

from optsearch.analysis import stats
from optsearch.errors import ConfigError, StudyError
from optsearch.genome import FLOAT_RANGES, Genome, resolve

BASELINE_NAMES: tuple[str, ...] = ("sgd_momentum", "adam", "adamw", "rmsprop", "lion")
PAPER = "paper_evolved"
MUON = "muon"
DEFAULT_HELD_OUT: tuple[str, ...] = ("mnist", "fashion_mnist")
TUNE_SEEDS: tuple[int, ...] = (0,)
FINAL_SEED_BASE = 1000
"""Final seeds are FINAL_SEED_BASE, FINAL_SEED_BASE + 1, …: disjoint from tuning and search seeds."""
AT_CHANCE = 0.02
"""A seed that did not diverge but ends within this much test accuracy of chance collapsed (e.g. dead units at
an edge-of-stability lr); the report counts such seeds, since they, not noise, are what widens an interval."""
LR_BELOW, LR_ABOVE = 2.5, 1.5
LR_WINDOW = LR_BELOW + LR_ABOVE
"""Decades of learning rate each contender's tuning searches (same for all). The window reaches further
below the default than above: a default sits near the top of its stable range, and a genome whose
term weights sum to several units, picked on small MLPs, can need a decade or two less on a CNN."""
TUNING_PROTOCOL = "default in place of its nearest of n equal log-lr cells, other cell centres, then TPE; window -2.5..+1.5 decades"
"""Part of every tuning study's key: studies tuned under an older protocol are not reused."""
WD_RANGE: tuple[float, float] = FLOAT_RANGES["wd_log10"][:2]
STUDY_PREFIX = "bench"
SEARCHED, HELD_OUT = "searched", "held-out"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Our ask/tell loop beats hearts itself (``storage.Heartbeat``); Optuna's advice to use optimize() is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


# ----------------------------------------------------------------------------- contenders
@dataclass(frozen=True)
class Contender:
    """One optimizer in the benchmark.

    Attributes:
        name: label in tables and tuning-study names.
        role: ``evolved`` (under test; the first is the reference of paired differences), ``baseline``
            or ``paper`` (the published evolved genome).
        genome: the genome; None for :data:`MUON` (a torch optimizer, trained one model at a time).
        lr_log10: centre of the tuning window (the contender's own default learning rate).
        wd_log10: default weight decay; None when the contender has none (then it is not tuned).
    """

    name: str
    role: str
    genome: Genome | None
    lr_log10: float
    wd_log10: float | None
    cosine: bool = True
    """For Muon only (a genome carries its own schedule): cosine decay like the baseline genomes."""

    @property
    def is_genome(self) -> bool:
        return self.genome is not None

    @property
    def cosine_decay(self) -> bool:
        """Whether this contender's learning rate follows a cosine decay (its genome's, or Muon's flag)."""
        return self.genome.cosine_decay if self.genome is not None else self.cosine

    def formula(self) -> str:
        """The update rule as text; for Muon, what it is and its schedule."""
        if self.genome is not None:
            return self.genome.formula()
        return ("torch.optim.Muon (2-D weights, adjust_lr_fn=match_rms_adamw) + AdamW (other parameters), "
                + ("cosine decay" if self.cosine else "constant lr"))

    @property
    def lr_range(self) -> tuple[float, float]:
        """:data:`LR_BELOW` decades below the default to :data:`LR_ABOVE` above, shifted to stay in the genome's range."""
        lo_all, hi_all, _ = FLOAT_RANGES["lr_log10"]
        lo = min(max(lo_all, self.lr_log10 - LR_BELOW), hi_all - LR_WINDOW)
        return lo, lo + LR_WINDOW

    def startup_params(self, n: int) -> list[dict[str, float]]:
        """The first tuning round: the window cut into ``n`` equal cells in log lr; the default stands in for
        the cell whose centre is nearest to it and the other cells are tried at their centres (at the default
        weight decay). Unlike a few random draws it cannot leave a whole decade untried, and no start point
        repeats the default (Lion's default 10^-4 once coincided with a grid point: one trial wasted)."""
        lo, hi = self.lr_range
        default = self.default_params()
        centres = [lo + (i + 0.5) * (hi - lo) / n for i in range(n)]
        centres.remove(min(centres, key=lambda x: abs(x - self.lr_log10)))
        return [default] + [{**default, "lr_log10": x} for x in centres]

    def default_params(self) -> dict[str, float]:
        p = {"lr_log10": self.lr_log10}
        if self.wd_log10 is not None:
            p["wd_log10"] = self.wd_log10
        return p

    def with_params(self, params: dict[str, float]) -> Genome | None:
        """The genome with tuned lr (and wd); None for Muon (its params are used directly)."""
        if self.genome is None:
            return None
        kw: dict[str, Any] = {"lr_log10": float(params["lr_log10"])}
        if "wd_log10" in params:
            kw["wd_log10"] = float(params["wd_log10"])
        return replace(self.genome, **kw)

    def identity(self) -> dict[str, Any]:
        """What makes two contenders the same for reusing a tuning study."""
        return {"genome": None if self.genome is None else self.genome.to_params(), "kind": MUON if self.genome is None
                else "genome", "lr_range": self.lr_range, "tune_wd": self.wd_log10 is not None,
                "default": self.default_params(), **({} if self.genome is not None else {"cosine": self.cosine})}


def genome_contender(name: str, genome: Genome, role: str) -> Contender:
    return Contender(name, role, genome, genome.lr_log10, genome.wd_log10 if genome.weight_decay else None)


def muon_contender(*, cosine: bool = True) -> Contender:
    """torch.optim.Muon on 2-D weights and AdamW on the rest, sharing one lr and one weight decay.

    Muon's ``adjust_lr_fn="match_rms_adamw"`` scales its update to AdamW's RMS so that the two parts
    can share AdamW's learning rate and weight decay (torch's documentation), which keeps Muon's tuning
    to the same two numbers as AdamW's.
    """
    adamw = Genome.named("adamw")
    return Contender(MUON, "baseline", None, adamw.lr_log10, adamw.wd_log10, cosine=cosine)


def default_contenders(evolved: Sequence[tuple[str, Genome]], *, muon: bool = True,
                       baseline_schedule: str = "cosine") -> list[Contender]:
    """Evolved genome(s) first, then the baselines, the paper's genome and Muon (names deduplicated).

    Args:
        baseline_schedule: ``cosine`` gives every baseline genome cosine decay (a tuned baseline in
            today's practice has a schedule, and the evolved genome may carry one of its own);
            ``constant`` uses the named genomes as they are.
    """
    if baseline_schedule not in ("cosine", "constant"):
        raise ConfigError(f"baseline schedule must be cosine or constant, got {baseline_schedule!r}")
    out: list[Contender] = []
    seen: set[str] = set()
    for name, g in evolved:
        if name in seen:
            raise ConfigError(f"two evolved genomes are named {name!r}")
        seen.add(name)
        out.append(genome_contender(name, g, "evolved"))
    for name in BASELINE_NAMES:
        if name not in seen:
            g = Genome.named(name)
            if baseline_schedule == "cosine":
                g = replace(g, cosine_decay=True)
            out.append(genome_contender(name, g, "baseline"))
            seen.add(name)
    if PAPER not in seen:
        out.append(genome_contender(PAPER, Genome.named(PAPER), "paper"))
        seen.add(PAPER)
    if muon and MUON not in seen:
        out.append(muon_contender(cosine=baseline_schedule == "cosine"))
    return out


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BenchmarkConfig:
    """The budget every contender gets, per task."""

    tasks: tuple[str, ...]
    searched: frozenset[str] = frozenset()
    """Every task the evolved genome was searched on, benchmarked here or not (the report names them all,
    so a held-out-only benchmark does not read as if the genome had been selected on nothing)."""
    seeds: int = 5
    trials: int = 8
    steps: int | None = None
    batch_size: int | None = None
    subsample: int | None = None
    tune_seeds: tuple[int, ...] = TUNE_SEEDS
    device: str | None = None
    data_dir: str | None = None
    sampler_seed: int = 0
    curve_points: int = 25
    """Points per learning curve (the evaluator's checkpoint spacing; no pruning callback is used)."""

    def checkpoint_every(self, task: str) -> int:
        from optsearch.train.tasks import get_task

        return max(1, (self.steps or get_task(task).steps) // self.curve_points)

    @property
    def final_seeds(self) -> tuple[int, ...]:
        return tuple(range(FINAL_SEED_BASE, FINAL_SEED_BASE + self.seeds))

    def validate(self) -> None:
        from optsearch.train.tasks import get_task

        if not self.tasks:
            raise ConfigError("the benchmark needs at least one task")
        for t in self.tasks:
            get_task(t)
        if self.seeds < 2:
            raise ConfigError(f"--seeds must be ≥ 2 for a confidence interval (≥ 5 recommended), got {self.seeds}")
        if self.trials < 1:
            raise ConfigError(f"--trials must be ≥ 1, got {self.trials}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be ≥ 1, got {self.steps}")
        if self.subsample is not None and self.subsample < 1:
            raise ConfigError(f"--subsample must be ≥ 1, got {self.subsample}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if set(self.final_seeds) & set(self.tune_seeds):
            raise ConfigError("final seeds must differ from the tuning seeds")

    def unit_settings(self, task: str) -> dict[str, Any]:
        """What a tuning result depends on besides the contender (part of the study key)."""
        return {"task": task, "steps": self.steps, "batch_size": self.batch_size, "subsample": self.subsample,
                "tune_seeds": list(self.tune_seeds), "sampler_seed": self.sampler_seed, "protocol": TUNING_PROTOCOL}


# ----------------------------------------------------------------------------- scores of one unit
@dataclass(frozen=True)
class UnitScore:
    """One contender on one (task, seed): test (or validation) accuracy, final train loss, fitness."""

    accuracy: float
    loss: float
    fitness: float
    diverged: bool
    curve: list[list[float]] = field(default_factory=list, compare=False)
    """[step, mean training loss since the previous point] pairs."""


# ----------------------------------------------------------------------------- tuning
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
    sampler = optuna.samplers.TPESampler(seed=cfg.sampler_seed, n_startup_trials=_rounds(cfg.trials)[0],
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
        for params in contender.startup_params(_rounds(cfg.trials)[0]):
            study.enqueue_trial(params)
    return study


def _rounds(trials: int) -> list[int]:
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

    with _quiet_optuna():
        studies = {c.name: _open_tuning_study(c, task, cfg, storage) for c in contenders}
        before = {n: len(_complete(s)) for n, s in studies.items()}
        for target in _rounds(cfg.trials):
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
                    scores = _evaluate_settings(task, [(c, p) for c, _, p in asked], cfg.tune_seeds, cfg, split="val")
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


# ----------------------------------------------------------------------------- training
def _evaluate_settings(task: str, settings: Sequence[tuple[Contender, dict[str, float]]], seeds: Sequence[int],
                       cfg: BenchmarkConfig, *, split: str) -> list[list[UnitScore]]:
    """Scores per (contender setting, seed): genome settings batched in one evaluator call, Muon one by one."""
    out: list[list[UnitScore] | None] = [None] * len(settings)
    genome_idx = [i for i, (c, _) in enumerate(settings) if c.is_genome]
    if genome_idx:
        genomes = [settings[i][0].with_params(settings[i][1]) for i in genome_idx]
        for i, per_seed in zip(genome_idx, evaluate_genomes(genomes, task, seeds, cfg, split=split)):
            out[i] = per_seed
    for i, (c, params) in enumerate(settings):
        if not c.is_genome:
            make = muon_factory(params, cosine=c.cosine)
            out[i] = [train_single(task, make, seed=s, steps=cfg.steps, batch_size=cfg.batch_size,
                                   subsample=cfg.subsample, device=cfg.device, data_dir=cfg.data_dir, split=split,
                                   checkpoint_every=cfg.checkpoint_every(task))
                      for s in seeds]
    return out  # type: ignore[return-value]


def evaluate_genomes(genomes: Sequence[Genome], task: str, seeds: Sequence[int], cfg: BenchmarkConfig, *,
                     split: str) -> list[list[UnitScore]]:
    """Train the genomes together with the batched evaluator; scores per genome and seed (seed order kept).

    Every seed is trained for every genome (``stop_diverged=False``): a paired comparison needs all of
    them, and a diverged seed is scored, not skipped.
    """
    from optsearch.train.evaluate import evaluate

    res = evaluate(list(genomes), [task], seeds=list(seeds), steps=cfg.steps, batch_size=cfg.batch_size,
                   subsample=cfg.subsample, device=cfg.device, data_dir=cfg.data_dir,
                   checkpoint_every=cfg.checkpoint_every(task), split=split, stop_diverged=False)
    by_key = {(u.member, u.seed): u for u in res.per_unit}
    out = []
    for i in range(len(genomes)):
        row = []
        for s in seeds:
            u = by_key[(i, s)]
            row.append(UnitScore(accuracy=float(u.accuracy), loss=float(u.loss), fitness=float(u.fitness),
                                 diverged=bool(u.diverged), curve=[[int(a), float(b)] for a, b in u.curve]))
        out.append(row)
    return out


class OptimizerGroup:
    """Several torch optimizers (and LR schedulers) stepped as one, e.g. Muon + AdamW."""

    def __init__(self, optimizers: Sequence[Any], schedulers: Sequence[Any] = ()):
        self.optimizers = list(optimizers)
        self.schedulers = list(schedulers)

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()
        for s in self.schedulers:
            s.step()


OptimizerFactory = Callable[[Any, int], Any]
"""``(model, total_steps) -> optimizer``: anything with ``zero_grad()`` and ``step()``."""


def train_single(task: str, make_optimizer: OptimizerFactory, *, seed: int, steps: int | None = None,
                 batch_size: int | None = None, subsample: int | None = None, device: str | None = None,
                 data_dir: str | None = None, split: str = "test", checkpoint_every: int = 50) -> UnitScore:
    """Train one model with any torch optimizer on one (task, seed) unit, as the evaluator would.

    Same data (``evaluate.task_data``), the same initial weights (``evaluate.build_model``), the same
    batches (``evaluate.batch_indices`` with ``evaluate.data_seed``), augmentation and dropout seeds,
    the same divergence rule and the same scoring, so a non-genome optimizer is paired seed by seed
    with the genomes trained by :func:`optsearch.train.evaluate.evaluate`.
    """
    import torch
    import torch.nn.functional as F

    from optsearch.train import evaluate as ev
    from optsearch.train.tasks import DIVERGENCE_LOSS, LOSS_TAIL, fitness, get_task

    t = get_task(task)
    steps = steps or t.steps
    bs = batch_size or t.batch_size
    dev = torch.device(device) if device is not None else ev.default_device()
    data = ev.task_data(t, device=dev, data_dir=data_dir, subsample=subsample)
    fork = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        model = ev.build_model(t, seed, device=dev, dtype=torch.float32)
        opt = make_optimizer(model, steps)
        order = ev.batch_indices(len(data.train_x), bs, steps, ev.data_seed(seed, t.name)).to(dev)
        aug = None
        if t.augment is not None:
            aug = torch.Generator(device=dev).manual_seed(ev.data_seed(seed, t.name) ^ 1)
        dropout_base = ev.derive_seed(seed, t.name, "dropout")
        losses: list[float] = []
        curve: list[list[float]] = []
        mark = 0
        diverged = False
        model.train()
        for step in range(1, steps + 1):
            idx = order[step - 1]
            x, y = data.train_x[idx], data.train_y[idx]
            if aug is not None:
                x = t.augment(x, aug)
            torch.manual_seed((dropout_base + step) % 2**63)
            loss = F.cross_entropy(model(x), y)
            value = float(loss.detach())
            if not value <= DIVERGENCE_LOSS:  # NaN compares False
                diverged = True
                break
            losses.append(value)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == steps or (checkpoint_every and step % checkpoint_every == 0):
                curve.append([step, sum(losses[mark:]) / len(losses[mark:])])
                mark = len(losses)
        tail = losses[-LOSS_TAIL:]
        loss_tail = sum(tail) / len(tail) if tail else math.nan
        acc = math.nan
        if not diverged:
            x_eval, y_eval = (data.val_x, data.val_y) if split == "val" else (data.test_x, data.test_y)
            model.eval()
            with torch.no_grad():
                correct = sum(int((model(x_eval[i:i + 2048]).argmax(-1) == y_eval[i:i + 2048]).sum())
                              for i in range(0, len(x_eval), 2048))
            acc = correct / len(x_eval)
    return UnitScore(accuracy=acc, loss=loss_tail, fitness=fitness(acc, loss_tail, diverged), diverged=diverged,
                     curve=curve)


def muon_factory(params: dict[str, float], *, cosine: bool = True) -> OptimizerFactory:
    """Muon on the 2-D weights (``match_rms_adamw``) + AdamW on the rest, one lr and one weight decay.

    Convolution kernels (4-D) and biases go to AdamW: torch's Muon accepts only 2-D parameters and its
    documentation recommends AdamW for the others. ``cosine`` applies the same cosine decay the baseline
    genomes get (:func:`optsearch.genome.primitives.schedule_factor`).
    """
    import torch

    from optsearch.genome.primitives import schedule_factor

    lr = 10 ** float(params["lr_log10"])
    wd = 10 ** float(params["wd_log10"])

    def make(model: Any, total_steps: int) -> OptimizerGroup:
        two_d = [p for p in model.parameters() if p.requires_grad and p.ndim == 2]
        other = [p for p in model.parameters() if p.requires_grad and p.ndim != 2]
        opts = []
        if two_d:
            opts.append(torch.optim.Muon(two_d, lr=lr, weight_decay=wd, adjust_lr_fn="match_rms_adamw"))
        if other:
            opts.append(torch.optim.AdamW(other, lr=lr, weight_decay=wd))
        scheds = []
        if cosine:  # LambdaLR's k counts finished steps; the genome schedule's t is 1-based
            scheds = [torch.optim.lr_scheduler.LambdaLR(
                o, lambda k: schedule_factor(k + 1, total_steps, False, 0.0, True)) for o in opts]
        return OptimizerGroup(opts, scheds)

    return make


# ----------------------------------------------------------------------------- results
@dataclass
class TaskResult:
    """All contenders on one task: tuning results and per-seed test scores (aligned with ``seeds``)."""

    task: str
    group: str
    seeds: tuple[int, ...]
    tuned: dict[str, Tuned]
    scores: dict[str, list[UnitScore]]

    def accuracy(self, contender: str) -> list[float]:
        return [s.accuracy for s in self.scores[contender]]


@dataclass
class BenchmarkResult:
    """The whole benchmark; :meth:`to_json` holds every raw per-seed number."""

    name: str
    config: BenchmarkConfig
    contenders: list[Contender]
    tasks: dict[str, TaskResult]

    @property
    def baseline_schedule(self) -> str:
        """``cosine``, ``constant`` or ``mixed``: read from the baselines themselves, so a report cannot
        name a schedule other than the one they ran with (e.g. when a caller passes its own contenders)."""
        flags = {c.cosine_decay for c in self.contenders if c.role == "baseline"}
        return {frozenset({True}): "cosine", frozenset({False}): "constant"}.get(frozenset(flags), "mixed")

    @property
    def reference(self) -> str:
        """The contender paired differences are taken against: the first evolved one."""
        for c in self.contenders:
            if c.role == "evolved":
                return c.name
        return self.contenders[0].name

    def groups(self) -> dict[str, list[str]]:
        out = {HELD_OUT: [t for t, r in self.tasks.items() if r.group == HELD_OUT],
               SEARCHED: [t for t, r in self.tasks.items() if r.group == SEARCHED]}
        return {g: ts for g, ts in out.items() if ts}

    def aggregate(self, tasks: Sequence[str], contender: str) -> list[float]:
        """Per seed, the mean test accuracy over ``tasks`` (seeds are aligned across tasks by index)."""
        cols = [self.tasks[t].accuracy(contender) for t in tasks]
        return [sum(v) / len(v) for v in zip(*cols)]

    def summary(self, values_of: Callable[[str], list[float]]) -> dict[str, dict[str, Any]]:
        """Per contender: the mean's t interval, and the paired difference reference − contender."""
        ref = values_of(self.reference)
        out = {}
        for c in self.contenders:
            v = values_of(c.name)
            out[c.name] = {"values": v, "interval": stats.t_interval(v),
                           "diff": None if c.name == self.reference else stats.paired_difference(ref, v)}
        return out

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        tasks = {}
        for t, r in self.tasks.items():
            summ = self.summary(r.accuracy)
            tasks[t] = {
                "group": r.group,
                "seeds": list(r.seeds),
                "contenders": {
                    c.name: {
                        "tuned": {"params": r.tuned[c.name].params, "val_fitness": r.tuned[c.name].value,
                                  "study": r.tuned[c.name].study_name, "trials": r.tuned[c.name].complete_trials},
                        "test_accuracy": [s.accuracy for s in r.scores[c.name]],
                        "train_loss": [s.loss for s in r.scores[c.name]],
                        "test_fitness": [s.fitness for s in r.scores[c.name]],
                        "diverged": [s.diverged for s in r.scores[c.name]],
                        "at_chance": [_at_chance(s, t) for s in r.scores[c.name]],
                        "curves": [s.curve for s in r.scores[c.name]],
                        "accuracy_ci": summ[c.name]["interval"].to_dict(),
                        "diff_vs_reference": None if summ[c.name]["diff"] is None else summ[c.name]["diff"].to_dict(),
                    }
                    for c in self.contenders
                },
            }
        aggregate = {}
        for g, ts in self.groups().items():
            summ = self.summary(lambda c, ts=ts: self.aggregate(ts, c))
            aggregate[g] = {"tasks": ts, "contenders": {
                n: {"mean_test_accuracy": s["values"], "accuracy_ci": s["interval"].to_dict(),
                    "diff_vs_reference": None if s["diff"] is None else s["diff"].to_dict()} for n, s in summ.items()}}
        return {
            "name": self.name,
            "reference": self.reference,
            "config": {"tasks": list(cfg.tasks), "searched": sorted(cfg.searched), "seeds": list(cfg.final_seeds),
                       "tune_seeds": list(cfg.tune_seeds), "trials": cfg.trials, "steps": cfg.steps,
                       "batch_size": cfg.batch_size, "subsample": cfg.subsample, "lr_window_decades": [-LR_BELOW, LR_ABOVE], "tuning": TUNING_PROTOCOL,
                       "wd_range_log10": list(WD_RANGE), "sampler": f"TPESampler(seed={cfg.sampler_seed})",
                       "confidence": stats.LEVEL, "baseline_schedule": self.baseline_schedule},
            "contenders": [{"name": c.name, "role": c.role, "kind": "genome" if c.is_genome else MUON,
                            "formula": c.formula(),
                            "genome": c.genome.to_params() if c.genome else None,
                            "lr_range_log10": list(c.lr_range), "tunes_wd": c.wd_log10 is not None}
                           for c in self.contenders],
            "tasks": tasks,
            "aggregate": aggregate,
        }


# ----------------------------------------------------------------------------- report
_SCHEDULE_TEXT = {"cosine": "cosine decay", "constant": "a constant lr",
                  "mixed": "their own schedules (some with cosine decay, some constant)"}


def _verdict(diff: stats.Interval | None, ref: str) -> str:
    if diff is None:
        return "(reference)"
    if not math.isfinite(diff.lo):
        return "n/a"
    return {1: f"{ref} better", -1: f"{ref} worse", 0: "no clear difference"}[diff.sign]


def _fmt_params(tuned: Tuned) -> tuple[str, str]:
    lr = f"{10 ** tuned.params['lr_log10']:.2g}"
    wd = f"{10 ** tuned.params['wd_log10']:.2g}" if "wd_log10" in tuned.params else "—"
    return lr, wd


def markdown(result: BenchmarkResult) -> str:
    """The report: protocol, one table per task, one aggregate table per group (held-out first)."""
    from optsearch.train.tasks import WORST_FITNESS

    cfg, ref = result.config, result.reference
    ref_c = next(c for c in result.contenders if c.name == ref)
    lines = [f"# Benchmark: {result.name}", ""]
    lines.append(f"Reference (evolved): **{ref}** — `{ref_c.formula()}`")
    lines.append("")
    lines.append(
        f"Protocol: every contender's learning rate (and weight decay, where it has one) was tuned with "
        f"**{cfg.trials} trials** each (Optuna TPE, seed {cfg.sampler_seed}; the contender's default is one of them; "
        f"lr from {LR_BELOW:g} decades below its default to {LR_ABOVE:g} above, default in place of its nearest of equal log-lr cells, the other cells' centres, then TPE) on the validation split with tuning seed(s) "
        f"{', '.join(map(str, cfg.tune_seeds))}; then each ran with its tuned setting on **{cfg.seeds} seeds** "
        f"({cfg.final_seeds[0]}…{cfg.final_seeds[-1]}), scored on the **test** split. Steps: "
        f"{cfg.steps or 'task default'}; batch: {cfg.batch_size or 'task default'}; training examples: "
        f"{cfg.subsample or 'task default'}. Every contender sees the same initial weights and batches per seed. "
        f"Baselines (genomes and Muon) run with {_SCHEDULE_TEXT[result.baseline_schedule]}; evolved genomes keep their "
        f"own schedule. A diverged seed scores chance-level accuracy; a seed that did not diverge but ended within "
        f"{100 * AT_CHANCE:g} points of chance is counted as *at chance* (a collapsed run).")
    lines.append("")
    lines.append(f"Test accuracy in %, mean ± half-width of the 95 % t interval over seeds. "
                 f"Δ = {ref} − contender in accuracy points, paired per seed, with its 95 % paired t interval; "
                 f"the verdict says whether that interval excludes 0.")
    if cfg.seeds < 5:
        lines += ["", f"**Warning:** only {cfg.seeds} seeds; intervals are wide and fragile (use ≥ 5)."]
    lines.append("")
    lines.append(f"{ref} was searched on: {', '.join(sorted(cfg.searched)) or 'unknown (no study given, so every task counts as held-out)'}. Here, searched tasks: "
                 f"{', '.join(t for t in cfg.tasks if t in cfg.searched) or 'none'}; held-out tasks: "
                 f"{', '.join(t for t in cfg.tasks if t not in cfg.searched) or 'none'}.")
    if any(c.name == PAPER for c in result.contenders):
        lines.append(f"`{PAPER}` was selected by its authors on mnist, fashion_mnist and cifar10 (their test splits).")
    for group, ts in result.groups().items():
        lines += ["", f"## {group.capitalize()} tasks", ""]
        for t in ts:
            r = result.tasks[t]
            lines += [f"### {t} ({group})", ""]
            lines += _table(result, result.summary(r.accuracy), r)
            lines.append("")
        lines += [f"### Aggregate over {group} tasks ({', '.join(ts)})", "",
                  "Per seed, the mean test accuracy over these tasks; then the interval over seeds.", ""]
        lines += _table(result, result.summary(lambda c, ts=ts: result.aggregate(ts, c)), None)
    if any(tu.value <= WORST_FITNESS for r in result.tasks.values() for tu in r.tuned.values()):
        lines += ["", f"val fitness *all diverged*: every tuning trial of that contender diverged on that task, so "
                      f"no setting was better than another and the one shown is its first trial (its default)."]
    lines.append("")
    return "\n".join(lines)


def _table(result: BenchmarkResult, summ: dict[str, dict[str, Any]], r: TaskResult | None) -> list[str]:
    from optsearch.train.tasks import WORST_FITNESS

    ref = result.reference
    head = "| contender | " + ("tuned lr | tuned wd | val fitness | " if r else "") + \
           f"test acc % | Δ vs {ref} (pp) | verdict |" + (" diverged / at chance |" if r else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in result.contenders:
        s = summ[c.name]
        diff = s["diff"]
        cells = [f"{c.name}{' *' if c.role == 'evolved' else ''}"]
        if r:
            lr, wd = _fmt_params(r.tuned[c.name])
            v = r.tuned[c.name].value
            cells += [lr, wd, "*all diverged*" if v <= WORST_FITNESS else f"{v:.4f}"]
        cells += [s["interval"].fmt(100), "—" if diff is None else diff.fmt(100, signed=True), _verdict(diff, ref)]
        if r:
            units = r.scores[c.name]
            cells.append(f"{sum(u.diverged for u in units)} / {sum(_at_chance(u, r.task) for u in units)}")
        out.append("| " + " | ".join(cells) + " |")
    return out


# ----------------------------------------------------------------------------- figures and files
def _colors(result: BenchmarkResult) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {c.name: cmap(i % 10) for i, c in enumerate(result.contenders)}


def plot_bars(result: BenchmarkResult, path: Path) -> None:
    """Test accuracy per contender with 95 % t error bars: one panel per task, then each group's aggregate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Callable[[str], list[float]], Sequence[str]]] = []
    for group, ts in result.groups().items():
        panels += [(f"{t} ({group})", result.tasks[t].accuracy, [t]) for t in ts]
        if len(ts) > 1:
            panels.append((f"{group}: mean of {len(ts)} tasks", lambda c, ts=ts: result.aggregate(ts, c), ts))
    names = [c.name for c in result.contenders]
    colors = _colors(result)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 3.2 * len(panels)), 4.2), squeeze=False)
    for ax, (title, values_of, ts) in zip(axes[0], panels):
        ivs = [stats.t_interval(values_of(n)) for n in names]
        means = [100 * iv.mean for iv in ivs]
        errs = [100 * iv.half_width if math.isfinite(iv.half_width) else 0.0 for iv in ivs]
        bars = ax.bar(range(len(names)), means, yerr=errs, capsize=3, color=[colors[n] for n in names],
                      edgecolor=["black" if c.role == "evolved" else "none" for c in result.contenders],
                      linewidth=1.5)
        lows = [m - e for m, e in zip(means, errs) if math.isfinite(m)]
        highs = [m + e for m, e in zip(means, errs) if math.isfinite(m)]
        if lows:
            span = max(highs) - min(lows) or 1.0
            ax.set_ylim(max(0.0, min(lows) - 0.5 * span), min(100.0, max(highs) + 0.2 * span))
        # A diverged seed is scored at chance: say so on its bar, or it reads as a trained accuracy.
        runs = len(ts) * result.config.seeds
        for i, n in enumerate(names):
            k = sum(u.diverged for t in ts for u in result.tasks[t].scores[n])
            if k:
                bars[i].set_hatch("//")
                ax.annotate(f"{k}/{runs} diverged", (i, means[i] + errs[i]), xytext=(0, 3),
                            textcoords="offset points", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy % (mean, 95 % t CI)")
    fig.suptitle(f"{result.name}: tuned contenders, {result.config.seeds} seeds (y axis zoomed; "
                 f"hatched: diverged runs, scored at chance)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(result: BenchmarkResult, path: Path) -> None:
    """Training loss (mean over seeds) against steps, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(result)
    # Contenders with the same curve (e.g. AdamW with a tiny tuned wd over Adam) must both stay visible:
    # each is drawn thinner than the ones before it, with its own dash pattern; the evolved genome on top.
    styles = {c.name: "-" if c.role == "evolved" else ("--", "-.", ":")[i % 3]
              for i, c in enumerate(result.contenders)}
    widths = {c.name: 2.2 if c.role == "evolved" else max(0.6, 2.4 - 0.25 * i) for i, c in enumerate(result.contenders)}
    tasks = [t for ts in result.groups().values() for t in ts]
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.5, 4.2 * len(tasks)), 3.8), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        r = result.tasks[t]
        gone = []
        for c in result.contenders:
            k = sum(s.diverged for s in r.scores[c.name])
            if k:
                gone.append(f"{c.name} {k}/{len(r.scores[c.name])}")
            curves = [s.curve for s in r.scores[c.name] if s.curve and not s.diverged]
            if not curves:
                continue
            n = min(len(cv) for cv in curves)
            steps = [cv[0] for cv in curves[0][:n]]
            mean = [sum(cv[k][1] for cv in curves) / len(curves) for k in range(n)]
            ax.plot(steps, mean, label=c.name, color=colors[c.name], ls=styles[c.name], lw=widths[c.name],
                    zorder=3 if c.role == "evolved" else 2)
        ax.set_yscale("log")
        ax.set_title(f"{t} ({r.group})", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if gone:  # their curves are missing or averaged over fewer seeds
            ax.text(0.98, 0.98, "diverged seeds (not plotted):\n" + "\n".join(gone), transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    axes[0][0].set_ylabel("training loss (mean over non-diverged seeds)")
    # The legend lists every contender, also one with no curve in the first panel (all its seeds diverged there).
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[c.name], ls=styles[c.name], lw=widths[c.name])
               for c in result.contenders]
    labels = [c.name for c in result.contenders]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(result: BenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """``report.md``, ``results.json``, ``bars.png`` and ``curves.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "json": out / "results.json", "bars": out / "bars.png",
             "curves": out / "curves.png"}
    paths["report"].write_text(markdown(result), encoding="utf-8")
    text = json.dumps(_jsonable(result.to_json()), indent=1, ensure_ascii=False)
    paths["json"].write_text(text + "\n", encoding="utf-8")
    plot_bars(result, paths["bars"])
    plot_curves(result, paths["curves"])
    return paths


def _jsonable(x: Any) -> Any:
    """NaN/inf become null (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# ----------------------------------------------------------------------------- entry points
def _scored(scores: list[UnitScore], task: str) -> list[UnitScore]:
    """A diverged seed scores chance-level accuracy (it learned nothing usable), so it stays in the pairing."""
    chance = _chance(task)
    return [replace(s, accuracy=chance) if s.diverged or not math.isfinite(s.accuracy) else s for s in scores]


def _chance(task: str) -> float:
    from optsearch.train.tasks import get_task

    return 1.0 / get_task(task).num_classes


def _at_chance(s: UnitScore, task: str) -> bool:
    return not s.diverged and s.accuracy <= _chance(task) + AT_CHANCE


def run_benchmark(name: str, evolved: Sequence[tuple[str, Genome]], cfg: BenchmarkConfig, *,
                  storage: str | None = None, out_dir: str | Path | None = None,
                  contenders: Sequence[Contender] | None = None, muon: bool = True,
                  baseline_schedule: str = "cosine", log: Callable[[str], None] = lambda s: None) -> BenchmarkResult:
    """Tune every contender on every task (reusing stored tuning studies), score them on the test split.

    Args:
        name: the benchmark's label (report title, default output folder).
        evolved: (name, genome) of the genome(s) under test; the first is the reference of the paired
            differences.
        cfg: tasks, which of them were searched, seeds, trials, budget.
        storage: where the tuning studies live (default: the project's default storage).
        contenders: the full list (default: :func:`default_contenders`).
        muon, baseline_schedule: passed to :func:`default_contenders` (unused when ``contenders`` is
            given: the report reads the baselines' schedule from the contenders themselves).
        log: progress lines.
    """
    from optsearch.search.storage import open_storage
    from optsearch.train.tasks import data_dir as resolve_data_dir, get_task

    cfg.validate()
    for t in cfg.tasks:  # a missing dataset fails before any tuning trial is created
        get_task(t).read(resolve_data_dir(cfg.data_dir))
    cs = list(contenders) if contenders is not None else default_contenders(evolved, muon=muon,
                                                                             baseline_schedule=baseline_schedule)
    names = [c.name for c in cs]
    if len(set(names)) != len(names):
        raise ConfigError(f"contender names must be distinct, got {names}")
    with _quiet_optuna():
        st = open_storage(storage)
    tasks: dict[str, TaskResult] = {}
    for task in cfg.tasks:
        tuned = tune(cs, task, cfg, st, log=log)
        log(f"scoring {len(cs)} contenders on {task} ({cfg.seeds} seeds, test split)")
        scores = _evaluate_settings(task, [(c, tuned[c.name].params) for c in cs], cfg.final_seeds, cfg, split="test")
        tasks[task] = TaskResult(task=task, group=SEARCHED if task in cfg.searched else HELD_OUT,
                                 seeds=cfg.final_seeds, tuned=tuned,
                                 scores={c.name: _scored(s, task) for c, s in zip(cs, scores)})
    result = BenchmarkResult(name=name, config=cfg, contenders=cs, tasks=tasks)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def _genome_label(spec: str) -> str:
    from optsearch.genome import NAMED

    return spec if spec in NAMED else Path(spec).stem


def run_cli(study_name: str | None = None, genome_files: Sequence[str] = (), tasks: str | None = None,
            seeds: int = 5, steps: int | None = None, trials: int = 8, subsample: int | None = None,
            batch_size: int | None = None, out_dir: str | None = None, storage: str | None = None, device: str | None = None,
            data_dir: str | None = None, baseline_schedule: str = "cosine") -> str:
    """``python -m optsearch benchmark``: returns the report text (the files are in the output folder)."""
    import sys
    import time

    if not study_name and not genome_files:
        raise ConfigError("give a study NAME or at least one --genome FILE|NAME to benchmark")
    evolved: list[tuple[str, Genome]] = []
    searched: frozenset[str] = frozenset()
    study_tasks: tuple[str, ...] = ()
    if study_name:
        from optsearch.search.study import best_trials, open_study

        study, scfg = open_study(study_name, storage)
        best = best_trials(study, 1)
        if not best:
            raise StudyError(f"study {study_name!r} has no completed trials to benchmark")
        evolved.append((f"{study_name}#{best[0].number}", Genome.from_params(best[0].params)))
        searched = frozenset(scfg.tasks)
        study_tasks = tuple(scfg.tasks)
    for spec in genome_files:
        evolved.append((_genome_label(spec), resolve(spec)))
    if tasks:
        task_list = tuple(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
    else:
        task_list = tuple(dict.fromkeys((*study_tasks, *DEFAULT_HELD_OUT)))
    if device is not None and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    cfg = BenchmarkConfig(tasks=task_list, searched=searched, seeds=seeds, trials=trials,
                          steps=steps, batch_size=batch_size, subsample=subsample, device=device, data_dir=data_dir)
    name = study_name or evolved[0][0]
    out = Path(out_dir) if out_dir else Path("reports") / f"benchmark-{name.replace('/', '_').replace('#', '-')}"
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    result = run_benchmark(name, evolved, cfg, storage=storage, out_dir=out, baseline_schedule=baseline_schedule,
                           log=log)
    text = markdown(result)
    return f"{text}\nwrote {out}/report.md, results.json, bars.png, curves.png ({time.perf_counter() - t0:.0f} s)"


__all__ = [
    "BenchmarkConfig", "BenchmarkResult", "Contender", "OptimizerGroup", "TaskResult", "Tuned", "UnitScore",
    "default_contenders", "evaluate_genomes", "markdown", "muon_factory", "run_benchmark", "run_cli", "study_name",
    "train_single", "tune", "write_outputs",
]

"""Studies: create, run (a generation at a time, resumable, several workers), list, show, delete, export.

A generation is asked from the study as a batch (ask/tell; Optuna has no batch ask), trained together
by the batched evaluator and told back. Killing a run loses only the unfinished generation: its
trials are failed (by heartbeat, or at once when their local worker process is gone) and the sampler
refills their slots on the next ``study run``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.search import config as configs
from optsearch.search.config import StudyConfig
from optsearch.errors import ConfigError, StudyError
from optsearch.genome import Genome, define_search_space
from optsearch.search.storage import Heartbeat, fail_dead_trials, mark_worker, open_existing_study, open_storage, resolve_url

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_SECONDS = 1.0
CONFIG_ATTR = "config"
SURPLUS_ATTR = "optsearch:surplus"  # system attr of a trial failed unevaluated: its generation was full

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ----------------------------------------------------------------------------- create / open
def create(name: str, *, preset: str | None = None, config_path: str | None = None, storage: str | None = None) -> str:
    """Validate the config, create the study and store the config with it. Returns a one-line summary."""
    cfg = configs.preset(preset) if preset else configs.load(config_path)  # type: ignore[arg-type]
    st = open_storage(storage)
    try:
        study = optuna.create_study(
            study_name=name, storage=st, directions=["maximize"] * len(cfg.objective_names), load_if_exists=False
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"a study named {name!r} already exists in {resolve_url(storage)}; "
                         "use `study run` to continue it or `study delete` first") from None
    study.set_metric_names(cfg.objective_names)
    study.set_user_attr(CONFIG_ATTR, cfg.to_dict())
    study.set_user_attr("objectives", cfg.objective_names)
    study.set_user_attr("tasks", list(cfg.tasks))
    _write_dashboard_note(study, cfg)
    mode = "per-task objectives (NSGA-II)" if cfg.per_task else "aggregate fitness"
    return (f"created study {name!r} in {resolve_url(storage)}: {', '.join(cfg.tasks)}; population {cfg.population} × "
            f"{cfg.generations} generations; {mode}")


def _write_dashboard_note(study: optuna.Study, cfg: StudyConfig) -> None:
    try:
        from optsearch.dashboard import write_study_note
    except ImportError:  # the dashboard module is optional at creation time
        return
    write_study_note(study, cfg.to_dict())


def open_study(name: str, storage: str | None = None) -> tuple[optuna.Study, StudyConfig]:
    study = open_existing_study(name, storage)
    raw = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(raw, dict):
        raise StudyError(f"study {name!r} was not created by optsearch (it has no stored config)")
    return study, StudyConfig.from_dict(raw, where=f"study {name!r}")


def make_sampler(cfg: StudyConfig):
    from optsearch.search.sampler import GAConfig, GeneticSampler

    return GeneticSampler(population_size=cfg.population, seed=cfg.seed, config=GAConfig.from_dict(cfg.sampler))


def generation_key() -> str:
    from optsearch.search.sampler import GeneticSampler

    return GeneticSampler._get_generation_key()


# ----------------------------------------------------------------------------- generation bookkeeping
@dataclass(frozen=True)
class GenerationState:
    """Counts of one generation's trials (FAIL trials free their slot and are not counted)."""

    generation: int
    finished: int
    running: int

    def slots_left(self, population: int) -> int:
        return max(0, population - self.finished - self.running)

    def done(self, population: int) -> bool:
        return self.finished >= population and self.running == 0


def generations(study: optuna.Study) -> dict[int, list[FrozenTrial]]:
    """Trials by generation (all states)."""
    key = generation_key()
    out: dict[int, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        g = t.system_attrs.get(key)
        if g is not None:
            out.setdefault(int(g), []).append(t)
    return dict(sorted(out.items()))


def latest_state(study: optuna.Study) -> GenerationState | None:
    gens = generations(study)
    if not gens:
        return None
    g = max(gens)
    ts = gens[g]
    return GenerationState(
        generation=g,
        finished=sum(t.state in FINISHED for t in ts),
        running=sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in ts),
    )


def free_slots(study: optuna.Study, generation: int, population: int) -> int:
    """Member slots of ``generation`` not yet held by a trial that is not FAIL."""
    held = sum(t.state != TrialState.FAIL for t in generations(study).get(generation, []))
    return max(0, population - held)


def unclaimed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials without a generation: mid-``ask`` in some worker, or orphans of a dead one."""
    key = generation_key()
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if key not in t.system_attrs]


def completed_generations(study: optuna.Study, population: int) -> int:
    s = latest_state(study)
    if s is None:
        return 0
    return s.generation + 1 if s.done(population) else s.generation


# ----------------------------------------------------------------------------- run
def run(
    name: str,
    *,
    storage: str | None = None,
    generations: int | None = None,
    device: str | None = None,
    workers: int = 1,
    data_dir: str | None = None,
    progress: bool = True,
) -> str:
    """Evolve the study until its configured generations are done (or ``generations`` more).

    With ``workers > 1``, ``workers − 1`` more processes run the same loop on the same storage; they
    split each generation's members. The same command on other machines with one ``--storage`` URL
    joins the same study.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be ≥ 1, got {workers}")
    if generations is not None and generations < 1:
        raise ConfigError(f"--generations must be ≥ 1, got {generations}")
    study, cfg = open_study(name, storage)
    dev = _device(device or cfg.device)
    _check_data(cfg, data_dir)
    start = completed_generations(study, cfg.population)
    stop = cfg.generations if generations is None else min(cfg.generations, start + generations)
    devices = worker_devices(dev, workers, _cuda_count())
    children = [_spawn_worker(name, storage, stop - start, d, data_dir) for d in devices[1:]]
    try:
        worker = Worker(study, cfg, device=devices[0], data_dir=data_dir, stop_generation=stop,
                        chunk=math.ceil(cfg.population / workers), progress=progress)
        worker.loop()
    finally:
        for c in children:
            c.wait()
    bad = [c.returncode for c in children if c.returncode != 0]
    if bad and completed_generations(study, cfg.population) < stop:
        raise StudyError(f"{len(bad)} worker process(es) failed (exit codes {bad}); run `study run {name}` again to resume")
    if bad:  # the surviving workers failed the dead one's trials and evaluated them again
        print(f"optsearch: warning: {len(bad)} worker process(es) died (exit codes {bad}); "
              "their trials were evaluated again by the others", file=sys.stderr)
    return summary_text(study, cfg)


def _check_data(cfg: StudyConfig, data_dir: str | None) -> None:
    """Read every task's data before any trial is asked, so a missing dataset changes nothing in the study."""
    from optsearch.train.tasks import data_dir as resolve_data_dir, get_task

    for name in cfg.tasks:
        get_task(name).read(resolve_data_dir(data_dir))


def _spawn_worker(name: str, storage: str | None, generations: int, device: str, data_dir: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "optsearch", "study", "run", name, "--quiet", "--device", device,
           "--storage", resolve_url(storage), "--generations", str(max(1, generations))]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return subprocess.Popen(cmd, env={**os.environ, "OPTSEARCH_WORKER": "1"})


def worker_devices(device: str, workers: int, cuda_count: int) -> list[str]:
    """One device per worker process: plain ``cuda`` spreads the workers over the visible GPUs
    round-robin (worker i on ``cuda:i mod count``); an explicit ``cuda:K`` or ``cpu`` is used by all."""
    if device == "cuda" and cuda_count > 1:
        return [f"cuda:{i % cuda_count}" for i in range(workers)]
    return [device] * workers


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available on this machine")
    index = spec.partition(":")[2]
    if spec.startswith("cuda:") and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise ConfigError(f"device {spec!r}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 …)")
    return spec


class Worker:
    """One process's ask → evaluate → tell loop over whole generations (or its share of one)."""

    def __init__(self, study: optuna.Study, cfg: StudyConfig, *, device: str, data_dir: str | None,
                 stop_generation: int, chunk: int, progress: bool):
        self.study = study
        self.cfg = cfg
        self.device = device
        self.data_dir = data_dir
        self.stop_generation = stop_generation
        self.chunk = max(1, chunk)
        self.progress = progress
        self.sampler = make_sampler(cfg)
        self.study.sampler = self.sampler
        self.study.pruner = pruner_for(cfg)
        self.bar = None

    def loop(self) -> None:
        self._open_bar()
        try:
            while True:
                fail_dead_trials(self.study)
                state = latest_state(self.study)
                if state is None or state.done(self.cfg.population):
                    target = 0 if state is None else state.generation + 1
                    if target >= self.stop_generation:
                        if not unclaimed_trials(self.study):
                            return
                        time.sleep(POLL_SECONDS)  # a dead worker's orphan: failed once its grace is over
                        continue
                    n = min(self.chunk, self.cfg.population)
                else:
                    target = state.generation
                    n = min(self.chunk, state.slots_left(self.cfg.population))
                    if n == 0:  # other workers hold the rest of this generation
                        time.sleep(POLL_SECONDS)
                        continue
                self._generation(target, n)
        finally:
            if self.bar is not None:
                self.bar.close()

    def _open_bar(self) -> None:
        if not self.progress:
            return
        from tqdm import tqdm

        done = completed_generations(self.study, self.cfg.population)
        self.bar = tqdm(total=max(0, self.stop_generation - done) * self.cfg.population, unit="genome",
                        desc="evolving", dynamic_ncols=True)

    def _generation(self, target: int, n: int) -> None:
        trials: list[tuple[optuna.Trial, Genome]] = []
        with Heartbeat(self.study._storage) as heartbeat:
            try:
                for _ in range(n):
                    if trials and free_slots(self.study, target, self.cfg.population) == 0:
                        break  # other workers took the rest meanwhile
                    asked = self._ask(target, heartbeat)
                    if asked is not None:
                        trials.append(asked)
                if not trials:
                    return
                result = self._evaluate([t for t, _ in trials], [g for _, g in trials])
            except BaseException:
                for t, _ in trials:  # Ctrl-C or a crash: free the slots for the resume
                    _tell_quietly(self.study, t.number, TrialState.FAIL)
                raise
        for (trial, genome), member in zip(trials, result.members):
            self._tell(trial, member)
        if self.bar is not None:
            self.bar.update(len(trials))
            best = _best_value(self.study)
            self.bar.set_postfix_str(f"gen {target}, best {best:.4f}" if best is not None else f"gen {target}")

    def _ask(self, target: int, heartbeat: Heartbeat) -> tuple[optuna.Trial, Genome] | None:
        """Ask one member of generation ``target``; None when the generation filled up meanwhile."""
        from optsearch.search.sampler import generation_and_member

        self.sampler.target_generation = target
        trial = self.study.ask()
        mark_worker(self.study, trial._trial_id)
        heartbeat.add(trial._trial_id)
        generation, member = generation_and_member(self.study, trial)
        if member >= self.cfg.population:  # surplus: another worker claimed the last slot first
            self.study._storage.set_trial_system_attr(trial._trial_id, SURPLUS_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        genome = define_search_space(trial)
        trial.set_user_attr("formula", genome.formula())
        trial.set_user_attr("generation", int(generation))
        trial.set_user_attr("seeds", len(self.cfg.seeds))
        return trial, genome

    def _evaluate(self, trials: Sequence[optuna.Trial], genomes: Sequence[Genome]):
        from optsearch.train.evaluate import evaluate

        pruning = Pruning(self.cfg, trials)
        return evaluate(
            genomes,
            list(self.cfg.tasks),
            seeds=list(self.cfg.seeds),
            steps=self.cfg.steps,
            batch_size=self.cfg.batch_size,
            subsample=self.cfg.subsample,
            device=self.device,
            data_dir=self.data_dir,
            checkpoint_every=self.cfg.checkpoint_every,
            callback=pruning,
        )

    def _tell(self, trial: optuna.Trial, member: Any) -> None:
        for task, scores in member.per_task.items():
            trial.set_user_attr(f"{task}_fitness", _finite(scores["fitness"]))
            trial.set_user_attr(f"{task}_accuracy", _finite(scores["accuracy"]))
            trial.set_user_attr(f"{task}_loss", _finite(scores["loss"]))
        trial.set_user_attr("diverged", bool(member.diverged))
        trial.set_user_attr("pruned", bool(member.pruned))
        if member.diverged or member.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        elif self.cfg.per_task:
            self.study.tell(trial, [member.per_task[t]["fitness"] for t in self.cfg.tasks])
        else:
            self.study.tell(trial, member.fitness)


class Pruning:
    """The evaluator's checkpoint callback: reports intermediate values and decides which members stop.

    Single objective: the fitness estimate at each checkpoint is reported (step = checkpoint index,
    the same schedule for every member of every generation) and the configured Optuna pruner decides.
    Per-task objectives (where Optuna forbids ``report``): after the first finished unit, a member
    whose accuracy is within ``chance_margin`` of chance did not learn and is pruned.
    """

    def __init__(self, cfg: StudyConfig, trials: Sequence[optuna.Trial]):
        self.cfg = cfg
        self.trials = trials
        self.count = 0

    def __call__(self, cp: Any) -> list[int]:
        self.count += 1
        prune: list[int] = []  # with pruner "none" values are still reported: the dashboard draws them
        for i in cp.active:
            value = float(cp.proxy_fitness[i])
            if not self.cfg.per_task:
                if math.isfinite(value):
                    self.trials[i].report(value, step=self.count - 1)
                if self.count > self.cfg.pruning.warmup_checkpoints and self.trials[i].should_prune():
                    prune.append(i)
            elif cp.is_unit_end and cp.unit_index == 0:
                from optsearch.train.tasks import get_task

                chance = 1.0 / get_task(cp.task).num_classes
                if float(cp.proxy_accuracy[i]) <= chance + self.cfg.pruning.chance_margin:
                    prune.append(i)
        return prune


def pruner_for(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The Optuna pruner a study's config names (single-objective studies only)."""
    p = cfg.pruning
    if p.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, cfg.population // 2), n_warmup_steps=p.warmup_checkpoints)
    if p.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.warmup_checkpoints))
    if p.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=p.warmup_checkpoints)
    return optuna.pruners.NopPruner()


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _tell_quietly(study: optuna.Study, number: int, state: TrialState) -> None:
    try:
        study.tell(number, state=state)
    except Exception:  # already finished, or the storage is gone: nothing more to do
        pass


def _best_value(study: optuna.Study) -> float | None:
    vals = [_scalar(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(vals) if vals else None


def _scalar(t: FrozenTrial) -> float:
    """A trial's aggregate fitness (the mean of per-task values in per-task studies)."""
    return sum(t.values) / len(t.values)


# ----------------------------------------------------------------------------- reading a study
def best_trials(study: optuna.Study, n: int = 1) -> list[FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=_scalar, reverse=True)[:n]


def summary_text(study: optuna.Study, cfg: StudyConfig) -> str:
    best = best_trials(study, 1)
    if not best:
        return f"study {study.study_name!r}: no completed trials yet"
    b = best[0]
    lines = [f"study {study.study_name!r}: {completed_generations(study, cfg.population)}/{cfg.generations} generations",
             f"best genome (trial {b.number}, generation {b.user_attrs.get('generation')}): fitness {_scalar(b):.4f}",
             f"  {b.user_attrs.get('formula') or Genome.from_params(b.params).formula()}"]
    adam = seed_trial(study, "adam")
    if adam is not None:
        diff = _scalar(b) - _scalar(adam)
        lines.append(f"Adam seed (trial {adam.number}): fitness {_scalar(adam):.4f}; best − Adam = {diff:+.4f} "
                     f"({100 * diff / abs(_scalar(adam)):+.1f} %) on the validation fitness")
    return "\n".join(lines)


def seed_trial(study: optuna.Study, genome_name: str) -> FrozenTrial | None:
    """The first completed trial whose genome is exactly the named one (e.g. the Adam seed of generation 0)."""
    target = Genome.named(genome_name).to_params()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.params == target:
            return t
    return None


def show_text(name: str, *, storage: str | None = None, top: int = 5) -> str:
    study, cfg = open_study(name, storage)
    rows = ["gen  complete  pruned  failed  best      median    best formula"]
    for g, ts in generations(study).items():
        done = [t for t in ts if t.state == TrialState.COMPLETE]
        vals = sorted((_scalar(t) for t in done), reverse=True)
        best = max(done, key=_scalar) if done else None
        med = vals[len(vals) // 2] if vals else float("nan")
        rows.append(f"{g:>3}  {len(done):>8}  {sum(t.state == TrialState.PRUNED for t in ts):>6}  "
                    f"{sum(t.state == TrialState.FAIL for t in ts):>6}  "
                    f"{(_scalar(best) if best else float('nan')):<8.4f}  {med:<8.4f}  "
                    f"{best.user_attrs.get('formula', '') if best else ''}")
    out = [summary_text(study, cfg), "", *rows, "", f"top {top} genomes:"]
    for t in best_trials(study, top):
        scores = "  ".join(
            f"{task}: acc {t.user_attrs.get(f'{task}_accuracy', float('nan')):.4f} "
            f"loss {t.user_attrs.get(f'{task}_loss') or float('nan'):.3f}"
            for task in cfg.tasks
        )
        out.append(f"#{t.number} (gen {t.user_attrs.get('generation')}) fitness {_scalar(t):.4f}   {scores}")
        out.append("   " + Genome.from_params(t.params).describe().replace("\n", "\n   "))
    return "\n".join(out)


def list_text(*, storage: str | None = None) -> str:
    st = open_storage(storage, create=False)
    summaries = optuna.get_all_study_summaries(st, include_best_trial=False)
    if not summaries:
        return f"no studies in {resolve_url(storage)}"
    lines = []
    for s in summaries:
        cfg = s.user_attrs.get(CONFIG_ATTR, {})
        lines.append(f"{s.study_name:20s} {s.n_trials:>6} trials   tasks: {', '.join(cfg.get('tasks', []))}   "
                     f"objective: {cfg.get('objective', '?')}")
    return "\n".join(lines)


def delete(name: str, *, storage: str | None = None) -> None:
    st = open_existing_study(name, storage)._storage  # a clear error when it does not exist
    optuna.delete_study(study_name=name, storage=st)


def export(name: str, output: str, *, storage: str | None = None, trial: int | None = None) -> Genome:
    """Write the best (or the given) trial's genome as JSON for GenomeOptimizer."""
    study, _ = open_study(name, storage)
    if trial is None:
        best = best_trials(study, 1)
        if not best:
            raise StudyError(f"study {name!r} has no completed trials to export")
        chosen = best[0]
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not matches or not matches[0].params:
            raise StudyError(f"study {name!r} has no trial {trial} with a genome")
        chosen = matches[0]
    genome = Genome.from_params(chosen.params)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    genome.save(output)
    return genome

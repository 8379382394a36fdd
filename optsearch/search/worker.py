"""One worker process's loop: ask its share of a generation, train it as one population, tell it back.

A generation is asked from the study as a batch (ask/tell; Optuna has no batch ask), trained together
by the batched evaluator and told back. A worker that is killed loses only the trials it holds: they
are failed (by heartbeat, or at once when their local worker process is gone) and the sampler
refills their slots.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.genome import Genome, define_search_space
from optsearch.search.config import StudyConfig
from optsearch.search.control import (
    CONTROL_ATTR, CONTROL_CURVE_ATTR, CONTROL_NONE, RELATIVE_ATTR, Controls, control_genome, control_measurement,
)
from optsearch.search.generations import best_value, completed_generations, free_slots, latest_state, unclaimed_trials
from optsearch.search.noise import (
    EVALUATIONS_ATTR, MEASURED_ATTR, UNIT_SEEDS_ATTR, combine, earlier_measurements, unit_seeds,
)
from optsearch.search.pruning import Pruning
from optsearch.search.sampler import GAConfig, GeneticSampler, generation_and_member
from optsearch.search.storage import Heartbeat, fail_dead_trials, mark_worker

POLL_SECONDS = 1.0
SURPLUS_ATTR = "optsearch:surplus"  # system attr of a trial failed unevaluated: its generation was full
MEMBER_STEPS_ATTR = "member_steps"  # user attr: [steps it trained, steps of its units] (pruning's saving)
FAIL_REASON_ATTR = "fail_reason"  # user attr of a trial failed by an exception or Ctrl-C: what happened


def make_sampler(cfg: StudyConfig) -> GeneticSampler:
    return GeneticSampler(population_size=cfg.population, seed=cfg.seed, config=GAConfig.from_dict(cfg.sampler),
                          fixed_params=cfg.fixed_genes)


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
        self.study.pruner = optuna.pruners.NopPruner()  # pruning decisions are made by Pruning, not should_prune
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
                result, pruning = self._evaluate([t for t, _ in trials], [g for _, g in trials], target)
            except BaseException as e:
                reason = f"{type(e).__name__}: {e}"[:300]
                for t, _ in trials:  # Ctrl-C or a crash: free the slots for the resume (slot_retries caps them)
                    _tell_quietly(self.study, t.number, TrialState.FAIL, reason)
                raise
        control = None
        if pruning.ctrl is not None:  # the control member, trained last in the batch (see optsearch.search.control)
            control = control_measurement(result.members[-1], self.cfg.tasks, self.cfg.per_task, target)
        for i, ((trial, genome), member) in enumerate(zip(trials, result.members)):
            trial.set_user_attr(MEMBER_STEPS_ATTR, [int(result.member_steps[i]), int(result.planned_steps)])
            if pruning.ctrl is not None:
                trial.set_user_attr(CONTROL_ATTR, control)
                trial.set_user_attr(CONTROL_CURVE_ATTR, {k: [_finite(v) for v in c] for k, c in pruning.ctrl_curve.items()})
            self._tell(trial, member, target, control)
        if self.bar is not None:
            self.bar.update(len(trials))
            best = best_value(self.study)
            self.bar.set_postfix_str(f"gen {target}, best {best:.4f}" if best is not None else f"gen {target}")

    def _ask(self, target: int, heartbeat: Heartbeat) -> tuple[optuna.Trial, Genome] | None:
        """Ask one member of generation ``target``; None when the generation filled up meanwhile."""
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
        trial.set_user_attr(UNIT_SEEDS_ATTR, unit_seeds(self.cfg, generation))
        return trial, genome

    def _evaluate(self, trials: Sequence[optuna.Trial], genomes: Sequence[Genome], generation: int):
        from optsearch.train.evaluate import evaluate

        control = control_genome(self.cfg.control, self.cfg.fixed_genes)
        pruning = Pruning(self.cfg, trials, self.study, generation, control=control is not None)
        spec = self.cfg.run_spec(device=self.device, data_dir=self.data_dir)
        members = [*genomes, control] if control is not None else list(genomes)
        return evaluate(members, list(self.cfg.tasks), unit_seeds(self.cfg, generation), spec, callback=pruning), pruning

    def _tell(self, trial: optuna.Trial, member: Any, generation: int, control: list[float] | None = None) -> None:
        """Tell one member: PRUNED if it diverged or was pruned, else the mean over its genome's evaluations
        (and, with a control, store the mean over its genome's measurements relative to their controls)."""
        for task, scores in member.per_task.items():
            trial.set_user_attr(f"{task}_fitness", _finite(scores["fitness"]))
            trial.set_user_attr(f"{task}_accuracy", _finite(scores["accuracy"]))
            trial.set_user_attr(f"{task}_loss", _finite(scores["loss"]))
        trial.set_user_attr("diverged", bool(member.diverged))
        trial.set_user_attr("pruned", bool(member.pruned))
        if member.diverged or member.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            own = [member.per_task[t]["fitness"] for t in self.cfg.tasks] if self.cfg.per_task else [member.fitness]
            earlier = earlier_measurements(self.study, trial.params, generation)
            trial.set_user_attr(MEASURED_ATTR, [float(v) for v in own])
            trial.set_user_attr(EVALUATIONS_ATTR, 1 + len(earlier))
            told = combine(own, earlier)
            if self.cfg.control != CONTROL_NONE:
                controls = Controls([t for t in self.study.get_trials(deepcopy=False) if
                                     (g := t.user_attrs.get("generation")) is not None and int(g) < generation],
                                    relative=True)
                mine = control if control is not None else controls.offset(trial._get_latest_trial(), len(own))
                rel = [v - c for v, c in zip(own, mine)]
                trial.set_user_attr(RELATIVE_ATTR, combine(rel, earlier_measurements(
                    self.study, trial.params, generation, controls)))
            if self.cfg.memory:  # a property of the genome, not measured: not in MEASURED_ATTR, not averaged
                told.append(float(Genome.from_params(trial.params).state_floats()))
            self.study.tell(trial, told)


def trained_share(trials: Iterable[FrozenTrial]) -> float | None:
    """Member-steps trained over member-steps planned, summed over the trials that stored them (None if
    none did): 1 without pruning, lower by exactly what pruning and divergence saved."""
    pairs = [t.user_attrs[MEMBER_STEPS_ATTR] for t in trials if MEMBER_STEPS_ATTR in t.user_attrs]
    planned = sum(p for _, p in pairs)
    return sum(d for d, _ in pairs) / planned if planned else None


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _tell_quietly(study: optuna.Study, number: int, state: TrialState, reason: str | None = None) -> None:
    try:
        if reason is not None:
            study._storage.set_trial_user_attr(study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, number), FAIL_REASON_ATTR, reason)
        study.tell(number, state=state)
    except Exception:  # already finished, or the storage is gone: nothing more to do
        pass

"""Reading a study's generations: trials by generation, how far a generation is, and the best genomes.

Every reader (run loop, show, export, benchmark) ranks trials with :func:`ranking_fitness` (the
:func:`scalar_fitness`, relative to the generation's control in a study with controls), so "the best
genome" means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.search.control import RELATIVE_ATTR, Controls
from optsearch.search.noise import measured
from optsearch.search.sampler.slots import GENERATION_KEY

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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


def generation_key() -> str:
    """The trial system attr holding a trial's generation (kept for callers of the old API)."""
    return GENERATION_KEY


def generations(study: optuna.Study) -> dict[int, list[FrozenTrial]]:
    """Trials by generation (all states)."""
    out: dict[int, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        g = t.system_attrs.get(GENERATION_KEY)
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
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if GENERATION_KEY not in t.system_attrs]


def completed_generations(study: optuna.Study, population: int) -> int:
    s = latest_state(study)
    if s is None:
        return 0
    return s.generation + 1 if s.done(population) else s.generation


def fitness_values(t: FrozenTrial) -> list[float]:
    """A COMPLETE trial's told fitness values: its values less a ``+memory`` study's last one (the optimizer
    state is a property of the genome, not a measurement, so it has no entry in the measured attr)."""
    return list(t.values[: len(measured(t))])


def scalar_fitness(t: FrozenTrial) -> float:
    """A trial's aggregate fitness (the mean of per-task values in per-task studies; never the memory)."""
    values = fitness_values(t)
    return sum(values) / len(values)


def outcome(t: FrozenTrial) -> str:
    """``complete``, ``pruned``, ``diverged``, ``failed`` or ``running``: what became of a member.

    A diverged member is "diverged" whatever Optuna's state (it is told as pruned, or as complete with the
    worst fitness), so ``study show``'s table and the search figures count outcomes alike."""
    from optsearch.train.tasks import WORST_FITNESS

    if bool(t.user_attrs.get("diverged")) or (
            t.state == TrialState.COMPLETE and any(v <= WORST_FITNESS for v in fitness_values(t))):
        return "diverged"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
            TrialState.FAIL: "failed"}.get(t.state, "running")


def best_trials(study: optuna.Study, n: int = 1) -> list[FrozenTrial]:
    """The ``n`` COMPLETE trials with the highest :func:`ranking_fitness`, best first."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    controls = Controls(done)
    return sorted(done, key=lambda t: ranking_fitness(t, controls), reverse=True)[:n]


def ranking_fitness(t: FrozenTrial, controls: Controls) -> float:
    """What a COMPLETE trial is ranked by across generations: its :func:`scalar_fitness`, less its generation's
    control in a study with controls (:data:`~optsearch.search.control.RELATIVE_ATTR`, stored when told)."""
    if not controls.present:
        return scalar_fitness(t)
    rel = t.user_attrs.get(RELATIVE_ATTR)
    if isinstance(rel, list) and rel:
        return sum(rel) / len(rel)
    values = fitness_values(t)
    return (sum(values) - sum(controls.offset(t, len(values)))) / len(values)


def best_value(study: optuna.Study) -> float | None:
    best = best_trials(study, 1)
    return scalar_fitness(best[0]) if best else None

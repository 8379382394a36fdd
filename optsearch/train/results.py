"""What a training call returns: per-unit, per-member and whole-call results, and checkpoints.

Plain frozen dataclasses, shared by :func:`optsearch.train.evaluate.evaluate` (a population of
genomes) and :func:`optsearch.train.single.train_optimizer` (one model with any torch optimizer), so
both are scored and reported the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

PROXY_EXAMPLES = 1000
"""Mid-unit checkpoints estimate accuracy on this many fixed validation examples (cheap, same for all)."""


@dataclass(frozen=True)
class UnitResult:
    """One member's outcome on one (task, seed) unit.

    Attributes:
        member: the member's index in the ``genomes`` passed to :func:`evaluate`.
        unit_index: position of the unit in the call's order.
        accuracy: accuracy on the requested split (NaN if the member diverged).
        loss: mean training loss over the last :data:`~optsearch.train.tasks.LOSS_TAIL` steps it trained (a
            diverging step's loss is not among them; NaN if it diverged at the first step).
        diverged: its loss became NaN/inf or exploded; it was frozen before that step's update.
        fitness: :func:`optsearch.train.tasks.fitness` of the above.
        curve: (step, mean training loss since the previous checkpoint) at every checkpoint.
    """

    member: int
    unit_index: int
    task: str
    seed: int
    accuracy: float
    loss: float
    diverged: bool
    fitness: float
    curve: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class MemberResult:
    """One genome's aggregate over the units it finished.

    Attributes:
        fitness: mean unit fitness over the finished units; :data:`~optsearch.train.tasks.WORST_FITNESS` if it
            diverged anywhere; NaN if it finished no unit (pruned in the first).
        per_task: task -> {"fitness", "accuracy", "loss"}, each averaged over the finished seeds (accuracy
            and loss over the non-diverged ones); NaN where none.
        diverged: diverged in some unit.
        pruned: stopped by the callback.
        units_done: how many units it finished.
        curves: (task, seed) -> its loss curve in that unit.
        units: its raw unit results, in unit order.
    """

    fitness: float
    per_task: dict[str, dict[str, float]]
    diverged: bool
    pruned: bool
    units_done: int
    curves: dict[tuple[str, int], tuple[tuple[int, float], ...]]
    units: tuple[UnitResult, ...]


@dataclass(frozen=True)
class EvalResult:
    """Everything :func:`evaluate` measured.

    Attributes:
        members: one :class:`MemberResult` per genome, in the order given.
        units: the (task, seed) units in the order they ran.
        per_unit: every finished (unit, member) result, in unit then member order (for paired-seed statistics).
        split: the split accuracies were measured on.
        eager_updates: population updates that ran eagerly although compiling was asked for (the
            compiler failed here; a warning was raised), 0 when all went as asked.
        member_steps: per member, in genome order, the steps it was trained summed over the units it ran
            (a member pruned or diverged counts the steps up to the checkpoint that retired it), so the
            share of ``members × units × steps`` a call trained — pruning's saving — is measured.
        planned_steps: the steps of all its units together, what each member trains unless retired.
    """

    members: tuple[MemberResult, ...]
    units: tuple[tuple[str, int], ...]
    per_unit: tuple[UnitResult, ...]
    split: str
    eager_updates: int = 0
    member_steps: tuple[int, ...] = ()
    planned_steps: int = 0

    @property
    def fitness(self) -> tuple[float, ...]:
        """Every member's aggregate fitness, in genome order."""
        return tuple(m.fitness for m in self.members)


@dataclass(frozen=True)
class Checkpoint:
    """What the callback sees at a checkpoint. Per-member tuples are indexed by member (NaN where unknown).

    Attributes:
        unit_index, task, seed: the running unit.
        step: steps done in this unit.
        is_unit_end: the unit has just finished (``proxy_*`` are then the unit's final values).
        active: members still being trained in this unit, in member order.
        proxy_accuracy: accuracy now (on the requested split at the unit's end; mid-unit on the first
            :data:`PROXY_EXAMPLES` validation examples).
        proxy_fitness: :func:`~optsearch.train.tasks.fitness` of that accuracy and the recent training loss
            (WORST_FITNESS for a member that diverged in this unit).
        mean_fitness: mean fitness over the member's finished units so far (this unit included at its end).
        diverged: members that have diverged so far in this call.
        num_units: how many units the call has.
    """

    unit_index: int
    task: str
    seed: int
    step: int
    is_unit_end: bool
    active: tuple[int, ...]
    proxy_accuracy: tuple[float, ...]
    proxy_fitness: tuple[float, ...]
    mean_fitness: tuple[float, ...]
    diverged: tuple[int, ...]
    num_units: int


Callback = Callable[[Checkpoint], "Iterable[int] | None"]


__all__ = ["PROXY_EXAMPLES", "Callback", "Checkpoint", "EvalResult", "MemberResult", "UnitResult"]

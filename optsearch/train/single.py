"""One model trained with any torch optimizer through the same per-unit loop as a population.

:func:`train_optimizer` runs a (task, seed) unit with :class:`~optsearch.train.unit.UnitRun`, the loop
:func:`~optsearch.train.evaluate.evaluate` uses for genomes, so a non-genome optimizer (Muon, or any
``torch.optim`` class) gets the same initial weights, data order, augmentation, dropout seeds,
divergence rule and scoring, and its result pairs seed by seed with a genome's.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from optsearch.train.device import (
    DEFAULT_PRECISION, activation_elements, check_precision, eval_chunk, forward_context, precision_mode,
    preserve_rng,
)
from optsearch.train.population import accuracy_by_member
from optsearch.train.results import UnitResult
from optsearch.train.tasks import Task, get_task
from optsearch.train.spec import RunSpec
from optsearch.train.unit import UnitRun


class StepOptimizer(Protocol):
    """What the loop needs from an optimizer: ``torch.optim.Optimizer`` has it."""

    def zero_grad(self) -> Any: ...

    def step(self) -> Any: ...


OptimizerFactory = Callable[[nn.Module, int], StepOptimizer]
"""``(model, total_steps) -> optimizer`` over that model's parameters."""


class OptimizerTrainee:
    """One model and its optimizer behind the population's training interface (a population of one).

    Like a population's step, a step reads nothing back to the host: the loss stays on the device and
    the optimizer steps regardless. A step whose loss is NaN/inf or exploding marks the member diverged
    when the unit loop reads the losses at its next checkpoint; the steps it took after that (on
    garbage gradients) are never scored, since a diverged member's accuracy is NaN and its loss tail
    ends before its first diverging step, exactly as for a genome.
    """

    def __init__(self, model: nn.Module, optimizer: StepOptimizer, member: int = 0, *,
                 precision: str = DEFAULT_PRECISION):
        self.model = model
        self.optimizer = optimizer
        self.members: list[int] = [member]
        self.diverged: list[int] = []
        self.pruned: list[int] = []
        self.device = next(model.parameters()).device
        self.precision = check_precision(precision, next(model.parameters()).dtype)

    @property
    def active(self) -> tuple[int, ...]:
        return tuple(self.members)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """One training step; ``seed`` seeds torch's RNG before the forward pass (dropout masks).

        Returns the loss as a one-element device tensor.
        """
        if not self.members:
            return torch.empty(0, device=self.device)
        self.model.train()
        if seed is not None:
            torch.manual_seed(seed)
        with forward_context(self.precision, self.device):
            loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach().view(1)

    def retire(self, members: Iterable[int], *, diverged: bool = False) -> None:
        gone = [m for m in members if m in self.members]
        if gone:
            (self.diverged if diverged else self.pruned).extend(gone)
            self.members = []

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, *, chunk: int | None = None) -> dict[int, float]:
        """Classification accuracy on ``(x, y)`` in eval mode (chunks sized as the population's)."""
        if chunk is None:
            chunk = eval_chunk(self.device, 1, lambda: activation_elements(self.model, x[:1]),
                               next(self.model.parameters()).element_size())
        with forward_context(self.precision, self.device):
            return accuracy_by_member(self.model, lambda xb: self.model(xb).unsqueeze(0), self.members, x, y,
                                      chunk=chunk)


def train_optimizer(task: str | Task, make_optimizer: OptimizerFactory, *, seed: int,
                    spec: RunSpec | None = None) -> UnitResult:
    """Train one model with ``make_optimizer(model, steps)`` on one (task, seed) unit and score it.

    The unit is the one :func:`~optsearch.train.evaluate.evaluate` would run for a genome with the
    same task, seed and :class:`~optsearch.train.spec.RunSpec` (unit index 0, member 0), under the same
    precision policy (:mod:`optsearch.train.device`). ``spec`` defaults to ``RunSpec()``.
    """
    t = get_task(task) if isinstance(task, str) else task
    spec = (spec or RunSpec()).validate()
    n_steps = spec.steps or t.steps

    def make(model: nn.Module, ids: list[int]) -> OptimizerTrainee:
        return OptimizerTrainee(model, make_optimizer(model, n_steps), ids[0], precision=spec.precision)

    run = UnitRun(0, 1, t, int(seed), [0], make, [[]], set(), spec)
    # dropout seeding must not disturb the caller's RNG (on any GPU either)
    with preserve_rng(run.device), precision_mode(spec.precision, deterministic=spec.deterministic):
        results, _ = run.train()
    return results[0]


__all__ = ["OptimizerFactory", "OptimizerTrainee", "StepOptimizer", "train_optimizer"]

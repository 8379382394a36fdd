"""THE per-unit training loop, and the seeds, data order and initial weights that define a unit.

A *unit* is one (task, seed) pair. In a unit every trainee starts from the same initial weights
(:func:`build_model`) and sees the same batches in the same order (:func:`batch_indices`), the same
augmentation and the same dropout seeds, all derived from the seed and the task name: fitness is noisy,
so a comparison must at least be fair. :class:`UnitRun` drives any *trainee* through a unit — a
:class:`~optsearch.train.population.Population` of genomes, or one model with a torch optimizer
(:mod:`optsearch.train.single`) — with the same divergence rule, checkpoints and scoring.

A trainee has ``members`` (ids still training, in row order), ``active``, ``step(x, y, seed=...)``
returning the members' losses as a device tensor, ``retire(members, diverged=...)`` and
``accuracy(x, y) -> {member: acc}``.

The loop reads nothing back to the host between checkpoints: each step's losses go into a
preallocated ``[steps, members]`` device tensor, and only at a checkpoint are they read (once), the
members whose loss went NaN/inf or above the divergence limit found (the trainee froze them on the
device meanwhile) and retired, curves closed and the callback asked. A GPU can thus run ahead of
the Python loop for a whole checkpoint interval.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from optsearch.errors import ConfigError
from optsearch.train.device import host_reads_allowed, retain_freed_host_memory
from optsearch.train.results import PROXY_EXAMPLES, Callback, Checkpoint, UnitResult
from optsearch.train.spec import RunSpec, resolve_device
from optsearch.train.tasks import DIVERGENCE_LOSS, LOSS_TAIL, WORST_FITNESS, Task, TaskData, fitness, load_data
from optsearch.train.tasks import data_dir as resolve_data_dir

_DATA_CACHE_SIZE = 4


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def init_seed(seed: int, task: str) -> int:
    """The torch seed a unit's initial weights are drawn with (shared by every member)."""
    return derive_seed(seed, task, "init")


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """The unit's data order: ``[steps, batch]`` training-example indices (CPU int64).

    Epochs of a seeded permutation, a final partial batch dropped, so every member of a unit (and
    a one-genome replay of it) sees exactly these batches.
    """
    if n <= 0:
        raise ConfigError("the task has no training examples")
    b = min(batch_size, n)
    per_epoch = n // b
    gen = torch.Generator().manual_seed(seed)
    epochs = [torch.randperm(n, generator=gen)[: per_epoch * b].view(per_epoch, b)
              for _ in range(-(-steps // per_epoch))]
    return torch.cat(epochs)[:steps]


def data_seed(seed: int, task: str) -> int:
    """The seed of a unit's data order (:func:`batch_indices`) and augmentation."""
    return derive_seed(seed, task, "data")


_DATA: OrderedDict[tuple, TaskData] = OrderedDict()


def task_data(task: Task, *, device: torch.device, data_dir: str | None, subsample: int | None) -> TaskData:
    """A task's splits on ``device``, cached per process (the last few tasks) so generations reuse them."""
    key = (task, str(device), str(resolve_data_dir(data_dir)), subsample)
    if key in _DATA:
        _DATA.move_to_end(key)
        return _DATA[key]
    data = load_data(task, device=device, data_dir_=data_dir, subsample=subsample, seed=0)
    _DATA[key] = data
    while len(_DATA) > _DATA_CACHE_SIZE:
        _DATA.popitem(last=False)
    return data


def build_model(task: Task, seed: int, *, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The unit's common initial model: built on the CPU from a derived seed (same on every device)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed, task.name))
        model = task.build_model()
    return model.to(device=device, dtype=dtype)


def default_device() -> torch.device:
    return torch.device(resolve_device("auto"))


Trainee = Any
"""Anything with the population's training interface (see the module docstring)."""


@dataclass
class UnitRun:
    """One (task, seed) unit: the trainee, data order, loss bookkeeping and checkpoints.

    Attributes:
        make_trainee: builds the trainee from the unit's initial model and its member ids.
        spec: how the unit is trained (its steps and batch size default to the task's own).
        done: every member's finished unit results so far (indexed by member; read for checkpoints).
        diverged_before: members that diverged in earlier units.
    """

    index: int
    num_units: int
    task: Task
    seed: int
    members: list[int]
    make_trainee: Callable[[nn.Module, list[int]], Trainee]
    done: list[list[UnitResult]]
    diverged_before: set[int]
    spec: RunSpec
    callback: Callback | None = None
    losses: dict[int, list[float]] = field(default_factory=dict)
    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    marks: dict[int, int] = field(default_factory=dict)
    diverged: set[int] = field(default_factory=set)
    member_steps: dict[int, int] = field(default_factory=dict)
    """Steps each member of the unit was trained in it before it was retired (pruned, diverged) or the unit
    ended: the rows a step computed, so pruning's saving is measured, not assumed."""

    def __post_init__(self) -> None:
        spec = self.spec
        self.steps = spec.steps or self.task.steps
        self.batch_size = spec.batch_size or self.task.batch_size
        self.subsample = spec.subsample
        self.device = spec.torch_device()
        self.data_dir = spec.data_dir
        self.split = spec.split
        self.dtype = spec.torch_dtype
        self.checkpoint_every = spec.checkpoint_every

    def train(self) -> tuple[list[UnitResult], set[int]]:
        """Train the unit; returns the finished members' results and the members pruned in it."""
        if self.device.type == "cpu":  # every step's temporaries would otherwise fault their pages in anew
            retain_freed_host_memory()
        with host_reads_allowed():  # setup copies data and weights to the device
            data = task_data(self.task, device=self.device, data_dir=self.data_dir, subsample=self.subsample)
            model = build_model(self.task, self.seed, device=self.device, dtype=self.dtype)
            pop = self.make_trainee(model, self.members)
            x_all = data.train_x.to(self.dtype) if data.train_x.is_floating_point() else data.train_x
            order = batch_indices(len(data.train_x), self.batch_size, self.steps, data_seed(self.seed, self.task.name))
            order = order.to(self.device)
            aug_gen = None
            if self.task.augment is not None:
                aug_gen = torch.Generator(device=self.device).manual_seed(data_seed(self.seed, self.task.name) ^ 1)
            dropout_base = derive_seed(self.seed, self.task.name, "dropout")
            self.losses = {m: [] for m in self.members}
            self.curves = {m: [] for m in self.members}
            self.marks = {m: 0 for m in self.members}
            column = {m: j for j, m in enumerate(self.members)}
            # every step's losses, one column per member of the unit (NaN where a member no longer trains)
            history = torch.full((self.steps, len(self.members)), math.nan, dtype=self.dtype, device=self.device)
            cols = torch.arange(len(self.members), device=self.device)
            read_from = 0  # first step (0-based) whose losses have not been read yet
            self.member_steps = {m: self.steps for m in self.members}  # lowered when a member is retired
        pruned: set[int] = set()
        for step in range(1, self.steps + 1):
            idx = order[step - 1]
            x, y = x_all[idx], data.train_y[idx]
            if aug_gen is not None:
                x = self.task.augment(x, aug_gen)
            history[step - 1].index_copy_(0, cols, pop.step(x, y, seed=(dropout_base + step) % 2**63).to(self.dtype))
            end = step == self.steps
            if not (end or (self.checkpoint_every and step % self.checkpoint_every == 0)):
                continue
            with host_reads_allowed():  # the only reads: the losses since the last checkpoint, accuracies
                training = set(pop.members)
                self._read_losses(pop, history[read_from:step], column)
                read_from = step
                self._close_curves(step)
                if not end and self.callback is not None:
                    acc = pop.accuracy(data.val_x[:PROXY_EXAMPLES].to(self.dtype), data.val_y[:PROXY_EXAMPLES])
                    prune = self._checkpoint(pop, step, acc, final=False)
                    pruned |= prune
                    pop.retire(prune)
                for m in training - set(pop.members):  # retired at this checkpoint: trained until now
                    self.member_steps[m] = step
                if not pop.members:  # everyone pruned or diverged: nothing left to train in this unit
                    break
                cols = torch.tensor([column[m] for m in pop.members], dtype=torch.long, device=self.device)
        with host_reads_allowed():
            x_eval, y_eval = (data.val_x, data.val_y) if self.split == "val" else (data.test_x, data.test_y)
            acc = pop.accuracy(x_eval.to(self.dtype), y_eval)
            results = [self._result(m, acc.get(m, math.nan)) for m in self.members if m not in pruned]
            if self.callback is not None:
                finished = {r.member: r for r in results}
                pruned |= self._checkpoint(pop, self.steps, acc, final=True, finished=finished)
        return results, pruned

    def _read_losses(self, pop: Trainee, block: torch.Tensor, column: dict[int, int]) -> None:
        """Record the losses of the steps since the last checkpoint (one host read) and retire the members
        that diverged among them: a member's losses count up to, not including, its first diverging one."""
        rows = block.tolist()
        dead = []
        for m in pop.members:
            j, seen = column[m], self.losses[m]
            for row in rows:
                if not row[j] <= DIVERGENCE_LOSS:  # NaN compares False
                    dead.append(m)
                    break
                seen.append(row[j])
        self.diverged.update(dead)
        pop.retire(dead, diverged=True)

    def _tail(self, member: int) -> float:
        tail = self.losses[member][-LOSS_TAIL:]
        return sum(tail) / len(tail) if tail else math.nan

    def _close_curves(self, step: int) -> None:
        for m, seen in self.losses.items():
            new = seen[self.marks[m]:]
            if new:
                self.curves[m].append((step, sum(new) / len(new)))
                self.marks[m] = len(seen)

    def _result(self, member: int, accuracy: float) -> UnitResult:
        div = member in self.diverged
        loss = self._tail(member)
        return UnitResult(
            member=member, unit_index=self.index, task=self.task.name, seed=self.seed,
            accuracy=math.nan if div else accuracy, loss=loss, diverged=div,
            fitness=fitness(accuracy, loss, div), curve=tuple(self.curves[member]),
        )

    def _checkpoint(self, pop: Trainee, step: int, acc: dict[int, float], *, final: bool,
                    finished: dict[int, UnitResult] | None = None) -> set[int]:
        n = len(self.done)
        proxy_acc = [math.nan] * n
        proxy_fit = [math.nan] * n
        mean_fit = [math.nan] * n
        for m in self.members:
            if m in self.diverged:
                proxy_fit[m] = WORST_FITNESS
            elif m in acc:
                proxy_acc[m] = acc[m]
                proxy_fit[m] = fitness(acc[m], self._tail(m), False)
        for m in range(n):
            fits = [r.fitness for r in self.done[m]]
            if finished and m in finished:
                fits.append(finished[m].fitness)
            if fits:
                mean_fit[m] = sum(fits) / len(fits)
        cp = Checkpoint(
            unit_index=self.index, task=self.task.name, seed=self.seed, step=step, is_unit_end=final,
            active=tuple(sorted(pop.active)), proxy_accuracy=tuple(proxy_acc), proxy_fitness=tuple(proxy_fit),
            mean_fitness=tuple(mean_fit), diverged=tuple(sorted(self.diverged_before | self.diverged)),
            num_units=self.num_units,
        )
        answer = self.callback(cp) if self.callback is not None else None
        prune = {int(i) for i in (answer or ())}
        bad = sorted(i for i in prune if not 0 <= i < n)
        if bad:
            raise ValueError(f"the checkpoint callback returned unknown member indices {bad}")
        return prune


__all__ = [
    "Trainee", "UnitRun", "batch_indices", "build_model", "data_seed", "default_device", "derive_seed", "init_seed",
    "task_data",
]

"""Train a batch of genomes on tasks, together, and score them: the study layer's one entry point.

The work is split into *units*, (task, seed) pairs in a fixed order (``for seed in seeds: for task in
tasks``). In a unit every member starts from the same initial weights and sees the same batches in
the same order (both derived from the seed and the task name): fitness is noisy (DESIGN §10), so a
comparison inside a generation must at least be fair. All members of a unit are trained at once by
one :class:`optsearch.train.population.Population`.

A callback receives a :class:`Checkpoint` every ``checkpoint_every`` steps and at the end of each
unit, and returns the members to prune; pruned members stop being trained for the rest of the call.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from optsearch.errors import ConfigError
from optsearch.genome import Genome
from optsearch.train.population import Population
from optsearch.train.tasks import LOSS_TAIL, WORST_FITNESS, Task, TaskData, fitness, get_task, load_data
from optsearch.train.tasks import data_dir as resolve_data_dir

SPLITS = ("val", "test")
PROXY_EXAMPLES = 1000
"""Mid-unit checkpoints estimate accuracy on this many fixed validation examples (cheap, same for all)."""
_DATA_CACHE_SIZE = 4
AUTO_COMPILE_GENOME_STEPS = 10_000
"""``compile_update=None`` compiles the update when a call trains at least this many genome-steps.
Compiling costs 4–8 s once per process (less with Inductor's disk cache); the eager update with
every primitive in use costs 9.8 ms per step at P = 50 on digits against 1.0 ms compiled
(benchmarks/throughput.py), so it pays from a few thousand steps of a large population on."""


@dataclass(frozen=True)
class UnitResult:
    """One member's outcome on one (task, seed) unit.

    Attributes:
        member: the member's index in the ``genomes`` passed to :func:`evaluate`.
        unit_index: position of the unit in the call's order.
        accuracy: accuracy on the requested split (NaN if the member diverged).
        loss: mean training loss over the last :data:`~optsearch.train.tasks.LOSS_TAIL` steps it trained (a
            diverging step's loss is not among them; NaN if it diverged at the first step).
        diverged: its loss became NaN/inf or exploded; it was retired before that step's update.
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
    """

    members: tuple[MemberResult, ...]
    units: tuple[tuple[str, int], ...]
    per_unit: tuple[UnitResult, ...]
    split: str

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
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluate(
    genomes: Sequence[Genome],
    tasks: Sequence[str | Task],
    *,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    batch_size: int | None = None,
    subsample: int | None = None,
    device: str | torch.device | None = None,
    data_dir: str | None = None,
    checkpoint_every: int = 50,
    callback: Callback | None = None,
    split: str = "val",
    backend: str | None = None,
    compile_update: bool | None = None,
    dtype: torch.dtype = torch.float32,
    stop_diverged: bool = True,
) -> EvalResult:
    """Train every genome on every (task, seed) unit, all members of a unit at once, and score them.

    Args:
        genomes: the population.
        tasks: task names (or :class:`~optsearch.train.tasks.Task` objects).
        seeds: each seed is one more run of every task (initial weights and data order differ).
        steps, batch_size: the budget per unit (default: each task's own).
        subsample: training examples kept (see :func:`~optsearch.train.tasks.load_data`).
        device: default CUDA when available, else CPU.
        data_dir: the real datasets' folder (default ``$OPTSEARCH_DATA_DIR``).
        checkpoint_every: steps between mid-unit checkpoints (0: only at each unit's end).
        callback: called at every checkpoint; returns member indices to prune (or None).
        split: ``val`` for the search; ``test`` only for the final benchmark.
        backend: passed to :class:`~optsearch.train.population.Population` (None: chosen per model and device).
        compile_update: compile the population update; None: when the call trains at least
            :data:`AUTO_COMPILE_GENOME_STEPS` genome-steps (tiny runs would spend longer compiling).
        dtype: parameter precision (float64 for exactness checks).
        stop_diverged: a member that diverges is not trained on later units (its fitness is already the
            worst, and studies prune it), saving their compute.

    Returns:
        An :class:`EvalResult`; nothing is logged (progress is the callback's business).
    """
    genomes = list(genomes)
    task_list = [get_task(t) if isinstance(t, str) else t for t in tasks]
    seeds = [int(s) for s in seeds]
    _check(genomes, task_list, seeds, steps, batch_size, checkpoint_every, split)
    dev = torch.device(device) if device is not None else default_device()
    units = [(task, seed) for seed in seeds for task in task_list]
    if compile_update is None:
        compile_update = len(genomes) * sum(steps or t.steps for t, _ in units) >= AUTO_COMPILE_GENOME_STEPS
    unit_keys = tuple((t.name, s) for t, s in units)
    n = len(genomes)
    done: list[list[UnitResult]] = [[] for _ in range(n)]
    pruned: set[int] = set()
    diverged: set[int] = set()

    fork_devices = [torch.cuda.current_device() if dev.index is None else dev.index] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):  # dropout seeding must not disturb the caller's RNG
        for u, (task, seed) in enumerate(units):
            members = [i for i in range(n) if i not in pruned and not (stop_diverged and i in diverged)]
            if not members:
                break
            run = _Unit(u, len(units), task, seed, [genomes[i] for i in members], members, done, diverged,
                        steps=steps or task.steps, batch_size=batch_size or task.batch_size, subsample=subsample,
                        device=dev, data_dir=data_dir, split=split, backend=backend, compile_update=compile_update,
                        dtype=dtype, checkpoint_every=checkpoint_every, callback=callback)
            results, newly_pruned = run.train()
            pruned |= newly_pruned
            for r in results:
                done[r.member].append(r)
                if r.diverged:
                    diverged.add(r.member)

    names = list(dict.fromkeys(t.name for t in task_list))
    member_results = tuple(_aggregate(done[i], names, pruned=i in pruned) for i in range(n))
    per_unit = tuple(sorted((r for rs in done for r in rs), key=lambda r: (r.unit_index, r.member)))
    return EvalResult(members=member_results, units=unit_keys, per_unit=per_unit, split=split)


def _check(genomes: list, tasks: list[Task], seeds: list[int], steps: int | None, batch_size: int | None,
           checkpoint_every: int, split: str) -> None:
    if not tasks:
        raise ConfigError("evaluate needs at least one task")
    if not seeds:
        raise ConfigError("evaluate needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    if not all(isinstance(g, Genome) for g in genomes):
        raise ConfigError("evaluate takes Genome objects")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be an integer ≥ 0, got {checkpoint_every!r}")
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def _nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _aggregate(units: list[UnitResult], task_names: list[str], *, pruned: bool) -> MemberResult:
    is_diverged = any(r.diverged for r in units)
    if is_diverged:
        fit = WORST_FITNESS
    else:
        fit = sum(r.fitness for r in units) / len(units) if units else math.nan
    per_task = {}
    for name in task_names:
        rs = [r for r in units if r.task == name]
        per_task[name] = {
            "fitness": sum(r.fitness for r in rs) / len(rs) if rs else math.nan,
            "accuracy": _nanmean(r.accuracy for r in rs if not r.diverged),
            "loss": _nanmean(r.loss for r in rs if not r.diverged),
        }
    return MemberResult(
        fitness=fit, per_task=per_task, diverged=is_diverged, pruned=pruned, units_done=len(units),
        curves={(r.task, r.seed): r.curve for r in units}, units=tuple(units),
    )


@dataclass
class _Unit:
    """One (task, seed) unit: its population, data order, loss bookkeeping and checkpoints."""

    index: int
    num_units: int
    task: Task
    seed: int
    genomes: list[Genome]
    members: list[int]
    done: list[list[UnitResult]]
    diverged_before: set[int]
    steps: int
    batch_size: int
    subsample: int | None
    device: torch.device
    data_dir: str | None
    split: str
    backend: str | None
    compile_update: bool
    dtype: torch.dtype
    checkpoint_every: int
    callback: Callback | None
    losses: dict[int, list[float]] = field(default_factory=dict)
    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    marks: dict[int, int] = field(default_factory=dict)
    diverged: set[int] = field(default_factory=set)

    def train(self) -> tuple[list[UnitResult], set[int]]:
        data = task_data(self.task, device=self.device, data_dir=self.data_dir, subsample=self.subsample)
        model = build_model(self.task, self.seed, device=self.device, dtype=self.dtype)
        pop = Population(self.genomes, model, self.steps, backend=self.backend, compile_update=self.compile_update,
                         members=self.members)
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
        pruned: set[int] = set()
        for step in range(1, self.steps + 1):
            if not pop.members:  # everyone pruned or diverged: nothing left to train in this unit
                self._close_curves(step - 1)
                break
            idx = order[step - 1]
            x, y = x_all[idx], data.train_y[idx]
            if aug_gen is not None:
                x = self.task.augment(x, aug_gen)
            report = pop.step(x, y, seed=(dropout_base + step) % 2**63)
            for m, loss in zip(report.members, report.losses):
                if m not in report.diverged:  # a diverging step is not trained: its loss is not recorded
                    self.losses[m].append(loss)
            self.diverged.update(report.diverged)
            end = step == self.steps
            if end or (self.checkpoint_every and step % self.checkpoint_every == 0):
                self._close_curves(step)
            if not end and self.checkpoint_every and step % self.checkpoint_every == 0 and self.callback is not None:
                acc = pop.accuracy(data.val_x[:PROXY_EXAMPLES].to(self.dtype), data.val_y[:PROXY_EXAMPLES])
                prune = self._checkpoint(pop, step, acc, final=False)
                pruned |= prune
                pop.retire(prune)
        x_eval, y_eval = (data.val_x, data.val_y) if self.split == "val" else (data.test_x, data.test_y)
        acc = pop.accuracy(x_eval.to(self.dtype), y_eval)
        results = [self._result(m, acc.get(m, math.nan)) for m in self.members if m not in pruned]
        if self.callback is not None:
            finished = {r.member: r for r in results}
            pruned |= self._checkpoint(pop, self.steps, acc, final=True, finished=finished)
        return results, pruned

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

    def _checkpoint(self, pop: Population, step: int, acc: dict[int, float], *, final: bool,
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
    "AUTO_COMPILE_GENOME_STEPS", "Checkpoint", "EvalResult", "MemberResult", "UnitResult", "batch_indices",
    "build_model", "data_seed", "default_device", "derive_seed", "evaluate", "init_seed", "task_data",
]

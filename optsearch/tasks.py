"""Task registry: data + model factory + training budget + fitness.

A task's data is loaded once into tensors on the training device (train / validation / test; the
validation split is carved from the training set with a seeded permutation, the test split is only
for ``benchmark``). Batches and augmentation are made on the device by the evaluator, never by a
DataLoader per genome.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from optsearch.errors import ConfigError, DataError

DATA_DIR_ENV = "OPTSEARCH_DATA_DIR"
DIVERGENCE_LOSS = 50.0
"""A training loss above this (or NaN/inf) marks a member as diverged."""
LOSS_TAIL = 50
"""Fitness uses the mean training loss over this many final steps."""
WORST_FITNESS = -1.0
"""Fitness of a diverged member (below any reachable fitness, which is ≥ 0)."""


@dataclass(frozen=True)
class Arrays:
    """A task's data as host arrays: float32 inputs (N, …) and int64 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class TaskData:
    """A task's splits as tensors on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class Task:
    """One inner problem a genome is trained on.

    Attributes:
        name: registry key.
        build_model: makes a fresh ``nn.Module`` (initialised from torch's global RNG; seed it first).
        read: returns the :class:`Arrays` given the data directory (embedded tasks ignore it).
        steps, batch_size: the default training budget.
        num_classes: for chance level and the output layer.
        augment: optional on-device batch augmentation ``(x, generator) -> x``.
        val_size: examples carved from the training set for validation.
        subsample: default number of training examples kept (None: all).
        embedded: True when no files are needed.
    """

    name: str
    build_model: Callable[[], nn.Module]
    read: Callable[[Path | None], Arrays]
    steps: int
    batch_size: int
    num_classes: int = 10
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    val_size: int = 5000
    subsample: int | None = None
    embedded: bool = False
    description: str = field(default="", compare=False)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The dataset directory: the CLI option, else ``$OPTSEARCH_DATA_DIR``, else None (torchvision default)."""
    value = explicit or os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def fitness(val_accuracy: float, loss_tail_mean: float, diverged: bool) -> float:
    """The paper's fitness: validation accuracy + 0.05·max(0, 1 − mean train loss of the last 50 steps)."""
    if diverged or not math.isfinite(loss_tail_mean):
        return WORST_FITNESS
    return val_accuracy + 0.05 * max(0.0, 1.0 - loss_tail_mean)


def load_data(
    task: Task,
    *,
    device: torch.device | str = "cpu",
    data_dir_: str | os.PathLike | None = None,
    subsample: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Read a task's arrays, carve a seeded validation split from the training set, move to ``device``.

    Args:
        subsample: keep this many training examples (after the validation split); None means the
            task's default (``task.subsample``), 0 means all.
        seed: seeds the validation split and the subsample (not the training itself).
    """
    arrays = task.read(data_dir(data_dir_))
    n = len(arrays.x_train)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = min(task.val_size, n // 5)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    keep = task.subsample if subsample is None else (subsample or None)
    if keep is not None:
        train_idx = train_idx[:keep]
    dev = torch.device(device)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    return TaskData(
        train_x=t(arrays.x_train[train_idx]),
        train_y=t(arrays.y_train[train_idx]),
        val_x=t(arrays.x_train[val_idx]),
        val_y=t(arrays.y_train[val_idx]),
        test_x=t(arrays.x_test),
        test_y=t(arrays.y_test),
    )


# ----------------------------------------------------------------------------- embedded tasks
def mlp(sizes: tuple[int, ...]) -> Callable[[], nn.Module]:
    """An MLP factory with ReLU between layers (flattening its input)."""

    def build() -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    return build


def _read_digits(_: Path | None) -> Arrays:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(1234).permutation(len(x))  # fixed test split
    test, train = perm[:360], perm[360:]
    return Arrays(x[train], y[train], x[test], y[test])


_MNIST1D: Arrays | None = None


def _read_mnist1d(_: Path | None) -> Arrays:
    global _MNIST1D
    if _MNIST1D is None:
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())  # offline, deterministic with its default seed
        _MNIST1D = Arrays(
            d["x"].astype(np.float32), d["y"].astype(np.int64), d["x_test"].astype(np.float32), d["y_test"].astype(np.int64)
        )
    return _MNIST1D


register(
    Task(
        name="digits",
        build_model=mlp((64, 128, 10)),
        read=_read_digits,
        steps=300,
        batch_size=128,
        val_size=287,
        embedded=True,
        description="scikit-learn 8×8 digits, MLP 64-128-10",
    )
)
register(
    Task(
        name="mnist1d",
        build_model=mlp((40, 128, 10)),
        read=_read_mnist1d,
        steps=300,
        batch_size=128,
        val_size=800,
        embedded=True,
        description="MNIST-1D (generated offline), MLP 40-128-10",
    )
)

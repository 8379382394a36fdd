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
from functools import cache, cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from optsearch.train import datasets, sequence
from optsearch.train.datasets import DATA_DIR_ENV
from optsearch.errors import ConfigError
DIVERGENCE_LOSS = 50.0
"""A training loss above this (or NaN/inf) marks a member as diverged."""
LOSS_TAIL = 50
"""Fitness uses the mean training loss over this many final steps."""
WORST_FITNESS = -1.0
"""Fitness of a diverged member (below any reachable fitness, which is ≥ 0)."""
FITNESS_TEXT = (f"fitness = validation accuracy + 0.05·max(0, 1 − mean train loss of the last {LOSS_TAIL} steps), "
                f"so up to 1.05; a diverged run scores {WORST_FITNESS:g}")
"""The fitness definition in words, printed once by every output that shows a fitness (its readers need it
to see why a value exceeds 1)."""


@dataclass(frozen=True)
class Arrays:
    """A task's data as host arrays: inputs (N, …) and int64 labels (N,).

    Inputs are float32, or uint8 images (N, C, H, W) that :func:`load_data` scales to [0, 1] and
    normalises per channel with ``mean``/``std`` after picking its rows (so a 50,000-image set is
    never held as float32 on the host).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelTraits:
    """What a task's model contains, so the evaluator can pick its backend without guessing.

    Attributes:
        conv: has convolutions (compute-bound on CPU: loop per genome there; batch on GPU).
        batchnorm: has BatchNorm (running-stat buffers that must be stacked per member; train/eval mode).
        dropout: has dropout (random forward: needs its own per-member randomness and train/eval mode).
        num_params: trainable parameters of one model.
        flops_per_example: forward-pass FLOPs (2 × multiply-adds of conv and linear layers) per example.
    """

    conv: bool
    batchnorm: bool
    dropout: bool
    num_params: int
    flops_per_example: int


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
        input_shape: one example's shape (without the batch dimension).
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
    input_shape: tuple[int, ...] = ()

    @cached_property
    def traits(self) -> ModelTraits:
        """Inspect one model (built on CPU without touching the global RNG) and one forward pass."""
        with torch.random.fork_rng(devices=[]):
            model = self.build_model()
        mods = list(model.modules())
        flops = 0

        def count(m: nn.Module, _inp, out: torch.Tensor) -> None:
            nonlocal flops
            if isinstance(m, nn.Linear):  # once per position for sequence models (out is [1, …, out_features])
                flops += 2 * m.in_features * out.numel()
            elif isinstance(m, nn.modules.conv._ConvNd):
                k = math.prod(m.kernel_size) * m.in_channels // m.groups
                flops += 2 * k * out[0].numel()

        hooks = [m.register_forward_hook(count) for m in mods if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, *self.input_shape))
        finally:
            for h in hooks:
                h.remove()
        return ModelTraits(
            conv=any(isinstance(m, nn.modules.conv._ConvNd) for m in mods),
            batchnorm=any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods),
            dropout=any(isinstance(m, nn.modules.dropout._DropoutNd) for m in mods),
            num_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            flops_per_example=flops,
        )


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


def same_data(a: str, b: str) -> bool:
    """Whether two tasks train on the same dataset, i.e. share a reader (``cifar10_small`` reads ``cifar10``'s
    images): a benchmark counts a task whose data the search trained on as searched, not held-out."""
    ta, tb = TASKS.get(a), TASKS.get(b)
    return a == b or (ta is not None and tb is not None and ta.read is tb.read)


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The dataset directory: the CLI option, else ``$OPTSEARCH_DATA_DIR``, else None.

    None makes the real-data readers fall back to torchvision's download into
    ``~/.cache/optsearch/data`` (users with internet); tests always set a directory.
    """
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
        x = torch.from_numpy(np.require(a, requirements=["C", "W"])).to(dev)  # copies read-only (cached) arrays
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
            if arrays.mean is not None and arrays.std is not None:
                shape = (1, -1) + (1,) * (x.dim() - 2)
                x.sub_(torch.tensor(arrays.mean, device=dev).view(shape)).div_(torch.tensor(arrays.std, device=dev).view(shape))
        return x

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


register(Task(name="digits", build_model=mlp((64, 128, 10)), read=_read_digits, steps=300, batch_size=128,
              val_size=287, embedded=True, description="scikit-learn 8×8 digits, MLP 64-128-10", input_shape=(64,)))
register(Task(name="mnist1d", build_model=mlp((40, 128, 10)), read=_read_mnist1d, steps=300, batch_size=128,
              val_size=800, embedded=True, description="MNIST-1D (generated offline), MLP 40-128-10", input_shape=(40,)))


# ----------------------------------------------------------------------------- real datasets
def small_cnn() -> nn.Module:
    """The paper's SmallCNN for 1×28×28 inputs: conv32-pool-conv64-pool-fc256-fc10 (3×3, padding 1)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 10),
    )


def cifar_cnn() -> nn.Module:
    """The paper's CIFAR-10 CNN: two (conv-BN-ReLU ×2, pool, dropout 0.25) blocks, fc256, dropout 0.5, fc10."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2), nn.Dropout(0.25)]

    return nn.Sequential(*block(3, 32), *block(32, 64), nn.Flatten(),
                         nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))


def crop_flip(pad: int = 4, fill: tuple[float, ...] = (0.0,)) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """On-device augmentation: random crop after ``pad``-pixel padding, then a random horizontal flip.

    One gather for the whole batch (no per-image loop), driven only by ``generator`` so a seeded
    generator reproduces it. ``fill`` is the padding colour in the normalised space (black, as
    torchvision pads before normalising). Leading dimensions beyond (C, H, W) are allowed, e.g. a
    population's [P, B, C, H, W] batch, and every image gets its own crop and flip.
    """

    constants: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # per (dtype, device, w): made once, not per step

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        *lead, c, h, w = x.shape
        xb = x.reshape(-1, c, h, w)
        b, gdev = xb.shape[0], generator.device
        key = (x.dtype, x.device, w)
        if key not in constants:  # a host-to-device copy, so only once per device, not every step
            constants[key] = (torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1),
                              torch.arange(w, device=x.device))
        fill_t, j = constants[key]
        padded = xb.new_empty(b, c, h + 2 * pad, w + 2 * pad)
        padded.copy_(fill_t.expand_as(padded))
        padded[..., pad:pad + h, pad:pad + w] = xb
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)
        flip = torch.randint(0, 2, (b,), generator=generator, device=gdev).to(x.device).bool()
        rows = oy[:, None] + torch.arange(h, device=x.device)  # [b, h]
        cols = ox[:, None] + torch.where(flip[:, None], w - 1 - j, j)  # [b, w]; crop, then mirror
        idx = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return padded.view(b, c, -1).gather(2, idx).view(x.shape)

    return augment


@cache
def _real(name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[[Path | None], Arrays]:
    """The reader of one real dataset; cached, so tasks on the same data share it (see :func:`same_data`)."""
    def read(root: Path | None) -> Arrays:
        raw = datasets.read_dataset(name, root)
        return Arrays(raw["x_train"], raw["y_train"], raw["x_test"], raw["y_test"], mean=mean, std=std)

    return read


_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
register(Task(name="mnist", build_model=small_cnn, read=_real("mnist", (0.1307,), (0.3081,)), steps=500,
              batch_size=128, input_shape=(1, 28, 28), description="MNIST, the paper's SmallCNN"))
register(Task(name="fashion_mnist", build_model=small_cnn, read=_real("fashion_mnist", (0.2860,), (0.3530,)),
              steps=500, batch_size=128, input_shape=(1, 28, 28), description="Fashion-MNIST, the paper's SmallCNN"))
register(Task(name="cifar10", build_model=cifar_cnn, read=_real("cifar10", _CIFAR_MEAN, _CIFAR_STD), steps=500,
              batch_size=128, input_shape=(3, 32, 32),
              augment=crop_flip(4, tuple(-m / s for m, s in zip(_CIFAR_MEAN, _CIFAR_STD))),
              description="CIFAR-10, CNN with BatchNorm and dropout, crop+flip augmentation"))


# ----------------------------------------------------------------------------- convolutional proxies
# The MLP proxies reward rules that suit a two-layer perceptron, and a winner found on them need not help a
# CNN. These keep the embedded data (no files, seconds per generation on a CPU) but train convolutional models;
# ``cifar10_small`` is a larger meta-validation task (real images, more data and steps) kept apart from the
# held-out benchmark tasks ``mnist`` and ``fashion_mnist``.
def digits_cnn() -> nn.Module:
    """8×8 digits as 1-channel images: conv16-conv32-pool-fc10 (3×3, padding 1)."""
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def mnist1d_cnn() -> nn.Module:
    """MNIST-1D as 1-channel sequences of 40: conv1d32(5)-conv1d32(3)-pool-fc10 (a CNN beats an MLP here)."""
    return nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(),
                         nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Flatten(), nn.Linear(32 * 20, 10))


def cifar_small_cnn() -> nn.Module:
    """CIFAR-10 at full resolution with a narrow CNN: conv16-pool-conv32-pool-fc10."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 10))


register(Task(name="digits_cnn", build_model=digits_cnn, read=_read_digits, steps=300, batch_size=128, val_size=287,
              embedded=True, input_shape=(64,), description="scikit-learn 8×8 digits, CNN conv16-conv32-pool-fc10"))
register(Task(name="mnist1d_cnn", build_model=mnist1d_cnn, read=_read_mnist1d, steps=300, batch_size=128,
              val_size=800, embedded=True, input_shape=(40,),
              description="MNIST-1D (generated offline), 1-D CNN conv32-conv32-pool-fc10"))
register(Task(name="cifar10_small", build_model=cifar_small_cnn, read=_real("cifar10", _CIFAR_MEAN, _CIFAR_STD),
              steps=400, batch_size=128, subsample=10_000, input_shape=(3, 32, 32),
              augment=crop_flip(4, tuple(-m / s for m, s in zip(_CIFAR_MEAN, _CIFAR_STD))),
              description="CIFAR-10 (10,000 training images), narrow CNN conv16-pool-conv32-pool-fc10"))


# ----------------------------------------------------------------------------- sequence tasks (a second model family)
def _sequence(spec: sequence.RecallSpec) -> Callable[[Path | None], Arrays]:
    return lambda _: Arrays(*sequence.recall_splits(spec))  # generated, cached per spec


_RECALL = sequence.RecallSpec()
_RECALL_LARGE = sequence.RecallSpec(pairs=8, keys=24, train=30_000, seed=8765)
register(Task(name="recall", build_model=sequence.transformer(_RECALL), read=_sequence(_RECALL), steps=200,
              batch_size=64, val_size=2000, embedded=True, input_shape=(_RECALL.length,),
              description="associative recall (6 key-value pairs, generated), causal transformer 2×64"))
register(Task(name="recall_large", build_model=sequence.transformer(_RECALL_LARGE, layers=3),
              read=_sequence(_RECALL_LARGE), steps=400, batch_size=64, val_size=2000, embedded=True,
              input_shape=(_RECALL_LARGE.length,),
              description="associative recall (8 pairs, generated), causal transformer 3×64 (a funnel task)"))

"""Many genomes trained at once: stacked parameters, one batched update, per-member NaN isolation.

A :class:`Population` holds P copies of one model as a flat ``[P, D]`` parameter buffer (row i is
member i's parameters, in ``named_parameters`` order; :meth:`Population.row_views` and
:meth:`Population.member_views` give them their shapes), a ``[P, D]`` gradient buffer
and the genomes' optimizer state (``m``, ``v``, ``mu``) as ``[P, D]`` buffers. Every step computes
all members' gradients with one of three engines and then applies all P genomes' updates with one
call of the shared update core (:func:`optsearch.genome.primitives.advance_and_direct`), its coefficients
given as ``[P, 1]`` columns. Why flat buffers: the update is then a dozen in-place elementwise ops
over one contiguous block instead of a Python loop over parameters and genomes.

Engines (:mod:`optsearch.train.engines`, chosen by :func:`choose_backend`) compute the gradients:
``batched`` matmuls for MLPs, ``vmap`` for any model, ``looped`` for CNNs on a CPU, ``fused`` (the
HFTA layout, :mod:`optsearch.train.fused`) for sequential CNNs and MLPs; all share the state and the
update (:mod:`optsearch.train.update`).

Divergence, without reading anything back to the host: a step writes its per-member losses into a
device tensor and ANDs ``loss <= DIVERGENCE_LOSS`` (False for NaN) into a device-side ``alive`` mask;
the update leaves the rows of members that are no longer alive bitwise unchanged (``torch.where``), so
a diverging member is frozen *before* its update and never touches the others. The population's shape
stays fixed between checkpoints (on a GPU a member's kernels then never depend on its batch-mates'
count); only at a checkpoint does :meth:`Population.settle` read the mask and compact the rows of
diverged members away (and :meth:`Population.retire` those of pruned ones), so they stop costing compute.
"""

from __future__ import annotations

import math
import contextlib
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from optsearch.errors import ConfigError
from optsearch.genome import Genome
from optsearch.genome.primitives import Layout
from optsearch.train.device import (
    DEFAULT_PRECISION, activation_elements, check_precision, eval_chunk, forward_context,
)
from optsearch.train.engines import (
    BACKENDS, ENGINES, batched_supported, choose_backend, has_dropout, norms_in_float32,
)
from optsearch.train.tasks import DIVERGENCE_LOSS
from optsearch.train.update import PopulationUpdate


class Population:
    """P genomes training P copies of one model, all from the model's current weights.

    Args:
        genomes: one genome per member.
        model: the architecture *and* the common initial weights (every member starts from them);
            its device and dtype are the population's. It is used as a template and is not trained.
        total_steps: the run's length (for warmup and cosine schedules).
        backend: ``batched``, ``vmap``, ``looped`` or ``fused``; None chooses with :func:`choose_backend`.
        compile_update: ``torch.compile`` the elementwise update (faster per step on CPU after a
            one-time compile of seconds; worth it for long runs, not for tests).
        members: the member ids (default ``0..P-1``), used in reports and by :meth:`retire`.
        channels_last: run the looped engine's convolutions channels-last (input and weights), faster
            on a CPU. The vmap engine stays contiguous: on an H200 channels-last gained nothing there
            (docs/measurements.md), and with batch norm it raised (cuDNN clones the input in that layout,
            which vmap cannot do).
        precision: ``fp32``, ``tf32`` or ``bf16`` (:mod:`optsearch.train.device`); only ``bf16`` changes
            what the population does itself (autocast around the forward pass).
        compile_model: ``torch.compile`` the fused engine's forward and backward as one graph over a
            population padded to a few fixed sizes (only with ``backend="fused"``).
    """

    def __init__(
        self,
        genomes: Sequence[Genome],
        model: nn.Module,
        total_steps: int,
        *,
        backend: str | None = None,
        compile_update: bool = False,
        members: Sequence[int] | None = None,
        channels_last: bool = True,
        precision: str = DEFAULT_PRECISION,
        compile_model: bool = False,
    ):
        if not genomes:
            raise ConfigError("a population needs at least one genome")
        self.members: list[int] = list(range(len(genomes)) if members is None else members)
        if len(self.members) != len(genomes) or len(set(self.members)) != len(genomes):
            raise ConfigError("members must be distinct ids, one per genome")
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("the model has no trainable parameters")
        self.model = model
        self.device = trainable[0][1].device
        self.dtype = trainable[0][1].dtype
        self.backend = backend or choose_backend(model, self.device)
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; known: {', '.join(BACKENDS)}")
        if self.backend == "batched" and not batched_supported(model):
            raise ConfigError("the batched backend needs an nn.Sequential of Linear/Flatten/Dropout/activation layers")
        if compile_model and self.backend != "fused":
            raise ConfigError(f"compile_model needs backend='fused', not {self.backend!r}")
        self.compile_model = compile_model
        # Looped convolutions run fastest on a CPU with input *and* weights channels-last (slower contiguous,
        # slowest with only the input channels-last; docs/measurements.md). A 4-D weight is therefore
        # stored in its row as (out, kh, kw, in) and viewed back as a channels-last [out, in, kh, kw].
        self.channels_last = channels_last and self.backend == "looped"
        self.precision = check_precision(precision, self.dtype)
        if self.precision == "bf16":
            norms_in_float32(model)
        self.names = [n for n, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self._perms = [(0, 2, 3, 1) if self.channels_last and p.dim() == 4 else None for _, p in trainable]
        sizes = [p.numel() for _, p in trainable]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sizes = sizes
        self.num_params = sum(sizes)
        p_count = len(genomes)
        flat = torch.cat([(p.detach() if pm is None else p.detach().permute(pm)).reshape(-1)
                          for (_, p), pm in zip(trainable, self._perms)])
        self.theta = flat.unsqueeze(0).repeat(p_count, 1)
        self.grad = torch.zeros_like(self.theta)
        # Per-member buffers (BatchNorm running stats) and frozen parameters, stacked on dim 0.
        frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
        self.buffers = {n: b.detach().unsqueeze(0).repeat(p_count, *([1] * b.dim())).clone()
                        for n, b in [*model.named_buffers(), *frozen]}
        self.update = PopulationUpdate(genomes, self.num_params, total_steps, device=self.device, dtype=self.dtype,
                                       compile_update=compile_update,
                                       layout=Layout(tuple(tuple(sh) for sh in self.shapes)))
        self.dropout = has_dropout(model)
        self.alive = torch.ones(p_count, 1, dtype=torch.bool, device=self.device)
        self.diverged: list[int] = []
        self.pruned: list[int] = []
        self._activations: int | None = None
        self._retired_rows: dict[int, torch.Tensor] = {}
        self._engine = ENGINES[self.backend](self)

    # ------------------------------------------------------------------ views
    def _view(self, chunk: torch.Tensor, lead: tuple[int, ...], shape: torch.Size, perm: tuple | None) -> torch.Tensor:
        if perm is None:
            return chunk.view(*lead, *shape)
        stored = chunk.view(*lead, *(shape[i] for i in perm))  # (out, kh, kw, in)
        k = len(lead)
        return stored.permute(*range(k), k, k + 3, k + 1, k + 2)  # back to [out, in, kh, kw], channels-last

    def row_views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter views ``[A, *shape]`` of a ``[A, D]`` buffer."""
        return {n: self._view(flat[:, o:o + s], (flat.shape[0],), sh, pm)
                for n, o, s, sh, pm in zip(self.names, self.offsets, self.sizes, self.shapes, self._perms)}

    def member_views(self, flat: torch.Tensor, row: int) -> dict[str, torch.Tensor]:
        """Per-parameter views of one row of a ``[A, D]`` buffer (the model's own shapes)."""
        return {n: self._view(flat[row, o:o + s], (), sh, pm)
                for n, o, s, sh, pm in zip(self.names, self.offsets, self.sizes, self.shapes, self._perms)}

    @property
    def active(self) -> tuple[int, ...]:
        """Members still being trained, in row order."""
        return tuple(self.members)

    def parameters_of(self, member: int) -> dict[str, torch.Tensor]:
        """A member's current parameters (copies); a retired member's are those it was retired with."""
        if member in self.members:
            flat = self.theta[self.members.index(member)]
        elif member in self._retired_rows:
            flat = self._retired_rows[member]
        else:
            raise KeyError(f"no member {member}")
        return {n: t.clone(memory_format=torch.contiguous_format)
                for n, t in self.member_views(flat.unsqueeze(0), 0).items()}

    # ------------------------------------------------------------------ training
    def forward_context(self) -> contextlib.AbstractContextManager:
        """The precision policy's context for forward passes (bf16 autocast, or nothing)."""
        return forward_context(self.precision, self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
        """One training step of every member on the batch ``(x, y)``; returns the losses ``[A]`` on the device.

        Reads nothing back to the host: a member whose loss is NaN/inf or above the divergence limit is
        marked dead in :attr:`alive` and frozen before its update (see the module docstring).

        Args:
            seed: seeds torch's global RNG before each forward pass when the model has dropout, so every
                member draws the same masks (common random numbers) and a member's run does not depend
                on which others are in the population.
        """
        if not self.members:
            return self.theta.new_empty(0)
        self.model.train()
        losses = self._engine.loss_and_grad(x, y, seed)
        torch.logical_and(self.alive, (losses <= DIVERGENCE_LOSS).unsqueeze(1), out=self.alive)  # NaN: False
        self.update.apply(self.theta, self.grad, self.alive)
        return losses

    def settle(self) -> tuple[int, ...]:
        """At a checkpoint: read the alive mask (one host read) and retire the members that diverged."""
        if not self.members:
            return ()
        dead = tuple(m for m, ok in zip(self.members, self.alive.view(-1).tolist()) if not ok)
        self.retire(dead, diverged=True)
        return dead

    def retire(self, members: Iterable[int], *, diverged: bool = False) -> None:
        """Stop training these members: their rows leave every buffer (they stop costing compute)."""
        gone = {m for m in members if m in self.members}
        if not gone:
            return
        keep = [r for r, m in enumerate(self.members) if m not in gone]
        for r, m in enumerate(self.members):
            if m in gone:
                self._retired_rows[m] = self.theta[r].clone()
                (self.diverged if diverged else self.pruned).append(m)
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.theta = self.theta.index_select(0, rows)
        self.grad = self.grad.index_select(0, rows)
        self.buffers = {n: b.index_select(0, rows) for n, b in self.buffers.items()}
        self.alive = self.alive.index_select(0, rows)
        self.update.keep_rows(rows)
        self.members = [self.members[r] for r in keep]
        self._engine.rebuild()

    # ------------------------------------------------------------------ evaluation
    def _activation_elements(self, example: torch.Tensor) -> int:
        if self._activations is None:
            self._activations = activation_elements(self.model, example)
        return self._activations

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, *, chunk: int | None = None) -> dict[int, float]:
        """Classification accuracy of every active member on ``(x, y)`` (eval mode: BN stats, no dropout).

        ``chunk`` examples per pass; default sized to the device's memory (fixed on a CPU).
        """
        if chunk is None and len(x):
            chunk = eval_chunk(self.device, len(self.members), lambda: self._activation_elements(x[:1]),
                               self.theta.element_size())
        with self.forward_context():
            return accuracy_by_member(self.model, self._engine.logits, self.members, x, y, chunk=chunk or 1)


@torch.no_grad()
def accuracy_by_member(model: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor], members: Sequence[int],
                       x: torch.Tensor, y: torch.Tensor, *, chunk: int = 1024) -> dict[int, float]:
    """Accuracy per member from ``logits(x) -> [A, n, C]``, in chunks, with ``model`` in eval mode meanwhile."""
    if not members or len(x) == 0:
        return {m: math.nan for m in members}
    model.eval()
    try:
        correct = torch.zeros(len(members), dtype=torch.long, device=x.device)
        for i in range(0, len(x), chunk):
            correct += (logits(x[i:i + chunk]).argmax(-1) == y[i:i + chunk]).sum(-1)
    finally:
        model.train()
    return dict(zip(members, (correct.double() / len(x)).tolist()))


__all__ = [
    "BACKENDS", "Population", "PopulationUpdate", "accuracy_by_member", "batched_supported",
    "choose_backend",
]

"""Many genomes trained at once: stacked parameters, one batched update, per-member NaN isolation.

A :class:`Population` holds P copies of one model as a flat ``[P, D]`` parameter buffer (row i is
member i's parameters, in ``named_parameters`` order; :meth:`Population.row_views` and
:meth:`Population.member_views` give them their shapes), a ``[P, D]`` gradient buffer
and the genomes' optimizer state (``m``, ``v``, ``mu``) as ``[P, D]`` buffers. Every step computes
all members' gradients with one of three engines and then applies all P genomes' updates with one
call of the shared update core (:func:`optsearch.genome.primitives.advance_and_direct`), its coefficients
given as ``[P, 1]`` columns. Why flat buffers: the update is then a dozen in-place elementwise ops
over one contiguous block instead of a Python loop over parameters and genomes (DESIGN §10).

Engines (:mod:`optsearch.train.engines`, chosen by :func:`choose_backend`) compute the gradients:
``batched`` matmuls for MLPs, ``vmap`` for any model, ``looped`` for CNNs on a CPU; all share the
state and the update (:mod:`optsearch.train.update`).

Divergence: after the forward pass, a member whose loss is NaN/inf or above
:data:`optsearch.train.tasks.DIVERGENCE_LOSS` is retired *before* its update: its row is removed from
every buffer, so it never touches the others and stops costing compute. Pruned members likewise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from optsearch.errors import ConfigError
from optsearch.genome import Genome
from optsearch.train.engines import BACKENDS, ENGINES, batched_supported, choose_backend, has_dropout
from optsearch.train.tasks import DIVERGENCE_LOSS
from optsearch.train.update import PopulationUpdate


@dataclass(frozen=True)
class StepReport:
    """What one population step did.

    Attributes:
        members: the members that computed a loss this step, in row order.
        losses: their training losses (same order).
        diverged: members retired this step for a NaN/inf/exploding loss; they were not updated.
    """

    members: tuple[int, ...]
    losses: tuple[float, ...]
    diverged: tuple[int, ...]


class Population:
    """P genomes training P copies of one model, all from the model's current weights.

    Args:
        genomes: one genome per member.
        model: the architecture *and* the common initial weights (every member starts from them);
            its device and dtype are the population's. It is used as a template and is not trained.
        total_steps: the run's length (for warmup and cosine schedules).
        backend: ``batched``, ``vmap`` or ``looped``; None chooses with :func:`choose_backend`.
        compile_update: ``torch.compile`` the elementwise update (faster per step on CPU after a
            one-time compile of seconds; worth it for long runs, not for tests).
        members: the member ids (default ``0..P-1``), used in reports and by :meth:`retire`.
        channels_last: run the looped engine's convolutions channels-last (input and weights),
            faster on CPU.
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
        # Looped convolutions run fastest with input *and* weights channels-last (measured here: 94 ms
        # vs 113 ms contiguous and 136 ms with only the input channels-last). A 4-D weight is therefore
        # stored in its row as (out, kh, kw, in) and viewed back as a channels-last [out, in, kh, kw].
        self.channels_last = channels_last and self.backend == "looped"
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
                                       compile_update=compile_update)
        self.dropout = has_dropout(model)
        self.diverged: list[int] = []
        self.pruned: list[int] = []
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
    def step(self, x: torch.Tensor, y: torch.Tensor, *, seed: int | None = None) -> StepReport:
        """One training step of every active member on the batch ``(x, y)``.

        Args:
            seed: seeds torch's global RNG before each forward pass when the model has dropout, so every
                member draws the same masks (common random numbers) and a member's run does not depend
                on which others are in the population.
        """
        if not self.members:
            return StepReport((), (), ())
        self.model.train()
        losses = self._engine.loss_and_grad(x, y, seed).tolist()  # one host sync per step: free on CPU
        members = tuple(self.members)
        bad = tuple(m for m, loss in zip(members, losses) if not loss <= DIVERGENCE_LOSS)  # NaN compares False
        if bad:
            self.retire(bad, diverged=True)
        if self.members:
            self.update.apply(self.theta, self.grad)
        return StepReport(members, tuple(losses), bad)

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
        self.update.keep_rows(rows)
        self.members = [self.members[r] for r in keep]
        self._engine.rebuild()

    # ------------------------------------------------------------------ evaluation
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 1024) -> dict[int, float]:
        """Classification accuracy of every active member on ``(x, y)`` (eval mode: BN stats, no dropout)."""
        return accuracy_by_member(self.model, self._engine.logits, self.members, x, y, chunk=chunk)


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
    "BACKENDS", "Population", "PopulationUpdate", "StepReport", "accuracy_by_member", "batched_supported",
    "choose_backend",
]

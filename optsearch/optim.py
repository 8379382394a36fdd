"""``GenomeOptimizer``: one genome as a real ``torch.optim.Optimizer``.

The update itself lives in :mod:`optsearch.genome.primitives` (``advance_and_direct`` and
``bias_corrections``), shared with the batched population; this module only gathers tensors,
applies clipping, decoupled weight decay and the learning-rate schedule, and keeps torch's
optimizer contract (param groups, ``state_dict``, LR schedulers, closures).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

import torch

from optsearch.errors import GenomeError
from optsearch.genome import Genome
from optsearch.genome.primitives import (
    NORM_CLIP_EPS, TensorList, advance_and_direct, bias_corrections, schedule_factor, state_needed,
)


class GenomeOptimizer(torch.optim.Optimizer):
    """Train with one genome: ``θ ← θ·(1 − η_t·λ) − η_t·Σ_k α_k·term_k(g)``.

    ``η_t = group['lr'] · schedule(t)``: the genome's warmup/cosine factor multiplies the group's
    *current* lr, so torch LR schedulers (which rewrite ``group['lr']``) compose with it. Each
    group's ``lr`` defaults to ``genome.lr`` and its ``weight_decay`` to ``genome.wd`` (set it to 0
    on a group to exempt e.g. biases). Weight decay is decoupled and applied before the step, as in
    AdamW. Clipping happens before the moments see the gradient: ``value`` clamps each element to
    ±threshold (the paper's), ``norm`` scales all gradients of the optimizer by
    ``min(1, c/(‖g‖ + 1e-6))`` like ``clip_grad_norm_``. ``p.grad`` itself is never modified.

    Per-parameter state: ``step`` (0-d float tensor, as in torch) and only the buffers the genome's
    terms read: ``m`` (EMA of g with β1), ``v`` (EMA of g² with β2), ``mu`` (Lion's EMA with β2).

    Non-finite gradients: with ``skip_nonfinite=True`` (default) a step in which any gradient holds
    a NaN or ±inf is skipped entirely — parameters, moments and step counts stay untouched, as
    ``torch.amp.GradScaler`` does — and :attr:`nonfinite_steps` counts such skips so a training loop
    can notice. The check costs one device sync per step. With ``skip_nonfinite=False`` the NaN
    flows into parameters and state as in ``torch.optim``.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        genome: the optimizer to run.
        total_steps: run length T; required when the genome has warmup or cosine decay (the
            schedule is a fraction of T). Past T the cosine factor stays at 0.
        foreach: True: one ``torch._foreach_*`` call per operation over all tensors of a group
            (fewer kernel launches); False: a plain per-tensor loop. None means True. Both paths
            run the same core and agree.
        skip_nonfinite: skip steps with NaN/inf gradients (see above).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        genome: Genome,
        total_steps: int | None = None,
        *,
        foreach: bool | None = None,
        skip_nonfinite: bool = True,
    ) -> None:
        if not isinstance(genome, Genome):
            raise TypeError(f"genome must be an optsearch.Genome, got {type(genome).__name__}")
        needs_t = [n for n, on in (("warmup", genome.warmup), ("cosine decay", genome.cosine_decay)) if on]
        if needs_t and total_steps is None:
            raise GenomeError(f"genome has {' and '.join(needs_t)}: GenomeOptimizer needs total_steps=<run length>")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise GenomeError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.genome = genome
        self.total_steps = total_steps
        self.foreach = True if foreach is None else bool(foreach)
        self.skip_nonfinite = skip_nonfinite
        self.nonfinite_steps = 0
        """How many steps were skipped because a gradient was NaN or inf."""
        self._weights = genome.merged_terms()
        self._buffers = sorted(state_needed(tuple(self._weights)))
        super().__init__(params, {"lr": genome.lr, "weight_decay": genome.wd})

    def _schedule(self, step: int) -> float:
        g = self.genome
        if not (g.warmup or g.cosine_decay):
            return 1.0
        return schedule_factor(step, self.total_steps, g.warmup, g.warmup_frac, g.cosine_decay)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = []  # (group, params, grads) for the params that have a gradient
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            for p in ps:
                if p.grad.is_sparse:
                    raise RuntimeError("GenomeOptimizer does not support sparse gradients")
            groups.append((group, ps, [p.grad for p in ps]))
        all_grads = [g for _, _, gs in groups for g in gs]
        if not all_grads:
            return loss
        if self.skip_nonfinite and not _all_finite(all_grads):
            self.nonfinite_steps += 1
            return loss
        clipped = iter(self._clip(all_grads))
        for group, ps, gs in groups:
            self._step_group(group, ps, [next(clipped) for _ in gs])
        return loss

    def _clip(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """The gradients after the genome's clipping (new tensors when clipping, else ``grads``)."""
        c = self.genome.clip_threshold
        if self.genome.clip == "value":
            return torch._foreach_clamp_max(torch._foreach_clamp_min(grads, -c), c)
        if self.genome.clip == "norm":
            dev = grads[0].device
            norms = torch.stack([n.to(dev) for n in torch._foreach_norm(grads)])
            coef = torch.clamp(c / (torch.linalg.vector_norm(norms) + NORM_CLIP_EPS), max=1.0)
            return [g * coef.to(g.device) for g in grads]
        return grads

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        states = [self._state_for(p) for p in params]
        if not self.foreach:
            for p, g, st in zip(params, grads, states):
                st["step"] += 1
                bufs = {b: st[b] for b in self._buffers}
                self._update(p, g, bufs, int(st["step"].item()), group)
            return
        # Tensors whose step counts differ (a param that had no grad on some step) or whose device or
        # dtype differ go in separate buckets, so each bucket's bias correction and lr are scalars.
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, (p, st) in enumerate(zip(params, states)):
            buckets[(p.device, p.dtype, int(st["step"].item()))].append(i)
        for (_, _, step), idx in buckets.items():
            torch._foreach_add_([states[i]["step"] for i in idx], 1.0)
            bufs = {b: TensorList([states[i][b] for i in idx]) for b in self._buffers}
            self._update(TensorList([params[i] for i in idx]), TensorList([grads[i] for i in idx]), bufs,
                         step + 1, group)

    def _update(self, p: Any, g: Any, bufs: dict[str, Any], step: int, group: dict[str, Any]) -> None:
        """THE update, for one tensor or a TensorList: decay, advance moments, step."""
        gen = self.genome
        lr_t = group["lr"] * self._schedule(step)
        if group["weight_decay"] != 0:
            p.mul_(1 - lr_t * group["weight_decay"])
        bc1, bc2 = bias_corrections(step, gen.beta1, gen.beta2, gen.bias_correction)
        direction = advance_and_direct(g, bufs, self._weights, beta1=gen.beta1, beta2=gen.beta2, eps=gen.eps,
                                       bc1=bc1, bc2=bc2)
        p.add_(direction * -lr_t)

    def _state_for(self, p: torch.Tensor) -> dict[str, Any]:
        st = self.state[p]
        if "step" not in st:
            st["step"] = torch.tensor(0.0)
        for b in self._buffers:  # also fills buffers a state_dict from another genome lacked
            if b not in st:
                st[b] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st


def _all_finite(grads: list[torch.Tensor]) -> bool:
    """True when no gradient holds NaN or ±inf; max-abs norms propagate both without overflow."""
    maxabs = torch._foreach_norm(grads, float("inf"))
    return bool(torch.stack([n.to(grads[0].device) for n in maxabs]).isfinite().all())


__all__ = ["NORM_CLIP_EPS", "GenomeOptimizer"]

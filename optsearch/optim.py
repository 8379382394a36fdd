"""``GenomeOptimizer``: one genome as a real ``torch.optim.Optimizer``.

The update itself lives in :mod:`optsearch.genome.primitives` (``advance_and_direct`` and
``bias_corrections``), shared with the batched population; this module gathers tensors, applies
clipping, decoupled weight decay and the learning-rate schedule, and keeps torch's optimizer
contract: param groups with their own hyperparameters, ``state_dict``, LR schedulers, closures,
``maximize``, ``foreach``, ``capturable``, ``differentiable`` and complex parameters.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch.optim.optimizer import _default_to_fused_or_foreach, _use_grad_for_differentiable

from optsearch.errors import GenomeError
from optsearch.genome import Genome
from optsearch.genome.primitives import (
    NORM_CLIP_EPS, PRIMITIVES, TensorList, advance_and_direct, bias_corrections, schedule_factor, state_needed,
)


class GenomeOptimizer(torch.optim.Optimizer):
    """Train with one genome: ``θ ← θ·(1 − η_t·λ) − η_t·Σ_k α_k·term_k(g)``.

    ``η_t = group['lr'] · schedule(t)``: the genome's warmup/cosine factor multiplies the group's
    *current* lr, so torch LR schedulers (which rewrite ``group['lr']``) compose with it.

    Every param group holds the genome's hyperparameters, so groups may differ (set any of these
    keys on a group dict): ``lr`` (10^lr_log10), ``weight_decay`` (λ, 0 to exempt e.g. biases;
    decoupled, applied before the step as in AdamW), ``betas`` (β1, β2), ``eps``, ``alphas``
    (primitive name -> total weight, duplicate slots merged), ``bias_correction``, ``schedule``
    (``{"warmup": bool, "warmup_frac": float, "cosine_decay": bool}``) and ``total_steps``.
    Clipping is the genome's and spans all groups: ``value`` clamps each element to ±threshold
    (the paper's), ``norm`` scales all gradients by ``min(1, c/(‖g‖ + 1e-6))`` like
    ``clip_grad_norm_``. ``p.grad`` itself is never modified.

    Per-parameter state: ``step`` (a float tensor, as in torch) and only the buffers the group's
    terms read: ``m`` (EMA of g with β1), ``v`` (EMA of g² with β2), ``mu`` (Lion's EMA with β2).
    Complex parameters are updated as their real view (real and imaginary parts as two reals), as
    ``torch.optim.Adam`` does. :meth:`state_dict` carries the genome; loading a state saved by a
    different genome raises :class:`GenomeError`.

    Non-finite gradients: with ``skip_nonfinite`` on (the default unless ``capturable``) a step in
    which any gradient holds a NaN or ±inf is skipped entirely — parameters, moments and step counts
    stay untouched, as ``torch.amp.GradScaler`` does — and :attr:`nonfinite_steps` counts such skips.
    The check is a host read per step, so it cannot be combined with ``capturable``. Off, the NaN
    flows into parameters and state as in ``torch.optim``.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        genome: the optimizer to run; it supplies every group's defaults.
        total_steps: run length T; required when a group's schedule has warmup or cosine decay (the
            schedule is a fraction of T). Past T the cosine factor stays at 0.
        foreach: True: one ``torch._foreach_*`` call per operation over a group's tensors of one
            device and dtype; False: a per-tensor loop. None: chosen by device as torch does
            (for-each on CUDA, the loop on CPU). Both paths run the same core and agree.
        maximize: ascend the objective (the gradient is negated) instead of descending.
        capturable: keep step counts on the parameters' device and compute every step-dependent
            coefficient there, so a step makes no host read (CUDA graphs, ``torch.compile``).
        differentiable: run the step with autograd on, so the updated parameters are differentiable
            with respect to gradients and hyperparameter tensors (meta-learning). Loop path only.
        skip_nonfinite: skip steps with NaN/inf gradients (see above); None: on unless capturable.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        genome: Genome,
        total_steps: int | None = None,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        skip_nonfinite: bool | None = None,
    ) -> None:
        if not isinstance(genome, Genome):
            raise TypeError(f"genome must be an optsearch.Genome, got {type(genome).__name__}")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise GenomeError(f"total_steps must be a positive integer, got {total_steps!r}")
        if skip_nonfinite and capturable:
            raise GenomeError("skip_nonfinite needs a host read per step; it cannot be combined with capturable=True")
        self.genome = genome
        self.skip_nonfinite = (not capturable) if skip_nonfinite is None else bool(skip_nonfinite)
        self.nonfinite_steps = 0
        """How many steps were skipped because a gradient was NaN or inf."""
        defaults = {
            "lr": genome.lr,
            "weight_decay": genome.wd,
            "betas": (genome.beta1, genome.beta2),
            "eps": genome.eps,
            "alphas": genome.merged_terms(),
            "bias_correction": genome.bias_correction,
            "schedule": {"warmup": genome.warmup, "warmup_frac": genome.warmup_frac,
                         "cosine_decay": genome.cosine_decay},
            "total_steps": total_steps,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (its missing keys from the genome's defaults), checking its hyperparameters."""
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved by an older GenomeOptimizer lack the newer keys
            for k, v in self.defaults.items():
                group.setdefault(k, v)

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"genome"`` (the genome's parameters), checked on load."""
        sd = super().state_dict()
        sd["genome"] = self.genome.to_params()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by a GenomeOptimizer running the same genome (else :class:`GenomeError`)."""
        saved = state_dict.get("genome")
        if saved is not None:
            other = Genome.from_params(saved)
            if other != self.genome:
                raise GenomeError(f"state_dict was saved by a different genome ({other.formula()}); "
                                  f"this optimizer runs {self.genome.formula()}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "genome"})

    # ------------------------------------------------------------------ the step
    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []  # (group, params, grads) for the params that have a gradient
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            for p in ps:
                if p.grad.is_sparse:
                    raise RuntimeError("GenomeOptimizer does not support sparse gradients")
            work.append((group, ps, [_real(p.grad) for p in ps]))  # complex as real views, clipping included
        all_grads = [g for _, _, gs in work for g in gs]
        if not all_grads:
            return loss
        if self.skip_nonfinite and not _all_finite(all_grads):
            self.nonfinite_steps += 1
            return loss
        clipped, owned = self._clip(all_grads)
        it = iter(clipped)
        for group, ps, gs in work:
            grads = [next(it) for _ in gs]
            if group["maximize"] and owned:  # negate our own copy in place, never p.grad
                torch._foreach_neg_(grads)
            elif group["maximize"]:
                grads = torch._foreach_neg(grads)
            self._step_group(group, ps, grads)
        return loss

    def _clip(self, grads: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        """The gradients after the genome's clipping, and whether they are new tensors (else ``grads``)."""
        c = self.genome.clip_threshold
        if self.genome.clip == "value":
            out = torch._foreach_clamp_min(grads, -c)
            torch._foreach_clamp_max_(out, c)
            return out, True
        if self.genome.clip == "norm":
            dev = grads[0].device
            norms = torch.stack([n.to(dev) for n in torch._foreach_norm(grads)])
            coef = torch.clamp(c / (torch.linalg.vector_norm(norms) + NORM_CLIP_EPS), max=1.0)
            return [g * coef.to(g.device) for g in grads], True
        return grads, False

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        buffers = sorted(state_needed(tuple(group["alphas"])))
        states = [self._state_for(p, group, buffers) for p in params]
        # Complex tensors as their real views: the update is elementwise over real and imaginary parts.
        ps = [_real(p) for p in params]  # (the grads already are)
        gs = grads
        bufs = [{b: _real(st[b]) for b in buffers} for st in states]
        steps = [st["step"] for st in states]
        foreach = group["foreach"]
        if foreach is None:
            foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)[1]
        if not foreach:
            for p, g, b, step in zip(ps, gs, bufs, steps):
                step += 1
                self._update(p, g, b, step if group["capturable"] else step.item(), group)
            return
        # One bucket per device and dtype; without capturable also per step count (a param that had no
        # grad on some step lags behind), so each bucket's coefficients are Python numbers.
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, (p, step) in enumerate(zip(ps, steps)):
            buckets[(p.device, p.dtype) if group["capturable"] else (p.device, p.dtype, step.item())].append(i)
        for key, idx in buckets.items():
            torch._foreach_add_([steps[i] for i in idx], 1.0)
            step = TensorList([steps[i] for i in idx]) if group["capturable"] else key[2] + 1
            self._update(TensorList([ps[i] for i in idx]), TensorList([gs[i] for i in idx]),
                         {b: TensorList([bufs[i][b] for i in idx]) for b in buffers}, step, group)

    def _update(self, p: Any, g: Any, bufs: dict[str, Any], step: Any, group: dict[str, Any]) -> None:
        """THE update, for one tensor or a TensorList: decay, advance moments, step.

        ``step`` is a number, or (capturable) a 0-d device tensor / TensorList of them, in which case
        every coefficient below is computed on the device.
        """
        beta1, beta2 = group["betas"]
        lr_t = _schedule(step, group) * group["lr"]
        if group["weight_decay"] != 0:
            p.mul_(1 - lr_t * group["weight_decay"])
        bc1, bc2 = _bias_corrections(step, beta1, beta2, group["bias_correction"])
        direction = advance_and_direct(g, bufs, group["alphas"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                       bc1=bc1, bc2=bc2)
        if isinstance(lr_t, (int, float)):
            p.add_(direction, alpha=-lr_t)
        else:  # a device tensor (capturable): no host read
            p.sub_(direction.mul_(lr_t))

    def _state_for(self, p: torch.Tensor, group: dict[str, Any], buffers: list[str]) -> dict[str, Any]:
        st = self.state[p]
        if "step" not in st:
            st["step"] = (torch.zeros((), dtype=_scalar_dtype(), device=p.device) if group["capturable"]
                          else torch.tensor(0.0, dtype=_scalar_dtype()))
        for b in buffers:  # also fills buffers a state_dict from an older GenomeOptimizer lacked
            if b not in st:
                st[b] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st


def _check_group(group: dict[str, Any]) -> None:
    """One-line errors for a group's hyperparameters (its own keys or the genome's defaults)."""
    alphas = group["alphas"]
    if not isinstance(alphas, dict) or any(n not in PRIMITIVES for n in alphas):
        raise GenomeError(f"param group 'alphas' must map primitive names ({', '.join(PRIMITIVES)}) to weights, "
                          f"got {alphas!r}")
    group["alphas"] = {n: float(a) for n, a in alphas.items() if a != 0}
    b1, b2 = group["betas"]
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise GenomeError(f"param group 'betas' must lie in [0, 1), got {group['betas']!r}")
    sched = group["schedule"]
    needs_t = [n for n, key in (("warmup", "warmup"), ("cosine decay", "cosine_decay")) if sched.get(key)]
    if needs_t and group["total_steps"] is None:
        raise GenomeError(f"genome has {' and '.join(needs_t)}: GenomeOptimizer needs total_steps=<run length>")
    if group["differentiable"] and group["foreach"]:
        raise GenomeError("differentiable=True runs the per-tensor loop; it cannot be combined with foreach=True")


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps step counts in."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _schedule(step: Any, group: dict[str, Any]) -> Any:
    """The group's warmup/cosine factor at ``step``: 1.0 without a schedule, else a number, a tensor or,
    for a TensorList of step counts, a TensorList of 0-d tensors (all computed on the steps' device)."""
    s = group["schedule"]
    if not (s["warmup"] or s["cosine_decay"]):
        return 1.0
    args = (group["total_steps"], s["warmup"], s["warmup_frac"], s["cosine_decay"])
    if isinstance(step, TensorList):
        return TensorList([torch.as_tensor(schedule_factor(t, *args), dtype=t.dtype, device=t.device)
                           for t in step.tensors])
    return schedule_factor(step, *args)


def _bias_corrections(step: Any, beta1: float, beta2: float, enabled: bool) -> tuple[Any, Any]:
    """1−β^t (or 1 when off) for a number step, or computed on the device for a tensor / TensorList step."""
    if not enabled:
        return 1.0, 1.0
    if isinstance(step, TensorList):
        return (TensorList(torch._foreach_pow(beta1, step.tensors)).neg_().add_(1.0),
                TensorList(torch._foreach_pow(beta2, step.tensors)).neg_().add_(1.0))
    return bias_corrections(step, beta1, beta2, True)


def _all_finite(grads: list[torch.Tensor]) -> bool:
    """True when no gradient holds NaN or ±inf; max-abs norms propagate both without overflow."""
    maxabs = torch._foreach_norm(grads, float("inf"))
    return bool(torch.stack([n.to(grads[0].device) for n in maxabs]).isfinite().all())


__all__ = ["NORM_CLIP_EPS", "GenomeOptimizer"]

"""``GenomeOptimizer``: one genome as a real ``torch.optim.Optimizer``.

The update itself lives in :mod:`optsearch.genome.primitives` (``advance_and_direct`` and
``bias_corrections``), shared with the batched population; this module gathers tensors, applies
clipping, decoupled weight decay and the learning-rate schedule, and keeps torch's optimizer
contract: param groups with their own hyperparameters, ``state_dict``, LR schedulers, closures,
``maximize``, ``foreach``, ``capturable``, ``differentiable`` and complex parameters.

:func:`genome_update` is the functional form (as ``torch.optim.adam.adam`` is Adam's); ``GenomeOptimizer.step``
calls it per param group, so the two cannot drift apart.
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
    trust_ratio_,
)


class HyperparameterError(GenomeError, ValueError):
    """An out-of-range hyperparameter: a GenomeError for our CLI, a ValueError as torch.optim raises."""


class GenomeOptimizer(torch.optim.Optimizer):
    """Train with one genome: ``θ ← θ·(1 − η_t·λ) − η_t·Σ_k α_k·term_k(g)``.

    ``η_t = group['lr'] · schedule(t)``: the genome's warmup/cosine factor multiplies the group's
    *current* lr, so torch LR schedulers (which rewrite ``group['lr']``) compose with it.

    Every param group holds the genome's hyperparameters, so groups may differ (set any of these
    keys on a group dict): ``lr`` (10^lr_log10), ``weight_decay`` (λ, 0 to exempt e.g. biases;
    decoupled, applied before the step as in AdamW), ``betas`` (β1, β2), ``beta3``, ``eps``, ``alphas``
    (primitive name -> total weight, duplicate slots merged), ``bias_correction``, ``trust_ratio``, ``schedule``
    (``{"warmup": bool, "warmup_frac": float, "cosine_decay": bool}``) and ``total_steps``.
    Clipping is the genome's and spans all groups: ``value`` clamps each element to ±threshold
    (the paper's), ``norm`` scales all gradients by ``min(1, c/(‖g‖ + 1e-6))`` like
    ``clip_grad_norm_``. ``p.grad`` itself is never modified.

    Per-parameter state: ``step`` (a float tensor, as in torch) and only the buffers the group's
    terms read: ``m`` (EMA of g with β1), ``v`` (EMA of g² with β2), ``mu`` (Lion's EMA with β2),
    ``m3`` (the slow EMA with ``beta3``). Newton–Schulz (``ortho_momentum``) orthogonalises each 2-D
    parameter's momentum; ``trust_ratio`` scales each parameter's update by ‖θ‖/‖u‖.
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
        if skip_nonfinite and capturable:
            raise GenomeError("skip_nonfinite needs a host read per step; it cannot be combined with capturable=True")
        self.genome = genome
        self.skip_nonfinite = (not capturable) if skip_nonfinite is None else bool(skip_nonfinite)
        self.nonfinite_steps = 0
        """How many steps were skipped because a gradient was NaN or inf."""
        defaults = {**genome_hyperparameters(genome), "total_steps": total_steps, "maximize": maximize,
                    "foreach": foreach, "capturable": capturable, "differentiable": differentiable}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (its missing keys from the genome's defaults), checking its hyperparameters."""
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1])

    def __getstate__(self) -> dict[str, Any]:
        """Every public attribute (genome, nonfinite_steps, ...): torch's keeps three, and deepcopy/pickle use it."""
        public = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return {**public, **super().__getstate__()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # also what load_state_dict calls
        for group in self.param_groups:  # groups saved by an older GenomeOptimizer lack the newer keys
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            for p in group["params"]:  # older torch saved step counts as Python numbers (as Adam converts)
                st = self.state.get(p)
                if st and "step" in st and not torch.is_tensor(st["step"]):
                    st["step"] = _step_tensor(st["step"], p, group["capturable"])

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
        clipped, _ = _clip(all_grads, self.genome)  # the genome's clipping spans all groups
        it = iter(clipped)
        for group, ps, gs in work:
            grads = [next(it) for _ in gs]
            genome_update(ps, grads, [self.state[p] for p in ps], genome=self.genome, clip=False,
                          **{k: group[k] for k in (*HYPERPARAMETERS, *_FLAGS)})
        return loss


HYPERPARAMETERS: tuple[str, ...] = (
    "lr", "weight_decay", "betas", "beta3", "trust_ratio", "eps", "alphas", "bias_correction", "schedule",
)
"""The genome's per-group hyperparameters: param-group keys, and keywords of :func:`genome_update`."""
_FLAGS = ("total_steps", "maximize", "foreach", "capturable", "differentiable")


def genome_hyperparameters(genome: Genome) -> dict[str, Any]:
    """The genome's values of :data:`HYPERPARAMETERS`, as a param group holds them."""
    return {
        "lr": genome.lr,
        "weight_decay": genome.wd,
        "betas": (genome.beta1, genome.beta2),
        "beta3": genome.beta3,
        "trust_ratio": genome.trust_ratio,
        "eps": genome.eps,
        "alphas": genome.merged_terms(),
        "bias_correction": genome.bias_correction,
        "schedule": {"warmup": genome.warmup, "warmup_frac": genome.warmup_frac,
                     "cosine_decay": genome.cosine_decay},
    }


def genome_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    *,
    genome: Genome,
    total_steps: int | None = None,
    clip: bool = True,
    maximize: bool = False,
    foreach: bool | None = None,
    capturable: bool = False,
    differentiable: bool = False,
    **hyperparameters: Any,
) -> None:
    """One step of ``genome`` over ``params`` in place: the functional form of :class:`GenomeOptimizer`.

    As ``torch.optim.adam.adam`` is Adam's: ``GenomeOptimizer.step`` runs it per param group, and callers that
    keep their own state (meta-learning, custom loops) call it directly, under ``torch.no_grad()`` unless
    ``differentiable``.

    Args:
        params: the tensors to update (complex ones as their real view).
        grads: one gradient per tensor; never modified.
        states: one dict per tensor, filled on first use with ``step`` and the buffers the terms read
            (``{}`` to start); a ``step`` held as a Python number is converted to a tensor.
        genome: the rule; it supplies every hyperparameter not given.
        total_steps: run length T, for a genome with warmup or cosine decay.
        clip: apply the genome's clipping over ``grads`` (``GenomeOptimizer`` clips across all its
            groups first and passes False).
        maximize, foreach, capturable, differentiable: as for :class:`GenomeOptimizer`.
        **hyperparameters: overrides of :data:`HYPERPARAMETERS` (``lr`` may be a 1-element tensor;
            with ``differentiable``, ``lr`` and ``betas`` may be tensors that require grad).

    Raises:
        HyperparameterError: (a ``ValueError``) for an out-of-range hyperparameter.
    """
    unknown = set(hyperparameters) - set(HYPERPARAMETERS)
    if unknown:
        raise TypeError(f"genome_update() got unexpected keyword arguments {sorted(unknown)}")
    group = {**genome_hyperparameters(genome), **hyperparameters, "total_steps": total_steps, "maximize": maximize,
             "foreach": foreach, "capturable": capturable, "differentiable": differentiable}
    _check_group(group, read_tensors=not capturable)  # capturable: tensors were checked when the group was made
    if not params:
        return
    if not len(grads) == len(states) == len(params):
        raise ValueError("genome_update needs one gradient and one state per parameter")
    gs = [_real(g) for g in grads]
    owned = False
    if clip:
        gs, owned = _clip(gs, genome)
    if maximize and owned:  # negate our own copy in place, never the caller's gradient
        torch._foreach_neg_(gs)
    elif maximize:
        gs = torch._foreach_neg(gs)
    _step(params, gs, states, group)


def _step(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict[str, Any]],
          group: dict[str, Any]) -> None:
    """Advance each tensor's step count and apply :func:`_update`, per tensor or per for-each bucket."""
    buffers = sorted(state_needed(tuple(group["alphas"])))
    capturable, differentiable = group["capturable"], group["differentiable"]
    for p, st in zip(params, states):
        _init_state(st, p, buffers, capturable)
        if differentiable:  # autograd saved last step's buffers: advance copies, never those
            st.update({b: st[b].clone() for b in buffers})
    group = _resolve_tensors(group)
    # Complex tensors as their real views: the update is elementwise over real and imaginary parts.
    ps = [_real(p) for p in params]  # (the grads already are)
    gs = grads
    bufs = [{b: _real(st[b]) for b in buffers} for st in states]
    foreach = group["foreach"]
    if foreach is None:
        foreach = _default_to_fused_or_foreach(params, differentiable, use_fused=False)[1]
    if not foreach:
        for p, g, b, st in zip(ps, gs, bufs, states):
            st["step"] = st["step"] + 1 if differentiable else st["step"].add_(1)  # autograd may hold the old one
            _update(p, g, b, st["step"] if capturable else st["step"].item(), group)
        return
    steps = [st["step"] for st in states]
    # One bucket per device and dtype; without capturable also per step count (a param that had no
    # grad on some step lags behind), so each bucket's coefficients are Python numbers.
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, (p, step) in enumerate(zip(ps, steps)):
        buckets[(p.device, p.dtype) if capturable else (p.device, p.dtype, step.item())].append(i)
    for key, idx in buckets.items():
        torch._foreach_add_([steps[i] for i in idx], 1.0)
        step = TensorList([steps[i] for i in idx]) if capturable else key[2] + 1
        _update(TensorList([ps[i] for i in idx]), TensorList([gs[i] for i in idx]),
                {b: TensorList([bufs[i][b] for i in idx]) for b in buffers}, step, group)


def _update(p: Any, g: Any, bufs: dict[str, Any], step: Any, group: dict[str, Any]) -> None:
    """THE update, for one tensor or a TensorList: decay, advance moments, step.

    ``step`` is a number, or (capturable) a 0-d device tensor / TensorList of them, in which case
    every coefficient below is computed on the device.
    """
    beta1, beta2 = group["betas"]
    lr_t = _schedule(step, group) * group["lr"]
    bc1, bc2 = _bias_corrections(step, beta1, beta2, group["bias_correction"])
    direction = advance_and_direct(g, bufs, group["alphas"], beta1=beta1, beta2=beta2, eps=group["eps"],
                                   bc1=bc1, bc2=bc2, beta3=group["beta3"])
    if group["trust_ratio"]:  # per tensor, against θ before this step's decay (LAMB)
        trust_ratio_(direction, p, None)
    if group["weight_decay"] != 0:
        p.mul_(1 - lr_t * group["weight_decay"])
    if isinstance(lr_t, (int, float)):
        p.add_(direction, alpha=-lr_t)
    else:  # a device tensor (capturable): no host read
        p.sub_(direction.mul_(lr_t))


def _clip(grads: list[torch.Tensor], genome: Genome) -> tuple[list[torch.Tensor], bool]:
    """The gradients after the genome's clipping, and whether they are new tensors (else ``grads``)."""
    c = genome.clip_threshold
    if genome.clip == "value":
        out = torch._foreach_clamp_min(grads, -c)
        torch._foreach_clamp_max_(out, c)
        return out, True
    if genome.clip == "norm":
        dev = grads[0].device
        norms = torch.stack([n.to(dev) for n in torch._foreach_norm(grads)])
        coef = torch.clamp(c / (torch.linalg.vector_norm(norms) + NORM_CLIP_EPS), max=1.0)
        return [g * coef.to(g.device) for g in grads], True
    return grads, False


def _init_state(st: dict[str, Any], p: torch.Tensor, buffers: list[str], capturable: bool) -> None:
    """A step count (a tensor, as in torch) and zeroed buffers, for a new state or one missing them."""
    if not torch.is_tensor(st.get("step")):  # absent, or a number (set directly, or an older state)
        st["step"] = _step_tensor(st.get("step", 0.0), p, capturable)
    for b in buffers:  # also fills buffers a state_dict from an older GenomeOptimizer lacked
        if b not in st:
            st[b] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _step_tensor(value: Any, p: torch.Tensor, capturable: bool) -> torch.Tensor:
    """A step count as torch keeps it: on the parameter's device when capturable, else on the CPU."""
    return torch.tensor(float(value), dtype=_scalar_dtype(), device=p.device if capturable else None)


def _resolve_tensors(group: dict[str, Any]) -> dict[str, Any]:
    """Tensor lr and betas as the update uses them: kept as tensors where autograd (differentiable) or the
    device (capturable, lr only) needs them, else read once as numbers."""
    lr, betas = group["lr"], group["betas"]
    keep = group["differentiable"]
    if isinstance(lr, torch.Tensor):
        lr = lr.reshape(()) if keep or group["capturable"] else lr.item()
    if not keep and any(isinstance(b, torch.Tensor) for b in betas):
        betas = tuple(float(b) for b in betas)
    return {**group, "lr": lr, "betas": tuple(betas)}


def _check_group(group: dict[str, Any], *, read_tensors: bool = True) -> None:
    """One-line errors for a group's hyperparameters (its own keys or the genome's defaults), as torch.optim's
    (a :class:`HyperparameterError` is a ValueError). ``read_tensors=False`` checks tensors' sizes only, not
    their values, so a capturable step makes no host read."""
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise HyperparameterError(f"param group 'betas' must be a pair (beta1, beta2), got {betas!r}")
    for what, t in (("lr", group["lr"]), ("betas[0]", betas[0]), ("betas[1]", betas[1])):
        if isinstance(t, torch.Tensor) and t.numel() != 1:
            raise HyperparameterError(f"Tensor {what} must be 1-element")
    for value, hi, what in ((group["lr"], None, "learning rate"), (group["weight_decay"], None, "weight_decay value"),
                            (group["eps"], None, "epsilon value"), (betas[0], 1.0, "beta parameter at index 0"),
                            (betas[1], 1.0, "beta parameter at index 1"), (group["beta3"], 1.0, "beta3 value")):
        if (read_tensors or not isinstance(value, torch.Tensor)) and not (0.0 <= value and (hi is None or value < hi)):
            raise HyperparameterError(f"Invalid {what}: {value}" + (" (must lie in [0, 1))" if hi else ""))
    t = group["total_steps"]
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        raise GenomeError(f"total_steps must be a positive integer, got {t!r}")
    alphas = group["alphas"]
    if not isinstance(alphas, dict) or any(n not in PRIMITIVES for n in alphas):
        raise GenomeError(f"param group 'alphas' must map primitive names ({', '.join(PRIMITIVES)}) to weights, "
                          f"got {alphas!r}")
    group["alphas"] = {n: float(a) for n, a in alphas.items() if a != 0}
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


__all__ = ["HYPERPARAMETERS", "NORM_CLIP_EPS", "GenomeOptimizer", "HyperparameterError", "genome_hyperparameters",
           "genome_update"]

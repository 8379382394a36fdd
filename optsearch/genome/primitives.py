"""The primitive update terms and the one functional core every optimizer path shares.

A genome's update direction is ``Σ_k α_k · primitive_k``. Each primitive is one small function
of a :class:`Moments` view, written only with arithmetic, ``lerp`` and ``.sign()/.abs()/.exp_()`` so
the same function serves three layouts without a second implementation:

* one tensor per parameter (``GenomeOptimizer``'s loop path),
* a :class:`TensorList` of all parameters (its for-each path, dispatching to ``torch._foreach_*``),
* flat ``[P, D]`` population buffers whose coefficients (β1, ε, …) are ``[P, 1]`` tensors
  (the batched evaluator).

Adding a primitive is one entry in :data:`PRIMITIVES`, plus its place in the genome: a term slot's
choices (:data:`SLOT_PRIMITIVES`) are frozen because stored studies reject a categorical whose choices
change, so later primitives go into a gene of their own (as AddSign and PowerSign did, and the modern
terms of :data:`EXTRA_PRIMITIVES`).

Two operations are per *tensor* rather than per element: Newton–Schulz orthogonalisation of a 2-D
weight's momentum (Muon) and the layer-wise trust ratio (LAMB). Each layout says where its tensors
are: a single tensor is one parameter, a TensorList one parameter per entry, and a ``[P, D]`` population
buffer comes with a :class:`Layout` (each parameter's shape, in row order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from optsearch.genome.tensors import (  # re-exported: the core's callers import them from here
    NS_COEFFICIENTS, NS_EPS, NS_STEPS, Layout, TensorList, orthogonalize, trust_ratio_,
)

NORM_CLIP_EPS = 1e-6
"""Added to ‖g‖ before dividing by it in norm clipping, exactly as ``torch.nn.utils.clip_grad_norm_`` does."""


@dataclass(frozen=True)
class Moments:
    """What a primitive may read at step t. Primitives never modify these in place.

    Attributes:
        g: the (clipped) gradient.
        m: first moment, EMA of g with β1, bias-corrected when the genome says so (m̂).
        denom: √v̂ + ε, from the second moment v (EMA of g² with β2), bias-corrected likewise.
        mu: Lion's momentum *before* this step's update (EMA of g with β2), or None.
        beta1: β1 (a float, or a ``[P, 1]`` tensor in the population).
        eps: ε (likewise).
        m3: the slow EMA of g with β3 (AdEMAMix), after this step's update, or None.
        dm3: m3's change this step, m3_t − m3_{t−1}: the EMA with β3 of g_t − g_{t−1} (Adan; g_0 = 0),
            or None.
        layout: where the tensors are in a ``[P, D]`` buffer (None: one tensor, or a TensorList of them).
    """

    g: Any
    m: Any
    denom: Any
    mu: Any
    beta1: Any
    eps: Any
    m3: Any = None
    dm3: Any = None
    layout: Layout | None = None


@dataclass(frozen=True)
class Primitive:
    """One update term: its name, its symbol in formulas, the state it reads, its function."""

    name: str
    symbol: str
    needs: frozenset[str]
    fn: Callable[[Moments], Any]
    m_scale: str = ""
    """How the term depends on the scale of m: ``linear`` (term(m/c) = term(m)/c), ``invariant`` (only
    its sign matters) or "" (neither). When every m-reading term is one of the first two, bias
    correction is folded into their weights and m̂ is never materialised (one buffer less)."""
    per_tensor: bool = False
    """Not elementwise (Newton–Schulz: matmuls over each 2-D weight), so not free in a compiled population
    update: computed there only when a member uses it."""


def _p(name: str, symbol: str, needs: str, fn: Callable[[Moments], Any], m_scale: str = "", *,
       per_tensor: bool = False) -> Primitive:
    return Primitive(name, symbol, frozenset(needs.split()), fn, m_scale, per_tensor)


# Each function returns either one of its inputs (g, m) or a tensor it allocated, and chains in-place
# ops only on what it allocated itself, so a term costs at most one or two parameter-sized temporaries.
# In-place ops never touch a result that autograd saved (sqrt, exp), so ``differentiable`` works too.
PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in (
        _p("grad", "g", "", lambda s: s.g),
        _p("momentum", "m", "m", lambda s: s.m, "linear"),
        _p("rms_norm", "g/(√v+ε)", "v", lambda s: s.g / s.denom),
        _p("adam", "m/(√v+ε)", "m v", lambda s: s.m / s.denom, "linear"),
        _p("sign_grad", "sign(g)", "", lambda s: s.g.sign()),
        _p("unit_grad", "g/(|g|+ε)", "", lambda s: s.g / s.g.abs().add_(s.eps)),
        _p("nesterov", "(β1·m+(1−β1)·g)", "m", lambda s: s.g.lerp(s.m, s.beta1)),
        _p("sign_momentum", "sign(m)", "m", lambda s: s.m.sign(), "invariant"),
        _p("lion", "sign(β1·μ+(1−β1)·g)", "mu", lambda s: s.g.lerp(s.mu, s.beta1).sign_()),
        # Bello et al. 2017: the gradient, doubled where it agrees in sign with the momentum and
        # cancelled where it disagrees (AddSign), or scaled by e^{±1} (PowerSign).
        _p("add_sign", "(1+sign(g)·sign(m))·g", "m", lambda s: s.g.sign().mul_(s.m.sign()).add_(1).mul_(s.g),
           "invariant"),
        _p("power_sign", "e^(sign(g)·sign(m))·g", "m", lambda s: s.g * s.g.sign().mul_(s.m.sign()).exp_(),
           "invariant"),
        # Muon (Jordan et al. 2024): the momentum of each 2-D weight orthogonalised by Newton–Schulz;
        # any other tensor (bias, conv kernel, norm scale) falls back to plain momentum. State: m.
        _p("ortho_momentum", "NS(m)", "m", lambda s: orthogonalize(s.m, s.layout), per_tensor=True),
        # AdEMAMix (Pagliardini et al. 2024): a slow EMA of g (β3, not bias-corrected) over √v̂+ε, mixed
        # with the fast one by the α's of this term and an ``adam`` term. State: m3, v.
        _p("ademamix", "m₃/(√v+ε)", "m3 v", lambda s: s.m3 / s.denom),
        # Adan (Xie et al. 2022): the EMA with β3 of the gradient difference g_t − g_{t−1}, over √v̂+ε.
        # That EMA is exactly m3_t − m3_{t−1}, so it costs the one buffer m3 (no g_{t−1}). State: m3, v.
        _p("adan_diff", "EMA(g−g₋₁)/(√v+ε)", "m3 v", lambda s: s.dm3 / s.denom),
    )
}
"""The catalogue. ``none`` (an empty slot) is a genome value, not a primitive."""

NONE = "none"
SLOT_PRIMITIVES: tuple[str, ...] = (
    "grad", "momentum", "rms_norm", "adam", "sign_grad", "unit_grad", "nesterov", "sign_momentum", "lion",
)
"""Primitives a term slot may hold. Its choices are fixed: a stored Optuna study refuses a categorical
parameter whose choices change, so primitives added later get their own genes (see the genome)."""
TERM_CHOICES: tuple[str, ...] = (NONE, *SLOT_PRIMITIVES)
SIGN_PRIMITIVES: tuple[str, ...] = ("add_sign", "power_sign")
"""Primitives held by the genome's sign-agreement gene rather than by a term slot."""
EXTRA_PRIMITIVES: tuple[str, ...] = ("ortho_momentum", "ademamix", "adan_diff")
"""Primitives held by the genome's ``extra_term`` gene (the modern terms; added after studies existed)."""
STATE_BUFFERS: tuple[str, ...] = ("m", "v", "mu", "m3")
"""Every per-parameter state buffer a primitive may declare in ``needs``: one float per parameter each."""


def state_needed(terms: Sequence[str]) -> frozenset[str]:
    """Which optimizer state buffers (of :data:`STATE_BUFFERS`) the given terms read."""
    need: set[str] = set()
    for t in terms:
        if t != NONE:
            need |= PRIMITIVES[t].needs
    return frozenset(need)


def advance_and_direct(
    g: Any,
    state: Mapping[str, Any],
    weights: Mapping[str, Any],
    *,
    beta1: Any,
    beta2: Any,
    eps: Any,
    bc1: Any,
    bc2: Any,
    beta3: Any = 0.0,
    layout: Layout | None = None,
    rows: Mapping[str, torch.Tensor] | None = None,
) -> Any:
    """Advance the moment buffers in place with ``g`` and return the direction Σ α_k·prim_k.

    The direction is a new tensor the caller owns (it may scale it in place). Temporaries: √v̂+ε, the
    running sum and one term at a time, plus m̂ only when a term that is neither linear nor invariant
    in m's scale (Nesterov) reads it; otherwise 1/bc1 goes into the linear terms' weights.

    Args:
        g: gradient (tensor, TensorList or [P, D]); already clipped. Never modified.
        state: buffers 'm', 'v', 'mu', 'm3' for whichever of them the weights need (updated in place).
        weights: primitive name -> total α (merged over slots; coefficients may be [P, 1]).
        beta1, beta2, eps, beta3: the genome's coefficients (β3: the slow EMA m3).
        bc1, bc2: bias-correction denominators 1−β^t, or 1 where correction is off (numbers, 0-d
            tensors, TensorLists of 0-d tensors or [P, 1] columns).
        layout: the tensors of a ``[P, D]`` buffer (only Newton–Schulz reads it).
        rows: primitive name -> the ``[P, D]`` rows (members) whose weight for it is non-zero: that term is
            computed on those rows only and added into theirs (the compiled population update passes it for
            every term, the eager one for Newton–Schulz, whose matmuls cost more than the gather).

    Returns:
        The un-scaled update direction; the caller applies ``θ ← θ − η_t·direction``.
    """
    m = state.get("m")
    v = state.get("v")
    mu = state.get("mu")
    m3 = state.get("m3")
    dm3 = None
    if m3 is not None:
        if "adan_diff" in weights:  # m3_t − m3_{t−1} = (1−β3)·(g − m3_{t−1}), read before m3 advances
            dm3 = (g - m3).mul_(1 - beta3)
        m3.lerp_(g, 1 - beta3)
    if m is not None:
        m.lerp_(g, 1 - beta1)
    if v is not None:
        if isinstance(beta2, torch.Tensor):  # addcmul's value must be a number
            v.mul_(beta2).addcmul_(g, g * (1 - beta2))
        else:
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    # With autograd on (a differentiable step) nothing autograd saves may change later: the terms read
    # a copy of m, and √v is not modified in place.
    in_place = not torch.is_grad_enabled()
    m_hat = m
    if m is not None and not _is_one(bc1):
        scales = {PRIMITIVES[n].m_scale for n in weights if "m" in PRIMITIVES[n].needs}
        if in_place and scales <= {"linear", "invariant"}:  # fold 1/bc1 into the weights, no m̂ buffer
            weights = {n: alpha / bc1 if PRIMITIVES[n].m_scale == "linear" else alpha for n, alpha in weights.items()}
        else:
            m_hat = m / bc1
    elif m is not None and not in_place:
        m_hat = m * 1.0
    denom = None
    if v is not None:
        denom = v.sqrt()
        if not _is_one(bc2):
            denom = denom.div_(_sqrt(bc2)) if in_place else denom / _sqrt(bc2)
        denom = denom.add_(eps) if in_place or not _is_one(bc2) else denom + eps
    if mu is not None and not in_place:  # Lion's term reads μ, which advances below: read a copy
        mu_read = mu * 1.0
    else:
        mu_read = mu
    s = Moments(g=g, m=m_hat, denom=denom, mu=mu_read, beta1=beta1, eps=eps, m3=m3, dm3=dm3, layout=layout)
    direction = None
    for name, alpha in weights.items():
        idx = None if rows is None else rows.get(name)
        if idx is not None:  # only the members using this term: gather their rows, add into theirs
            if direction is None:
                direction = torch.zeros_like(g)
            term = PRIMITIVES[name].fn(_select(s, idx, PRIMITIVES[name].needs))
            # a copy, not index_add_: the rows are distinct, and compiled, index_add_ adds atomically (slower)
            direction.index_copy_(0, idx, direction.index_select(0, idx).add_(term * alpha.index_select(0, idx)))
            del term
            continue
        term = PRIMITIVES[name].fn(s)
        if direction is None:  # scale the first term in place unless it is an input (g, m)
            direction = term * alpha if term is s.g or term is s.m else term.mul_(alpha)
        elif not isinstance(alpha, (int, float)):  # a tensor or TensorList
            direction.addcmul_(term, alpha)
        else:
            direction.add_(term, alpha=alpha)
        del term
    if mu is not None:  # Lion reads μ before its update, so it advances last
        mu.lerp_(g, 1 - beta2)
    return g * 0.0 if direction is None else direction


def _select(s: Moments, idx: torch.Tensor, needs: frozenset[str]) -> Moments:
    """The rows ``idx`` of what a term with these ``needs`` reads (the rest left out: never gathered)."""
    def sel(x: Any, need: str = "") -> Any:
        return x.index_select(0, idx) if isinstance(x, torch.Tensor) and (not need or need in needs) else None

    return Moments(g=sel(s.g), m=sel(s.m, "m"), denom=sel(s.denom, "v"), mu=sel(s.mu, "mu"), beta1=sel(s.beta1),
                   eps=sel(s.eps), m3=sel(s.m3, "m3"), dm3=sel(s.dm3, "m3"), layout=s.layout)


def _is_one(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == 1


def _sqrt(x: Any) -> Any:
    return x.sqrt() if isinstance(x, (torch.Tensor, TensorList)) else math.sqrt(x)


def bias_corrections(step: Any, beta1: Any, beta2: Any, enabled: Any) -> tuple[Any, Any]:
    """1−β1^t and 1−β2^t where bias correction is enabled, else 1 (floats or tensors)."""
    if isinstance(enabled, torch.Tensor):
        one = torch.ones_like(beta1)
        return (
            torch.where(enabled, 1 - beta1**step, one),
            torch.where(enabled, 1 - beta2**step, one),
        )
    if enabled:
        return 1 - beta1**step, 1 - beta2**step
    return 1.0, 1.0


def schedule_factor(step: Any, total_steps: Any, warmup: Any, warmup_frac: Any, cosine: Any) -> Any:
    """The genome's learning-rate multiplier at step ``t`` (1-based), on top of the base lr.

    Linear warmup over ``W = max(1, round(frac·T))`` steps, then (if enabled) a cosine decay from 1 to 0
    over the remaining ``T − W`` steps (or all T without warmup). Unlike the paper's notebook, the
    cosine does not also multiply the warmup ramp. Works on floats/bools, on broadcastable tensors, or
    on a step held in a tensor with Python switches (a capturable optimizer: no host read).
    """
    if isinstance(warmup, torch.Tensor) or isinstance(cosine, torch.Tensor) or isinstance(warmup_frac, torch.Tensor):
        warmup = torch.as_tensor(warmup)
        cosine = torch.as_tensor(cosine)
        frac = torch.as_tensor(warmup_frac, dtype=torch.float64)
        w = torch.where(warmup, torch.clamp(torch.round(frac * total_steps), min=1.0), torch.zeros_like(frac))
        warm = torch.where(warmup, torch.clamp(step / torch.clamp(w, min=1.0), max=1.0), torch.ones_like(frac))
        progress = torch.clamp((step - w) / torch.clamp(total_steps - w, min=1.0), 0.0, 1.0)
        cos = torch.where(cosine, 0.5 * (1 + torch.cos(math.pi * progress)), torch.ones_like(frac))
        return warm * cos
    w = max(1, round(warmup_frac * total_steps)) if warmup else 0
    warm = _clamp(step / w, None, 1.0) if warmup else 1.0
    if not cosine:
        return warm
    progress = _clamp((step - w) / max(1, total_steps - w), 0.0, 1.0)
    cos = torch.cos(math.pi * progress) if isinstance(progress, torch.Tensor) else math.cos(math.pi * progress)
    return warm * 0.5 * (1 + cos)


def _clamp(x: Any, lo: float | None, hi: float) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.clamp(x, min=lo, max=hi)
    return min(hi, x if lo is None else max(lo, x))

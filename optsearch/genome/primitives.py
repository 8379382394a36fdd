"""The primitive update terms and the one functional core every optimizer path shares.

A genome's update direction is ``Σ_k α_k · primitive_k``. Each primitive is one small function
of a :class:`Moments` view, written only with arithmetic and ``.sign()/.sqrt()/.abs()`` so the
same function serves three layouts without a second implementation:

* one tensor per parameter (``GenomeOptimizer``'s loop path),
* a :class:`TensorList` of all parameters (its for-each path, dispatching to ``torch._foreach_*``),
* flat ``[P, D]`` population buffers whose coefficients (β1, ε, …) are ``[P, 1]`` tensors
  (the batched evaluator).

Adding a primitive is one entry in :data:`PRIMITIVES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

NORM_CLIP_EPS = 1e-6
"""Added to ‖g‖ before dividing by it in norm clipping, exactly as ``torch.nn.utils.clip_grad_norm_`` does."""


@dataclass(frozen=True)
class Moments:
    """What a primitive may read at step t.

    Attributes:
        g: the (clipped) gradient.
        m: first moment, EMA of g with β1, bias-corrected when the genome says so (m̂).
        sqrt_v: √v̂, the root of the second moment (EMA of g² with β2), bias-corrected likewise.
        mu: Lion's momentum *before* this step's update (EMA of g with β2), or None.
        beta1: β1 (a float, or a ``[P, 1]`` tensor in the population).
        eps: ε (likewise).
    """

    g: Any
    m: Any
    sqrt_v: Any
    mu: Any
    beta1: Any
    eps: Any


@dataclass(frozen=True)
class Primitive:
    """One update term: its name, its symbol in formulas, the state it reads, its function."""

    name: str
    symbol: str
    needs: frozenset[str]
    fn: Callable[[Moments], Any]


def _p(name: str, symbol: str, needs: str, fn: Callable[[Moments], Any]) -> Primitive:
    return Primitive(name, symbol, frozenset(needs.split()), fn)


PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in (
        _p("grad", "g", "", lambda s: s.g),
        _p("momentum", "m", "m", lambda s: s.m),
        _p("rms_norm", "g/(√v+ε)", "v", lambda s: s.g / (s.sqrt_v + s.eps)),
        _p("adam", "m/(√v+ε)", "m v", lambda s: s.m / (s.sqrt_v + s.eps)),
        _p("sign_grad", "sign(g)", "", lambda s: s.g.sign()),
        _p("unit_grad", "g/(|g|+ε)", "", lambda s: s.g / (s.g.abs() + s.eps)),
        _p("nesterov", "(β1·m+(1−β1)·g)", "m", lambda s: s.m * s.beta1 + s.g * (1 - s.beta1)),
        _p("sign_momentum", "sign(m)", "m", lambda s: s.m.sign()),
        _p("lion", "sign(β1·μ+(1−β1)·g)", "mu", lambda s: (s.mu * s.beta1 + s.g * (1 - s.beta1)).sign()),
    )
}
"""The catalogue. ``none`` (an empty slot) is a genome value, not a primitive."""

NONE = "none"
TERM_CHOICES: tuple[str, ...] = (NONE, *PRIMITIVES)


def state_needed(terms: Sequence[str]) -> frozenset[str]:
    """Which optimizer state buffers ('m', 'v', 'mu') the given terms read."""
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
) -> Any:
    """Advance the moment buffers in place with ``g`` and return the direction Σ α_k·prim_k.

    Args:
        g: gradient (tensor, TensorList or [P, D]); already clipped.
        state: buffers 'm', 'v', 'mu' for whichever of them the weights need (updated in place).
        weights: primitive name -> total α (merged over slots; coefficients may be [P, 1]).
        beta1, beta2, eps: the genome's coefficients.
        bc1, bc2: bias-correction denominators 1−β^t, or 1 where correction is off.

    Returns:
        The un-scaled update direction; the caller applies ``θ ← θ − η_t·direction``.
    """
    m = state.get("m")
    v = state.get("v")
    mu = state.get("mu")
    if m is not None:
        m.lerp_(g, 1 - beta1)
    if v is not None:
        v.mul_(beta2).add_(g * g * (1 - beta2))
    s = Moments(
        g=g,
        m=None if m is None else m / bc1,
        sqrt_v=None if v is None else v.sqrt() / _sqrt(bc2),
        mu=mu,
        beta1=beta1,
        eps=eps,
    )
    direction = None
    for name, alpha in weights.items():
        term = PRIMITIVES[name].fn(s) * alpha
        direction = term if direction is None else direction + term
    if mu is not None:  # Lion reads μ before its update, so it advances last
        mu.lerp_(g, 1 - beta2)
    return g * 0.0 if direction is None else direction


def _sqrt(x: Any) -> Any:
    return x.sqrt() if isinstance(x, torch.Tensor) else math.sqrt(x)


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
    cosine does not also multiply the warmup ramp. Works on floats/bools or on broadcastable tensors.
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
    warm = min(1.0, step / w) if warmup else 1.0
    if not cosine:
        return warm
    progress = min(1.0, max(0.0, (step - w) / max(1, total_steps - w)))
    return warm * 0.5 * (1 + math.cos(math.pi * progress))


class TensorList:
    """A list of tensors whose arithmetic dispatches to ``torch._foreach_*`` (one call for all).

    Only what :data:`PRIMITIVES` and :func:`advance_and_direct` use is implemented; operands are
    another TensorList of the same length or a Python number.
    """

    __slots__ = ("tensors",)

    def __init__(self, tensors: Sequence[torch.Tensor]):
        self.tensors = list(tensors)

    # out-of-place
    def __add__(self, o: Any) -> "TensorList":
        return TensorList(torch._foreach_add(self.tensors, _operand(o)))

    __radd__ = __add__

    def __sub__(self, o: Any) -> "TensorList":
        return TensorList(torch._foreach_sub(self.tensors, _operand(o)))

    def __mul__(self, o: Any) -> "TensorList":
        return TensorList(torch._foreach_mul(self.tensors, _operand(o)))

    __rmul__ = __mul__

    def __truediv__(self, o: Any) -> "TensorList":
        return TensorList(torch._foreach_div(self.tensors, _operand(o)))

    def sign(self) -> "TensorList":
        return TensorList(torch._foreach_sign(self.tensors))

    def sqrt(self) -> "TensorList":
        return TensorList(torch._foreach_sqrt(self.tensors))

    def abs(self) -> "TensorList":
        return TensorList(torch._foreach_abs(self.tensors))

    # in place
    def mul_(self, o: Any) -> "TensorList":
        torch._foreach_mul_(self.tensors, _operand(o))
        return self

    def add_(self, o: Any) -> "TensorList":
        torch._foreach_add_(self.tensors, _operand(o))
        return self

    def lerp_(self, end: "TensorList", weight: float) -> "TensorList":
        torch._foreach_lerp_(self.tensors, end.tensors, weight)
        return self


def _operand(o: Any) -> Any:
    return o.tensors if isinstance(o, TensorList) else o

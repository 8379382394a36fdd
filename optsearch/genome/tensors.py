"""Tensor containers and the per-tensor operations of the update core (see :mod:`optsearch.genome.primitives`).

:class:`TensorList` lets one elementwise primitive run over all of an optimizer's tensors with
``torch._foreach_*``; :class:`Layout` says where each parameter lies in a population's flat ``[P, D]`` row,
which the two operations that are per tensor rather than per element need: Newton–Schulz orthogonalisation
(Muon) and the layer-wise trust ratio (LAMB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""Muon's quintic Newton–Schulz coefficients (a, b, c): X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ."""
NS_STEPS = 5
NS_EPS = 1e-7
"""Floor of ‖X‖_F before Newton–Schulz divides by it, as ``torch.optim.Muon``."""


@dataclass(frozen=True)
class Layout:
    """The parameter tensors of one flat ``[P, D]`` row: their shapes in row order (each one contiguous).

    The per-tensor operations (Newton–Schulz, trust ratio) need it; the elementwise terms do not. A
    4-D weight stored channels-last in its row is still one segment (only 2-D weights are reshaped).
    """

    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def flat(cls, size: int) -> "Layout":
        """One 1-D tensor of ``size`` elements (no matrices: Newton–Schulz falls back to momentum)."""
        return cls(((int(size),),))

    def segments(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """(offset, numel, shape) of each tensor."""
        out, offset = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append((offset, n, shape))
            offset += n
        return out



def _newton_schulz(x: torch.Tensor) -> torch.Tensor:
    """Muon's orthogonalisation of ``[..., A, B]`` matrices (batched over leading dims), in x's dtype.

    ``torch.optim.Muon`` runs it in bfloat16; here it runs in the working dtype so that the one-genome
    and population paths agree to that dtype's precision. Scaled by √max(1, A/B), Muon's ``original``
    learning-rate adjustment, so the term drops into ``θ ← θ − η·α·term`` as Muon's update.
    """
    rows, cols = x.shape[-2:]
    tall = rows > cols
    if tall:
        x = x.transpose(-2, -1)
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=NS_EPS)
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        gram = x @ x.transpose(-2, -1)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if tall:
        x = x.transpose(-2, -1)
    return x * math.sqrt(max(1.0, rows / cols))


def orthogonalize(x: Any, layout: Layout | None) -> Any:
    """Newton–Schulz of every 2-D tensor of ``x``; other tensors pass through (copied: the caller owns it)."""
    if isinstance(x, TensorList):
        return TensorList([_newton_schulz(t) if t.dim() == 2 else t.clone() for t in x.tensors])
    if layout is None:
        return _newton_schulz(x) if x.dim() == 2 else x.clone()
    out = x.clone()
    lead = x.shape[:-1]
    for offset, n, shape in layout.segments():
        if len(shape) == 2:  # [P, A·B] -> [P, A, B], one batched iteration for the population
            out[..., offset:offset + n] = _newton_schulz(x[..., offset:offset + n].reshape(*lead, *shape)).reshape(
                *lead, n)
    return out


def trust_ratio_(direction: Any, theta: Any, layout: Layout | None, enabled: Any = True,
                 rows: torch.Tensor | None = None) -> Any:
    """Scale each tensor's update in place by ‖θ‖/‖u‖ (LAMB's layer-wise trust ratio); returns it.

    The ratio is 1 where either norm is 0 (a fresh zero-initialised bias, a zero update), as in LAMB.
    ``enabled``: a ``[P, 1]`` bool column in the population (members without the switch keep ratio 1).
    ``rows``: in the population, the members with the switch instead: only their rows are read and scaled.
    Decoupled weight decay stays outside the ratio. Reads nothing back to the host.
    """
    if isinstance(direction, TensorList):
        ratios = [_ratio(pn, un) for pn, un in zip(torch._foreach_norm(theta.tensors),
                                                       torch._foreach_norm(direction.tensors))]
        torch._foreach_mul_(direction.tensors, ratios)
        return direction
    if layout is None:
        return direction.mul_(_ratio(torch.linalg.vector_norm(theta), torch.linalg.vector_norm(direction)))
    u = direction if rows is None else direction.index_select(0, rows)
    t = theta if rows is None else theta.index_select(0, rows)
    for offset, n, _ in layout.segments():
        piece = u[..., offset:offset + n]
        r = _ratio(torch.linalg.vector_norm(t[..., offset:offset + n], dim=-1, keepdim=True),
                   torch.linalg.vector_norm(piece, dim=-1, keepdim=True))
        piece.mul_(r if enabled is True or rows is not None else torch.where(enabled, r, 1.0))
    return direction if rows is None else direction.index_copy_(0, rows, u)


def _ratio(theta_norm: torch.Tensor, update_norm: torch.Tensor) -> torch.Tensor:
    ok = (theta_norm > 0) & (update_norm > 0)
    return torch.where(ok, theta_norm / torch.where(ok, update_norm, 1.0), 1.0)


class TensorList:
    """A list of tensors whose arithmetic dispatches to ``torch._foreach_*`` (one call for all).

    Only what :data:`PRIMITIVES`, :func:`advance_and_direct` and the optimizer use is implemented;
    operands are another TensorList of the same length (possibly of 0-d tensors, one per tensor) or
    a Python number. Methods ending in ``_`` work in place and return ``self``.
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

    def __rsub__(self, o: Any) -> "TensorList":  # number − list
        return TensorList(torch._foreach_add(torch._foreach_neg(self.tensors), _operand(o)))

    def __mul__(self, o: Any) -> "TensorList":
        return TensorList(torch._foreach_mul(self.tensors, _operand(o)))

    __rmul__ = __mul__

    def __truediv__(self, o: Any) -> "TensorList":
        return TensorList(torch._foreach_div(self.tensors, _operand(o)))

    def __rtruediv__(self, o: Any) -> "TensorList":  # number / list
        return TensorList(torch._foreach_mul(torch._foreach_reciprocal(self.tensors), o))

    def sign(self) -> "TensorList":
        return TensorList(torch._foreach_sign(self.tensors))

    def sqrt(self) -> "TensorList":
        return TensorList(torch._foreach_sqrt(self.tensors))

    def abs(self) -> "TensorList":
        return TensorList(torch._foreach_abs(self.tensors))

    def lerp(self, end: "TensorList", weight: float) -> "TensorList":
        return TensorList(torch._foreach_lerp(self.tensors, end.tensors, weight))

    # in place
    def mul_(self, o: Any) -> "TensorList":
        torch._foreach_mul_(self.tensors, _operand(o))
        return self

    def add_(self, o: Any, *, alpha: float = 1.0) -> "TensorList":
        if alpha == 1.0:
            torch._foreach_add_(self.tensors, _operand(o))
        else:
            torch._foreach_add_(self.tensors, _operand(o), alpha=alpha)
        return self

    def div_(self, o: Any) -> "TensorList":
        torch._foreach_div_(self.tensors, _operand(o))
        return self

    def sub_(self, o: Any) -> "TensorList":
        torch._foreach_sub_(self.tensors, _operand(o))
        return self

    def addcmul_(self, a: "TensorList", b: Any, *, value: float = 1.0) -> "TensorList":
        if isinstance(b, TensorList):
            torch._foreach_addcmul_(self.tensors, a.tensors, b.tensors, value=value)
        else:  # a number: a·b·value
            torch._foreach_add_(self.tensors, a.tensors, alpha=b * value)
        return self

    def lerp_(self, end: "TensorList", weight: float) -> "TensorList":
        torch._foreach_lerp_(self.tensors, end.tensors, weight)
        return self

    def sign_(self) -> "TensorList":
        torch._foreach_sign_(self.tensors)
        return self

    def exp_(self) -> "TensorList":
        torch._foreach_exp_(self.tensors)
        return self

    def neg_(self) -> "TensorList":
        torch._foreach_neg_(self.tensors)
        return self


def _operand(o: Any) -> Any:
    return o.tensors if isinstance(o, TensorList) else o

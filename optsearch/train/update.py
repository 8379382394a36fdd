"""The batched update: P genomes' rules applied to flat ``[P, D]`` buffers in one call.

Every coefficient is a ``[P, 1]`` column, so one call of the shared update core
(:func:`optsearch.genome.primitives.advance_and_direct`) advances every member. Why flat buffers: the
update is then a dozen in-place elementwise ops over one contiguous block instead of a Python loop
over parameters and genomes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import torch

from optsearch.genome import Genome
from optsearch.genome.primitives import (
    NORM_CLIP_EPS, PRIMITIVES, advance_and_direct, bias_corrections, schedule_factor, state_needed,
)

def _apply_rows(
    theta: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    beta1: torch.Tensor,
    beta2: torch.Tensor,
    eps: torch.Tensor,
    bc1: torch.Tensor,
    bc2: torch.Tensor,
    lr_t: torch.Tensor,
    decay: torch.Tensor,
    value_clip: torch.Tensor,
    grad_scale: torch.Tensor,
    use_value_clip: bool,
    use_grad_scale: bool,
    use_decay: bool,
) -> None:
    """Clip, advance the moments, decay and step every row in place (the only [P, D] arithmetic).

    Code-path switches are plain Python bools: under ``torch.compile`` anything else splits the
    graph into fragments that are slower than eager (DESIGN §10). The norm-clipping factor is
    computed by the caller: a row reduction inside the compiled function crashes Inductor's CPU
    code generator (torch 2.14: ``KeyError: 'buf1'``), and it is not elementwise anyway.
    """
    if use_value_clip:  # per element, as the paper's notebook clips; +inf for members that do not clip
        grad.clamp_(min=-value_clip, max=value_clip)
    if use_grad_scale:  # norm clipping: 1 for members that do not clip by norm
        grad.mul_(grad_scale)
    direction = advance_and_direct(grad, state, weights, beta1=beta1, beta2=beta2, eps=eps, bc1=bc1, bc2=bc2)
    if use_decay:  # decoupled: θ ← θ·(1 − η_t·λ); exactly 1 for members without decay
        theta.mul_(decay)
    theta.addcmul_(direction, lr_t, value=-1.0)


_COMPILED: Callable[..., None] | None = None
_COMPILE_FAILED = False


def _compiled_apply() -> Callable[..., None]:
    """``torch.compile`` of the elementwise update only, built once per process (seconds on a CPU).

    One graph (``fullgraph``), dynamic in P and D so retiring members does not recompile.
    """
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_apply_rows, dynamic=True, fullgraph=True)
    return _COMPILED


def _run_update(compiled: bool, *args: Any) -> None:
    """The compiled update, falling back to eager once and for all if compiling fails here.

    Compiling needs a working C++ (CPU) or Triton (GPU) toolchain, which a user's machine may lack;
    a full-graph compile fails before anything runs, so the eager retry applies the step once.
    """
    global _COMPILE_FAILED
    if compiled and not _COMPILE_FAILED:
        try:
            return _compiled_apply()(*args)
        except Exception as e:  # toolchain or compiler bug: the eager path computes the same update
            _COMPILE_FAILED = True
            warnings.warn(f"compiling the population update failed ({type(e).__name__}: {str(e)[:200]}); "
                          "using the eager update", RuntimeWarning, stacklevel=3)
    _apply_rows(*args)


class PopulationUpdate:
    """P genomes' update rules as ``[P, 1]`` coefficient columns over ``[P, D]`` buffers.

    Only the primitives some member uses are computed (the others would be multiplied by zero
    anyway); with ``compile_update`` all of them are, so one compiled kernel serves every population
    (the fused kernel is memory-bound: the extra arithmetic is free, a recompile is not).
    """

    def __init__(
        self,
        genomes: Sequence[Genome],
        num_params: int,
        total_steps: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
        compile_update: bool = False,
    ):
        p = len(genomes)

        def col(values: Iterable[Any], dt: torch.dtype = dtype) -> torch.Tensor:
            return torch.tensor(list(values), dtype=dt, device=device).view(p, 1)

        f64 = torch.float64
        self.total_steps = int(total_steps)
        self.dtype = dtype
        self.step_count = 0
        self.beta1 = col(g.beta1 for g in genomes)
        self.beta2 = col(g.beta2 for g in genomes)
        self.eps = col(g.eps for g in genomes)
        # Step-dependent factors are computed in float64 and rounded once, as the one-genome
        # optimizer computes them in Python floats.
        self.beta1_64 = col((g.beta1 for g in genomes), f64)
        self.beta2_64 = col((g.beta2 for g in genomes), f64)
        self.lr = col((g.lr for g in genomes), f64)
        self.wd = col((g.wd for g in genomes), f64)
        self.bias_correction = col((g.bias_correction for g in genomes), torch.bool)
        self.warmup = col((g.warmup for g in genomes), torch.bool)
        self.warmup_frac = col((g.warmup_frac for g in genomes), f64)
        self.cosine = col((g.cosine_decay for g in genomes), torch.bool)
        self.value_clip = col(g.clip_threshold if g.clip == "value" else math.inf for g in genomes)
        self.norm_clip = col(g.clip_threshold if g.clip == "norm" else math.inf for g in genomes)
        self.use_value_clip = any(g.clip == "value" for g in genomes)
        self.use_norm_clip = any(g.clip == "norm" for g in genomes)
        self.use_decay = any(g.weight_decay for g in genomes)
        merged = [g.merged_terms() for g in genomes]
        used = [n for n in PRIMITIVES if compile_update or any(n in m for m in merged)]
        self.weights = {n: col(m.get(n, 0.0) for m in merged) for n in used}
        self.state = {k: torch.zeros(p, num_params, dtype=dtype, device=device) for k in sorted(state_needed(used))}
        self.compiled = compile_update

    _ROW_TENSORS = ("beta1", "beta2", "eps", "beta1_64", "beta2_64", "lr", "wd", "bias_correction", "warmup",
                    "warmup_frac", "cosine", "value_clip", "norm_clip")

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (members) of every coefficient and state buffer."""
        for name in self._ROW_TENSORS:
            setattr(self, name, getattr(self, name).index_select(0, rows))
        self.weights = {n: w.index_select(0, rows) for n, w in self.weights.items()}
        self.state = {k: s.index_select(0, rows) for k, s in self.state.items()}

    def coefficients(self, step: int) -> dict[str, torch.Tensor]:
        """The step-dependent columns at (1-based) ``step``: bias corrections, η_t and the decay factor."""
        bc1, bc2 = bias_corrections(step, self.beta1_64, self.beta2_64, self.bias_correction)
        factor = schedule_factor(step, self.total_steps, self.warmup, self.warmup_frac, self.cosine)
        lr_t = self.lr * factor
        decay = 1.0 - lr_t * self.wd
        return {k: v.to(self.dtype) for k, v in (("bc1", bc1), ("bc2", bc2), ("lr_t", lr_t), ("decay", decay))}

    def apply(self, theta: torch.Tensor, grad: torch.Tensor) -> None:
        """One update of every row of ``theta`` from ``grad`` (which is clipped in place)."""
        self.step_count += 1
        c = self.coefficients(self.step_count)
        scale = self.value_clip  # any [P, 1] tensor; unused unless some member clips by norm
        if self.use_norm_clip:  # per member: its row is all of its parameters (members never mix both clips)
            norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
            scale = (self.norm_clip / (norm + NORM_CLIP_EPS)).clamp_(max=1.0)
        _run_update(
            self.compiled, theta, grad, self.state, self.weights, self.beta1, self.beta2, self.eps, c["bc1"],
            c["bc2"], c["lr_t"], c["decay"], self.value_clip, scale, self.use_value_clip, self.use_norm_clip,
            self.use_decay,
        )


__all__ = ["PopulationUpdate"]

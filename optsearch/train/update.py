"""The batched update: P genomes' rules applied to flat ``[P, D]`` buffers in one call.

Every coefficient is a ``[P, 1]`` column, so one call of the shared update core
(:func:`optsearch.genome.primitives.advance_and_direct`) advances every member. Why flat buffers: the
update is then a dozen in-place elementwise ops over one contiguous block instead of a Python loop
over parameters and genomes.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import torch

from optsearch.genome import Genome
from optsearch.genome.primitives import (
    NORM_CLIP_EPS, PRIMITIVES, Layout, advance_and_direct, bias_corrections, schedule_factor,
    state_needed, trust_ratio_,
)

COMPILE_BACKEND: Any = "inductor"
"""The ``torch.compile`` backend of the update (tests swap in a counting backend to count graphs)."""


def _apply_rows(
    theta: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    alive: torch.Tensor,
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
    beta3: torch.Tensor | None = None,
    trust: torch.Tensor | None = None,
    layout: Layout | None = None,
    use_trust: bool = False,
    rows: dict[str, torch.Tensor] | None = None,
    trust_rows: torch.Tensor | None = None,
) -> None:
    """Clip, advance the moments, decay and step every row in place (the only [P, D] arithmetic).

    ``alive`` ([P, 1] bool, on the device) freezes the rows of members that diverged: their θ is left
    bitwise as it was with ``torch.where`` (a zero step size would not do: NaN·0 is NaN). Their moments
    still advance (they are never read again). The compiled update always runs every switch with
    identity values for the members that do not use it (clip at +inf, scale 1, decay 1), so one graph
    serves every population; the eager update skips what no member uses. The norm-clipping factor is
    computed by the caller: a row reduction inside the compiled function crashes Inductor's CPU code
    generator (torch 2.14: ``KeyError: 'buf1'``), and it is not elementwise anyway.
    """
    if use_value_clip:  # per element, as the paper's notebook clips; +inf for members that do not clip
        grad.clamp_(min=-value_clip, max=value_clip)
    if use_grad_scale:  # norm clipping: 1 for members that do not clip by norm
        grad.mul_(grad_scale)
    direction = advance_and_direct(grad, state, weights, beta1=beta1, beta2=beta2, eps=eps, bc1=bc1, bc2=bc2,
                                   beta3=beta3, layout=layout, rows=rows)
    if use_trust:  # LAMB's per-tensor ‖θ‖/‖u‖ for the members with the switch (θ before this step's decay)
        trust_ratio_(direction, theta, layout, trust, rows=trust_rows)
    if use_decay:  # decoupled: θ ← θ·(1 − η_t·λ); exactly 1 for members without decay and frozen ones
        theta.mul_(torch.where(alive, decay, 1.0))
    theta.addcmul_(torch.where(alive, direction, 0.0), lr_t, value=-1.0)


_COMPILED: Callable[..., None] | None = None
_COMPILE_FAILED = False
EAGER_FALLBACKS = 0
"""Updates this process ran eagerly although compiling was asked for (reported in every EvalResult)."""


def _compiled_apply() -> Callable[..., None]:
    """``torch.compile`` of the elementwise update only, built once per process (seconds on a CPU).

    One graph (``fullgraph``): dynamic in D, and the population dimension is marked unbacked by the
    caller so that neither retiring members nor P = 1 compiles a second graph.
    """
    global _COMPILED
    if _COMPILED is None:
        quiet_cuda_home_probe()
        _COMPILED = torch.compile(_apply_rows, dynamic=True, fullgraph=True, backend=COMPILE_BACKEND)
    return _COMPILED


def quiet_cuda_home_probe() -> None:
    """Import ``torch.utils.cpp_extension`` with its logger muted for that import only, when no GPU is usable.

    Inductor imports it while compiling, and at import it looks for a CUDA toolkit: finding one (or an
    ``nvcc`` on PATH) without a usable GPU, it logs "No CUDA runtime is found, using CUDA_HOME=…" — true
    and expected on a CPU run, so a CPU user's terminal should not show it. The module's later messages
    (real build problems) still show, and with a GPU this does nothing."""
    import importlib
    import sys

    if "torch.utils.cpp_extension" in sys.modules or torch.cuda.is_available():
        return
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        importlib.import_module("torch.utils.cpp_extension")
    finally:
        log.setLevel(level)


def _mark_population_dim(*tensors: torch.Tensor, dim: int = 0) -> None:
    """Mark P as unbacked: dynamo then neither specialises P = 1 nor guards on P's value. Inputs must not be
    views of other tensors (dynamo guards on a view's base's sizes too) unless the base is marked as well."""
    from torch._dynamo.decorators import mark_unbacked

    for t in tensors:
        mark_unbacked(t, dim)


def _run_update(compiled: bool, *args: Any) -> bool:
    """The compiled update, falling back to eager once and for all (loudly) if compiling fails here.

    Compiling needs a working C++ (CPU) or Triton (GPU) toolchain, which a user's machine may lack;
    a full-graph compile fails before anything runs, so the eager retry applies the step once.
    Returns whether the update ran eagerly although compiling was asked for.
    """
    global _COMPILE_FAILED, EAGER_FALLBACKS
    if compiled and not _COMPILE_FAILED:
        try:
            _compiled_apply()(*args)
            return False
        except Exception as e:  # toolchain or compiler bug: the eager path computes the same update
            _COMPILE_FAILED = True
            message = (f"compiling the population update failed ({type(e).__name__}: {str(e)[:200]}); every "
                       "later update in this process runs eagerly (several times slower)")
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            logging.getLogger("optsearch").warning(message)
    _apply_rows(*args)
    if compiled:
        EAGER_FALLBACKS += 1
    return compiled


class PopulationUpdate:
    """P genomes' update rules as ``[P, 1]`` coefficient columns over ``[P, D]`` buffers.

    Only the primitives some member uses are computed (the others would be multiplied by zero
    anyway); with ``compile_update`` every elementwise term is in the graph, so one compiled kernel serves every
    population, but each on the rows of the members using it only (index tensors built here: the genomes are
    fixed for the population's life); the trust ratio included (ratio 1 for members without it) and the ``m3``
    buffer with it. Newton–Schulz is the exception (matmuls over each 2-D weight, ≈ 2× an MLP member's
    forward+backward): only a population using it compiles it (a second graph). The eager update, too, runs
    Newton–Schulz and the trust ratio on the rows of the members using them only.

    The step-dependent coefficients (bias corrections, η_t, the decay factor) of the whole run are one
    ``[4, steps, P, 1]`` table computed at construction in float64 and rounded once, as the one-genome
    optimizer computes them in Python floats: a step reads its row, with no kernels and no host values.
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
        layout: Layout | None = None,
    ):
        """``layout``: each parameter tensor's shape in row order (Newton–Schulz and the trust ratio work per
        tensor); None: the row is one 1-D tensor."""
        p = len(genomes)

        def col(values: Iterable[Any], dt: torch.dtype = dtype) -> torch.Tensor:
            return torch.tensor([[v] for v in values], dtype=dt, device=device)  # not a view (see apply)

        f64 = torch.float64
        self.total_steps = int(total_steps)
        self.dtype = dtype
        self.step_count = 0
        self.eager_fallbacks = 0
        self.beta1 = col(g.beta1 for g in genomes)
        self.beta2 = col(g.beta2 for g in genomes)
        self.eps = col(g.eps for g in genomes)
        self.beta3 = col(g.beta3 for g in genomes)
        self.trust = col((g.trust_ratio for g in genomes), torch.bool)
        self.use_trust = any(g.trust_ratio for g in genomes)
        self.layout = layout or Layout.flat(num_params)
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
        used = [n for n in PRIMITIVES
                if any(n in m for m in merged) or (compile_update and not PRIMITIVES[n].per_tensor)]
        self.weights = {n: col(m.get(n, 0.0) for m in merged) for n in used}
        self.state = {k: torch.zeros(p, num_params, dtype=dtype, device=device) for k in sorted(state_needed(used))}
        self.compiled = compile_update
        self.rows = _member_rows(merged, used, p, compile_update, device)
        self.trust_rows = None if compile_update or not self.use_trust or all(g.trust_ratio for g in genomes) else \
            torch.tensor([i for i, g in enumerate(genomes) if g.trust_ratio], dtype=torch.long, device=device)
        self._identity_columns()
        steps = torch.arange(1, self.total_steps + 1, dtype=f64, device=device).view(-1, 1, 1)
        self.table = self._coefficients(steps)  # [4, steps, P, 1]: bc1, bc2, lr_t, decay

    _ROW_TENSORS = ("beta1", "beta2", "beta3", "trust", "eps", "beta1_64", "beta2_64", "lr", "wd", "bias_correction",
                    "warmup", "warmup_frac", "cosine", "value_clip", "norm_clip")

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows (members) of every coefficient and state buffer."""
        for name in self._ROW_TENSORS:
            setattr(self, name, getattr(self, name).index_select(0, rows))
        self.weights = {n: w.index_select(0, rows) for n, w in self.weights.items()}
        self.state = {k: s.index_select(0, rows) for k, s in self.state.items()}
        self.table = self.table.index_select(2, rows)
        if self.rows is not None or self.trust_rows is not None:  # a retirement (a checkpoint's host read)
            new = {int(r): i for i, r in enumerate(rows.tolist())}

            def renumber(idx: torch.Tensor) -> torch.Tensor:
                return torch.tensor([new[int(r)] for r in idx.tolist() if int(r) in new], dtype=torch.long,
                                    device=idx.device)

            self.rows = None if self.rows is None else {n: renumber(idx) for n, idx in self.rows.items()}
            self.trust_rows = None if self.trust_rows is None else renumber(self.trust_rows)
        self._identity_columns()

    def _identity_columns(self) -> None:
        self.ones = torch.ones_like(self.value_clip)
        self.all_alive = torch.ones_like(self.value_clip, dtype=torch.bool)

    def _coefficients(self, step: Any) -> torch.Tensor:
        """``[4, *step.shape[:-2], P, 1]``: 1−β1^t, 1−β2^t (or 1), η_t and 1−η_t·λ at (1-based) ``step``."""
        bc1, bc2 = bias_corrections(step, self.beta1_64, self.beta2_64, self.bias_correction)
        factor = schedule_factor(step, self.total_steps, self.warmup, self.warmup_frac, self.cosine)
        lr_t = self.lr * factor
        decay = 1.0 - lr_t * self.wd
        return torch.stack(torch.broadcast_tensors(bc1, bc2, lr_t, decay)).to(self.dtype)

    def coefficients(self, step: int) -> dict[str, torch.Tensor]:
        """The step-dependent columns at (1-based) ``step``: a row of the table (computed past its end)."""
        c = self.table[:, step - 1] if 1 <= step <= self.total_steps else self._coefficients(float(step))
        return dict(zip(("bc1", "bc2", "lr_t", "decay"), c.unbind(0)))

    def apply(self, theta: torch.Tensor, grad: torch.Tensor, alive: torch.Tensor | None = None) -> None:
        """One update of every row of ``theta`` from ``grad`` (which is clipped in place).

        ``alive`` ([P, 1] bool): rows that are False are left unchanged (default: all are updated).
        Reads no value back to the host.
        """
        self.step_count += 1
        c = self.coefficients(self.step_count)
        alive = self.all_alive if alive is None else alive
        full = self.compiled  # one compiled graph: every switch on, identity values where unused
        scale = self.ones
        if self.use_norm_clip:  # per member: its row is all of its parameters (members never mix both clips)
            norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
            scale = (self.norm_clip / (norm + NORM_CLIP_EPS)).clamp_(max=1.0)
        args = (theta, grad, self.state, self.weights, alive, self.beta1, self.beta2, self.eps, c["bc1"], c["bc2"],
                c["lr_t"], c["decay"], self.value_clip, scale)
        if full:  # the coefficient rows are views of the table: its population dim is marked as theirs
            _mark_population_dim(theta, grad, *self.state.values(), *self.weights.values(), *args[4:], self.beta3,
                                 self.trust)
            _mark_population_dim(self.table, dim=2)
            _mark_population_dim(*(self.rows or {}).values())
        self.eager_fallbacks += _run_update(
            full, *args, full or self.use_value_clip, full or self.use_norm_clip, full or self.use_decay, self.beta3,
            self.trust, self.layout, full or self.use_trust, self.rows, self.trust_rows)


def _member_rows(merged: Sequence[dict[str, float]], used: Sequence[str], p: int, compiled: bool,
                 device: torch.device) -> dict[str, torch.Tensor] | None:
    """The members (row indices) using each term: it is computed on those rows only.

    Compiled: every term of the one graph, even one that every member or none uses (one graph for any such
    population; side by side, on every row with weight 0 was no faster there). Eager: the per-tensor terms
    (Newton–Schulz) that not every member uses; an elementwise term costs less than its gather there.
    """
    rows = {}
    for n in used:
        idx = [i for i, m in enumerate(merged) if n in m]
        if compiled or (PRIMITIVES[n].per_tensor and len(idx) < p):
            rows[n] = torch.tensor(idx, dtype=torch.long, device=device)
    return rows or None


__all__ = ["COMPILE_BACKEND", "EAGER_FALLBACKS", "PopulationUpdate"]

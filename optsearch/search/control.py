"""The control member: one reference optimizer trained with every batch of a generation, on its seeds, for seed-fair ranking.

Fresh seeds every generation (:mod:`.noise`) make a generation drawn on hard seeds score low as a whole, and
a comparison across generations — pruning against earlier curves, the funnel's candidates, the study's best
trial — then mixes seed difficulty with genome quality. So with ``[search] control = "adam"`` (the presets' setting; any
named genome; ``"none"``, the default, turns it off, as in studies made before it) every batch a worker
trains holds one extra member, the **control**: that named update rule with the study's recipe (the shared
recipe of ``recipe = "shared"``, else the named genome's own), the same genome in every generation. It is no
Optuna trial (never a parent, an elite or a funnel candidate); every member trial stores

* :data:`CONTROL_ATTR`: the control's measurement on the member's generation (one value per fitness
  objective; None when the control diverged there),
* :data:`CONTROL_CURVE_ATTR`: the control's fitness estimate at each checkpoint (per fitness objective),
* :data:`RELATIVE_ATTR` (COMPLETE trials): the mean over the genome's measurements of (measurement −
  control of that measurement's generation) — its **relative fitness**. The told Optuna value stays the raw
  mean (what the dashboard and the analysis read as fitness).

Pruning compares curves relative to each generation's control curve at the same checkpoint; the study's
best trial and the funnel's candidates rank by relative fitness whenever the study has controls. A
generation whose control diverged (or a trial from before controls) is shifted by the mean control of the
study's other measured generations, i.e. it falls back to raw fitness on the relative scale, with a warning.

The control is trained in each worker's batch (not once per generation), so every worker has its curve at
each checkpoint without waiting for another process; members train independently of their batch-mates, so
every copy measures the same values and the study does not depend on the number of workers.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Iterable, Mapping, Sequence

from optuna.trial import FrozenTrial

from optsearch.errors import ConfigError, GenomeError
from optsearch.genome import Genome

CONTROL_ATTR = "control"
CONTROL_CURVE_ATTR = "control_curve"
RELATIVE_ATTR = "relative"
CONTROL_NONE = "none"
CONTROL_DEFAULT = "adam"


def parse_control(x: Any, where: str) -> str:
    """``[search] control``: a named genome (the presets name :data:`CONTROL_DEFAULT`) or ``"none"``; absent:
    ``"none"``, so a study or config made before controls keeps its behaviour."""
    if x is None or x == CONTROL_NONE:
        return CONTROL_NONE
    try:
        Genome.named(x if isinstance(x, str) else repr(x))
    except GenomeError as e:
        raise ConfigError(f"{where}: 'control' must be a named genome or \"none\": {e}") from None
    return x


def control_genome(name: str, fixed_genes: Mapping[str, Any]) -> Genome | None:
    """The study's control: the named rule with the shared recipe (genes the sampler holds fixed), else as named."""
    if name == CONTROL_NONE:
        return None
    g = Genome.named(name)
    return Genome.from_params({**g.to_params(), **fixed_genes}) if fixed_genes else g


def control_measurement(member: Any, tasks: Sequence[str], per_task: bool, generation: int) -> list[float] | None:
    """The control's own measurement (as a member's ``measured`` attr); None, with a warning, when it diverged."""
    own = [member.per_task[t]["fitness"] for t in tasks] if per_task else [member.fitness]
    if member.diverged or not all(math.isfinite(v) for v in own):
        logging.getLogger("optsearch").warning(
            "generation %d: the control diverged; its members are ranked by raw fitness shifted by the study's "
            "mean control", generation)
        return None
    return [float(v) for v in own]


class Controls:
    """Each trial's control offset, with the fallback for a trial whose generation has none."""

    def __init__(self, trials: Iterable[FrozenTrial], *, relative: bool | None = None):
        trials = list(trials)
        # relative: whether measurements are read relative to controls (default: when any trial has one)
        self.present = any(CONTROL_ATTR in t.user_attrs for t in trials) if relative is None else relative
        rows: dict[int, list[float]] = {}  # generation -> its control (one row per generation, not per member)
        curves: dict[int, dict[str, list]] = {}  # generation -> its control's curves
        for t in trials:
            c = _valid(t.user_attrs.get(CONTROL_ATTR))
            if c is not None:
                rows.setdefault(int(t.user_attrs.get("generation", -1)), c)
                curves.setdefault(int(t.user_attrs.get("generation", -1)), t.user_attrs.get(CONTROL_CURVE_ATTR) or {})
        cols = list(zip(*rows.values())) if rows else []
        self.fallback = [sum(col) / len(col) for col in cols]
        self._curves = list(curves.values())

    def fallback_at(self, name: str, index: int) -> float:
        """The mean of the measured generations' control values at checkpoint ``index`` of ``name`` (else of
        their final values, else 0): what a generation whose control diverged is compared against."""
        vals = [float(c[name][index]) for c in self._curves if len(c.get(name) or ()) > index
                and c[name][index] is not None and math.isfinite(c[name][index])]
        if vals:
            return sum(vals) / len(vals)
        return sum(self.fallback) / len(self.fallback) if self.fallback else 0.0

    def offset(self, t: FrozenTrial, n: int) -> list[float]:
        """The control of ``t``'s generation (``n`` objectives), else the study's mean control, else zeros."""
        own = _valid(t.user_attrs.get(CONTROL_ATTR))
        if own is not None and len(own) == n:
            return own
        return self.fallback if len(self.fallback) == n else [0.0] * n

    def at_checkpoint(self, t: FrozenTrial, name: str, index: int) -> float:
        """The control's estimate at checkpoint ``index`` of objective ``name`` on ``t``'s generation (else
        :meth:`fallback_at`)."""
        curve = (t.user_attrs.get(CONTROL_CURVE_ATTR) or {}).get(name) or []
        v = curve[index] if 0 <= index < len(curve) else None
        if v is not None and math.isfinite(v):
            return float(v)
        return self.fallback_at(name, index)

    def shifted(self, t: FrozenTrial, name: str = "fitness") -> FrozenTrial:
        """A copy of ``t`` whose intermediate values are relative to its generation's control curve."""
        c = copy.copy(t)
        c.intermediate_values = {s: v - self.at_checkpoint(t, name, s) for s, v in t.intermediate_values.items()}
        return c


def _valid(x: Any) -> list[float] | None:
    if isinstance(x, list) and x and all(isinstance(v, (int, float)) and math.isfinite(v) for v in x):
        return [float(v) for v in x]
    return None


__all__ = ["CONTROL_ATTR", "CONTROL_CURVE_ATTR", "CONTROL_DEFAULT", "CONTROL_NONE", "Controls", "RELATIVE_ATTR",
           "control_genome", "control_measurement", "parse_control"]

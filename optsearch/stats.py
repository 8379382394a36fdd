"""Small-sample statistics for the benchmark: t-intervals over seeds and paired differences.

A benchmark has few seeds (5–10), so the interval is Student's t, not a normal approximation: with
n = 5 the 95 % half-width is 2.776·s/√n, not 1.96·s/√n. Contenders are run on the same seeds (same
initial weights and data order per seed), so a comparison uses the **paired** differences, whose
spread excludes the seed-to-seed variation both contenders share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of a sample with its two-sided t confidence interval (``lo``/``hi`` are NaN when n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int
    sd: float
    level: float = LEVEL

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero (False when it is undefined)."""
        return bool(self.lo > 0 or self.hi < 0)

    @property
    def sign(self) -> int:
        """+1 / −1 when the interval excludes zero on that side, 0 when it does not."""
        if not self.excludes_zero:
            return 0
        return 1 if self.lo > 0 else -1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["excludes_zero"] = self.excludes_zero
        d["sign"] = self.sign
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    def fmt(self, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
        """``mean ± half`` (or ``mean`` alone for n < 2), scaled (e.g. 100 for percentages)."""
        sign = "+" if signed else ""
        m = f"{self.mean * scale:{sign}.{digits}f}"
        if not math.isfinite(self.half_width):
            return m
        return f"{m} ± {self.half_width * scale:.{digits}f}"


def t_quantile(level: float, df: int) -> float:
    """The two-sided Student-t critical value t_{(1+level)/2, df}."""
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, df))


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and two-sided t interval of i.i.d. values (e.g. one contender's score per seed).

    Non-finite values are kept: a diverged seed makes the interval non-finite rather than being
    silently dropped (callers score divergence as a finite worst value before calling this).
    """
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, level)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan, level)
    sd = float(x.std(ddof=1))
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of ``a[i] − b[i]`` with its paired t interval; ``a`` and ``b`` are aligned per seed."""
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples must be aligned, got {xa.shape} and {xb.shape}")
    return t_interval(xa - xb, level)


__all__ = ["Interval", "LEVEL", "paired_difference", "t_interval", "t_quantile"]

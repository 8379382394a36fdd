"""Small-sample statistics: t-intervals over seeds, paired differences, and the one verdict rule.

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


NOT_ESTABLISHED = "not established"


@dataclass(frozen=True)
class Verdict:
    """A comparison's verdict word (``better``, ``worse``, ``not established``) and, when not established, why."""

    word: str
    reason: str = ""

    @property
    def established(self) -> bool:
        return self.word != NOT_ESTABLISHED

    def text(self, than: str = "") -> str:
        """``better than Adam`` / ``not established: interval includes 0``: the phrase every printer uses."""
        if self.established:
            return f"{self.word} than {than}" if than else self.word
        return f"{self.word}: {self.reason}"


def verdict(diff: Interval | None, *, selected_on_these_runs: bool, reference_at_edge: bool) -> Verdict:
    """The one rule behind every "better"/"worse" the tool prints (study run/show, funnel, ablation, benchmark).

    A difference earns a word only from a 95 % interval on runs that were *not* used to pick the
    subject (the maximum of several noisy scores is biased upward on the runs that picked it) against
    a reference whose tuned learning rate is interior to its sweep (one at an end may be under-tuned,
    so the gap could be the tuning's, not the rule's). Otherwise the verdict is "not established" with
    the first failing condition as its reason.

    Args:
        diff: subject − reference, paired per run (None: no such interval).
        selected_on_these_runs: the subject was chosen on these very runs.
        reference_at_edge: the reference's best lr (or the subject's tuning optimum) is an end of its
            sweep or window.
    """
    if diff is None or diff.n < 2 or not math.isfinite(diff.half_width):
        return Verdict(NOT_ESTABLISHED, "too few runs for an interval")
    if selected_on_these_runs:
        return Verdict(NOT_ESTABLISHED, "picked on these runs")
    if reference_at_edge:
        return Verdict(NOT_ESTABLISHED, "a best lr at an end of its sweep")
    if diff.sign == 0:
        return Verdict(NOT_ESTABLISHED, "interval includes 0")
    return Verdict("better" if diff.sign > 0 else "worse")


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


__all__ = ["Interval", "LEVEL", "NOT_ESTABLISHED", "Verdict", "verdict", "paired_difference", "t_interval", "t_quantile"]

"""How far the three importance methods (PED-ANOVA, fANOVA, the forest surrogate) agree on what matters.

Each method has blind spots (fANOVA drops conditional genes, PED-ANOVA looks only at the top quantile, the forest
is only as good as its R²), so a unit is reported as important with confidence only where they agree; the report
and ``analyze``'s summary name the units they dispute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

METHODS: tuple[str, ...] = ("PED-ANOVA", "fANOVA", "forest")
TOP_K = 5
"""Agreement is judged on each method's top 5 units (and rank correlation over all of them)."""


def ranks(scores: dict[str, float], units: Sequence[str]) -> dict[str, int]:
    """unit -> rank (1 = most important) by ``scores``; a unit without a score ranks last; ties keep unit order."""
    order = sorted(units, key=lambda u: -scores.get(u, -math.inf))
    return {u: i + 1 for i, u in enumerate(order)}


def spearman(a: dict[str, int], b: dict[str, int]) -> float:
    """Spearman's ρ of two rankings of the same units (no ties: 1 − 6Σd² / (n(n²−1)))."""
    n = len(a)
    if n < 2:
        return float("nan")
    d2 = sum((a[u] - b[u]) ** 2 for u in a)
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


@dataclass(frozen=True)
class Agreement:
    """How far the three importance methods agree.

    Attributes:
        ranks: method -> unit -> rank (1 = most important).
        rho: "A / B" -> Spearman's ρ of the two methods' rankings over every unit.
        overlap: "A / B" -> how many of their top-k units two methods share.
        agreed: units in the top k of every method (in consensus order).
        disputed: units in the top k of some methods but not all (in consensus order).
        k: the top-k size.
    """

    ranks: dict[str, dict[str, int]]
    rho: dict[str, float]
    overlap: dict[str, int]
    agreed: list[str]
    disputed: list[str]
    k: int = TOP_K

    def consensus(self) -> list[str]:
        """Units by mean rank over the methods (most important first)."""
        units = list(next(iter(self.ranks.values())))
        return sorted(units, key=lambda u: (sum(r[u] for r in self.ranks.values()), units.index(u)))

    def rank_text(self, unit: str) -> str:
        """``#1 / #15 / #12``: the unit's rank by each method, in :data:`METHODS` order."""
        return " / ".join(f"#{self.ranks[m][unit]}" for m in self.ranks)

    def text(self) -> str:
        """One line naming what the methods agree and disagree on, with the rank correlations."""
        k = self.k
        agree = (", ".join(self.agreed) + f" (in all three top {k})") if self.agreed else f"no unit is in all three top {k}"
        parts = [f"methods agree on {agree}"]
        if self.disputed:
            parts.append("disagree on " + ", ".join(f"{u} ({self.rank_text(u)})" for u in self.disputed)
                         + f" [rank by {' / '.join(self.ranks)}]")
        parts.append("Spearman ρ " + ", ".join(f"{pair} {r:+.2f}" for pair, r in self.rho.items()))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"top_k": self.k, "ranks": self.ranks, "spearman_rho": self.rho, "top_k_overlap": self.overlap,
                "agreed": self.agreed, "disputed": self.disputed, "consensus_order": self.consensus()}


__all__ = ["METHODS", "TOP_K", "Agreement", "ranks", "spearman"]

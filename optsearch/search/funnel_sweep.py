"""The funnel's lr sweeps: a genome's variants, its best one (an :class:`Entry`), and sweeps extended at an end.

A sweep whose best lr is an end of it may have its optimum beyond: it is extended :data:`EXTEND` decades at a
time (within the genome's lr range) until its best is interior, each extension a stage of its own
(:mod:`.staged`: stored per unit, resumable).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from optsearch.genome import Genome
from optsearch.genome.core import FLOAT_RANGES
from optsearch.search.staged import complete_scores

PREFIX = "funnel:"
REFERENCE = "adam"
"""The named genome whose update rule, with the winner's recipe, every round measures for the headline."""
EXTEND = 0.5
"""Decades a sweep grows by, one lr at a time, while its best lies at an end."""


def with_lr_offset(g: Genome, offset: float) -> Genome:
    lo, hi, _ = FLOAT_RANGES["lr_log10"]
    return replace(g, lr_log10=min(hi, max(lo, g.lr_log10 + offset)))


def schedules(g: Genome, sweep: bool) -> tuple[bool, ...]:
    """The cosine-decay settings a genome is measured with: its own first (it wins ties), then the other."""
    return (g.cosine_decay, not g.cosine_decay) if sweep else (g.cosine_decay,)


def variant(g: Genome, offset: float, cosine: bool) -> Genome:
    return replace(with_lr_offset(g, offset), cosine_decay=cosine)

@dataclass(frozen=True)
class Entry:
    """One genome's funnel result: its scores per unit at its best variant (lr offset, cosine decay)."""

    name: str
    number: int | None
    told: float | None
    genome: Genome
    offset: float
    scores: tuple[float, ...]
    cosine: bool
    by_variant: tuple[tuple[float, bool, float], ...]
    """(lr offset, cosine decay, mean fitness) for every variant measured."""

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def tuned(self) -> Genome:
        """The genome at its best variant of the sweep."""
        return variant(self.genome, self.offset, self.cosine)

def stage_key(generation: int, tag: str, i: int) -> str:
    """The ``i``-th sweep stage ``tag`` (``ref``: Adam with the winner's recipe, ``win``: extensions) of a round."""
    return f"{PREFIX}{generation}:{tag}:{i}"


def reference_genome(winner: Genome) -> Genome:
    """Adam's update rule (its default lr, β, ε) with the winner's recipe: its sweep starts where Adam's does."""
    return Genome.named(REFERENCE).with_recipe(winner)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _best(rows: Sequence[tuple[float, bool, Sequence[float]]]) -> int:
    """Index of the best (offset, cosine, scores) row; ties: the smaller lr change, then the earlier row."""
    return max(range(len(rows)), key=lambda i: (_mean(rows[i][2]), -abs(rows[i][0]), -i))


def reference_entry(attrs: dict[str, Any], generation: int, winner: Entry) -> Entry | None:
    got = complete_scores(attrs, stage_key(generation, "ref", 0))
    if got is None:
        return None
    head, scores = got
    g = Genome.from_params(head["base"])
    rows = [(float(o), g.cosine_decay, sc) for o, sc in zip(head["offsets"], scores)]
    b = _best(rows)
    return Entry(REFERENCE, None, None, g, rows[b][0], tuple(rows[b][2]), g.cosine_decay,
                 tuple((o, c, _mean(sc)) for o, c, sc in rows))


def extended(attrs: dict[str, Any], generation: int, tag: str, e: Entry | None) -> Entry | None:
    """``e`` with the extension stages of its sweep (``tag``) read in: its best variant over all of them."""
    if e is None:
        return None
    rows = [(o, c, None) for o, c, _ in e.by_variant]
    means = [m for _, _, m in e.by_variant]
    best_scores: dict[int, tuple[float, ...]] = {}
    i = 1 if tag == "ref" else 0
    while (got := complete_scores(attrs, stage_key(generation, tag, i))) is not None:
        head, scores = got
        rows.append((float(head["offsets"][0]), bool(head["cosine"]), None))
        means.append(_mean(scores[0]))
        best_scores[len(rows) - 1] = tuple(scores[0])
        i += 1
    if not best_scores:
        return e
    b = max(range(len(rows)), key=lambda k: (means[k], -abs(rows[k][0]), -k))
    if b not in best_scores:  # still a variant of the first sweep
        return replace(e, by_variant=tuple((o, c, m) for (o, c, _), m in zip(rows, means)))
    return replace(e, offset=rows[b][0], cosine=rows[b][1], scores=best_scores[b],
                   by_variant=tuple((o, c, m) for (o, c, _), m in zip(rows, means)))


def next_offset(e: Entry) -> float | None:
    """The next lr offset of ``e``'s sweep when its best is an end of it (None: interior or the lr range ends)."""
    lo, hi, _ = FLOAT_RANGES["lr_log10"]
    offsets = sorted({o for o, _, _ in e.by_variant})
    if len(offsets) < 2:
        return None
    if e.offset == offsets[-1]:
        nxt = min(offsets[-1] + EXTEND, hi - e.genome.lr_log10)
        return nxt if nxt > offsets[-1] + 1e-9 else None
    if e.offset == offsets[0]:
        nxt = max(offsets[0] - EXTEND, lo - e.genome.lr_log10)
        return nxt if nxt < offsets[0] - 1e-9 else None
    return None

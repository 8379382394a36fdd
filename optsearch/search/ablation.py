"""Ablation and simplification of the funnel winner: drop every part that does not pay for itself.

An evolved genome carries passengers: terms and switches that rode along with the parts that matter
because selection cannot tell a neutral gene from a useful one. Lion's search simplified its winning
program the same way before using it. Each *step* trains, as one population on the same (task, seed)
units (paired seeds), the current genome and one variant per component:

* each term with a nonzero weight removed (its slots set to ``none``, or the sign gene cleared for
  AddSign/PowerSign; the last term is never removed — a genome without terms does not train);
* each switch set to its neutral value: weight decay off, bias correction off, clipping off, warmup
  off, cosine decay off.

A variant's *effect* is the mean paired difference variant − current over the units, with its 95 %
paired t-interval. A component can go only when its removal is shown harmless: the interval's lower
end is above −``margin`` (default 0.01 fitness, about one point of accuracy), i.e. with 95 %
confidence removing it costs less than the margin. "Not shown useful" is not enough: with a few
paired runs the interval of a part worth two points still reaches zero (an earlier rule dropped
warmup and cosine decay on such evidence, and that simplified winner lost to Adam on held-out
tasks; whether because of the drop was not measured). Of the parts
that may go, the one whose removal costs least is dropped, and the next step starts from the smaller
genome, until no remaining part is shown harmless. The first step also trains
the reference (Adam at its best funnel lr) on the same fresh units: the headline's comparison on
seeds that did not pick the winner.

Steps are stored like the funnel (:mod:`.staged`, keys ``ablation:step:N``), so a killed ablation
resumes at its first unfinished unit, and :func:`read` replays the decisions from the stored scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import optuna

from optsearch import stats
from optsearch.genome import Genome
from optsearch.search.config import ABLATION_MARGIN
from optsearch.search.staged import RunUnit, Unit, complete_scores, run_stage
from optsearch.stats import Interval, paired_difference

PREFIX = "ablation:step:"
MARGIN = ABLATION_MARGIN
"""Default equivalence margin (fitness units): a part may go when removing it costs less than this (95 %)."""
SWITCHES: tuple[tuple[str, str, Any], ...] = (
    ("weight decay", "weight_decay", False),
    ("bias correction", "bias_correction", False),
    ("clipping", "clip", "none"),
    ("warmup", "warmup", False),
    ("cosine decay", "cosine_decay", False),
)
"""(label, genome field, neutral value) of every switch the ablation tries to turn off."""


def components(g: Genome) -> list[tuple[str, Genome]]:
    """(label, g without it) for each removable term and each switch not at its neutral value."""
    out: list[tuple[str, Genome]] = []
    merged = g.merged_terms()
    if len(merged) > 1:
        for term, alpha in merged.items():  # without(): a sign term (AddSign/PowerSign) lives in its own gene
            out.append((f"term {term} (α {alpha:.3g})", g.without(term)))
    for label, name, neutral in SWITCHES:
        if getattr(g, name) != neutral:
            out.append((label, replace(g, **{name: neutral})))
    return out


@dataclass(frozen=True)
class Row:
    """One component's effect on removal: variant − genome it was removed from (negative: it helps)."""

    component: str
    effect: Interval
    dropped: bool
    step: int


@dataclass(frozen=True)
class Ablation:
    """A finished ablation: the start and simplified genomes and the table behind the decisions."""

    start: Genome
    genome: Genome
    rows: tuple[Row, ...]
    steps: int
    """How many steps were trained."""
    reference_diff: Interval | None
    runs: int = 0
    """(task, seed) units each step trained on."""
    margin: float | None = MARGIN
    """The equivalence margin the decisions used (None: an ablation stored before it existed)."""

    def vs_reference(self) -> Interval | None:
        """The simplified genome − the reference on the ablation's fresh units (paired; None without a reference).

        Every step trains on the same units (same initial weights and data order per unit), so the
        simplified genome's scores from the step that measured it pair with the reference's of step 0."""
        return self.reference_diff


def run(study: optuna.Study, start: Genome, units: Sequence[Unit], run_unit: RunUnit, *,
        reference: Genome | None = None, margin: float = MARGIN, progress: bool = False) -> Ablation:
    """Run (or resume) the ablation of ``start`` on ``units``; returns the finished result.

    The margin is stored with the steps, so :func:`read` replays the decisions that were made; an
    ablation already started keeps the rule it started with."""
    head = study.user_attrs.get(f"{PREFIX}0")
    rule: float | None = head.get("margin") if isinstance(head, dict) else margin
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="run", desc="ablation", dynamic_ncols=True)

    def stage(step: int, genomes: list[Genome], has_ref: bool) -> list[list[float]]:
        if bar is not None:
            bar.total = (bar.total or 0) + len(units)
            bar.refresh()
        return run_stage(study, f"{PREFIX}{step}", genomes, units, run_unit,
                         extra={"reference": has_ref, "margin": rule}, progress=bar)

    try:
        result = _replay(start, reference, rule, stage)
    finally:
        if bar is not None:
            bar.close()
    assert result is not None
    return result


def read(study: optuna.Study) -> Ablation | None:
    """The study's finished ablation from its stored steps; None if none ran or it is unfinished."""
    attrs = study.user_attrs
    head = attrs.get(f"{PREFIX}0")
    if not isinstance(head, dict):
        return None
    start = Genome.from_params(head["params"][0])
    reference = Genome.from_params(head["params"][-1]) if head.get("reference") else None

    def stage(step: int, genomes: list[Genome], has_ref: bool) -> list[list[float]] | None:
        got = complete_scores(attrs, f"{PREFIX}{step}")
        if got is None or got[0]["params"] != [g.to_params() for g in genomes]:
            return None
        return got[1]

    return _replay(start, reference, head.get("margin"), stage)


def harmless(effect: Interval, margin: float | None) -> bool:
    """May the part behind ``effect`` (variant − genome) go? Its removal costs less than ``margin`` (95 %).

    ``margin`` None: an ablation stored before the margin existed, replayed by its own rule (the
    interval reaches zero)."""
    if not math.isfinite(effect.hi):
        return False
    return effect.hi >= 0 if margin is None else effect.lo >= -margin


def _replay(start: Genome, reference: Genome | None, margin: float | None, stage: Any) -> Ablation | None:
    """Step through the ablation; ``stage(step, genomes, has_reference)`` returns their scores (None: not yet)."""
    current, rows, step, runs = start, [], 0, 0
    ref_scores: list[float] | None = None
    current_scores: list[float] = []
    while True:
        variants = components(current)
        if not variants and step > 0:
            break
        has_ref = step == 0 and reference is not None
        genomes = [current, *(g for _, g in variants), *([reference] if has_ref else [])]
        scores = stage(step, genomes, has_ref)
        if scores is None:
            return None
        runs, current_scores = len(scores[0]), scores[0]
        if has_ref:
            ref_scores = scores[-1]
        effects = [(label, g, paired_difference(scores[1 + i], scores[0])) for i, (label, g) in enumerate(variants)]
        free = [j for j, (_, _, eff) in enumerate(effects) if harmless(eff, margin)]
        if not free:
            rows += [Row(label, eff, False, step) for label, _, eff in effects]
            break
        i = max(free, key=lambda j: effects[j][2].mean)  # the part whose removal costs least
        label, smaller, eff = effects[i]
        rows.append(Row(label, eff, True, step))
        current, current_scores = smaller, scores[1 + i]
        step += 1
    ref_diff = paired_difference(current_scores, ref_scores) if ref_scores is not None else None
    return Ablation(start, current, tuple(rows), step + 1 if not rows or not rows[-1].dropped else step, ref_diff, runs,
                    margin)


def table(a: Ablation) -> list[str]:
    """The ablation table as Markdown rows (also readable as plain text)."""
    out = ["| component | effect of removing it (95 % interval) | verdict |", "|---|---|---|"]
    for r in a.rows:
        e = r.effect
        interval = f"[{e.lo:+.4f}, {e.hi:+.4f}]" if math.isfinite(e.half_width) else "(no interval)"
        # "hurts" by the one verdict rule: after step 0 the genome measured was itself picked on these runs
        hurts = stats.verdict(e, selected_on_these_runs=r.step > 0, reference_at_edge=False).word == "worse"
        verdict = (f"dropped at step {r.step}" if r.dropped else "kept: removing it hurts" if hurts
                   else "kept: not shown harmless")
        out.append(f"| {r.component} | {e.mean:+.4f} {interval} | {verdict} |")
    return out


def summary(a: Ablation) -> list[str]:
    """Simplified formula, what was dropped, and the table."""
    dropped = [r.component for r in a.rows if r.dropped]
    if not a.rows:
        return ["ablation of the funnel winner: nothing to remove (one term, every switch off)",
                f"simplified: {a.genome.formula()}"]
    rule = ("a part goes when its 95 % interval reaches zero" if a.margin is None
            else f"a part goes when removing it costs < {a.margin:g} with 95 % confidence")
    return [f"ablation of the funnel winner on {a.runs} paired runs, {a.steps} step(s) ({rule}): "
            + (f"dropped {', '.join(dropped)}" if dropped else "nothing could be dropped"),
            f"simplified: {a.genome.formula()}", *table(a)]


__all__ = ["Ablation", "MARGIN", "Row", "SWITCHES", "components", "harmless", "read", "run", "summary", "table"]

"""Ablation and simplification of the funnel winner: drop every part that does not pay for itself.

An evolved genome carries passengers: terms and switches that rode along with the parts that matter
because selection cannot tell a neutral gene from a useful one. Lion's search simplified its winning
program the same way before using it. Each *step* trains, as one population on the same (task, seed)
units (paired seeds), the current genome and one variant per component:

* each term with a nonzero weight removed (its slots set to ``none``, or the sign gene cleared for
  AddSign/PowerSign; the last term is never removed — a genome without terms does not train);
* each switch set to its neutral value: weight decay off, bias correction off, clipping off, warmup
  off, cosine decay off;
* **the update rule → Adam's** (the recipe — warmup, schedule, clipping — and weight decay kept): does the
  search's rule matter, or is the winner Adam plus a recipe?
* **β1, β2, ε → Adam's defaults**: did the tuned constants matter?

Each variant gets a small lr re-sweep (:data:`LR_SWEEP`, decades) and is scored at its best lr, so a
part is not kept merely because removing it moved the best learning rate.

A variant's *effect* is the mean paired difference variant − current over the units, with its 95 %
paired t-interval. A component can go only when its removal is shown harmless: the one-sided test that
removing it costs less than ``margin`` (default 0.003 fitness, a third of a point of accuracy) rejects
at 2.5 %, **Holm-corrected** over the parts tested in that step (several parts tested at once would
otherwise let one through by luck). "Not shown useful" is not enough: with a few
paired runs the interval of a part worth two points still reaches zero (an earlier rule dropped
warmup and cosine decay on such evidence, and that simplified winner lost to Adam on held-out
tasks; whether because of the drop was not measured). Of the parts
that may go, the one whose removal costs least is dropped, and the next step starts from the smaller
genome, until no remaining part is shown harmless. The first step also trains
the reference (Adam at its best funnel lr) on the same fresh units: the headline's comparison on
seeds that did not pick the winner.

Steps are stored like the funnel (:mod:`.staged`, keys ``ablation:step:N``), so a killed ablation
resumes at its first unfinished unit, and :func:`read` replays the decisions from the stored scores
(an ablation stored before the rule parts, the lr re-sweep and Holm's correction replays by its own rule).
Finally the simplified genome and the unsimplified one are trained on **fresh seeds** (``final_units``),
not those the decisions were made on, and the summary reports simplified − unsimplified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import optuna

from optsearch import stats
from optsearch.genome import FLOAT_RANGES, Genome
from optsearch.search.config import ABLATION_MARGIN
from optsearch.search.staged import RunUnit, Unit, complete_scores, run_stage
from optsearch.stats import Interval, paired_difference

PREFIX = "ablation:step:"
FINAL = "ablation:final"
"""Stage key of the final check: simplified vs unsimplified on fresh seeds."""
MARGIN = ABLATION_MARGIN
"""Default equivalence margin (fitness units): a part may go when removing it costs less than this (95 %)."""
MIN_RUNS = 8
"""Default paired runs per step (the funnel's seeds when more)."""
LR_SWEEP: tuple[float, ...] = (-0.25, 0.0, 0.25)
"""lr offsets (decades) every variant is measured at; it is scored at its best."""
ALPHA = 0.025
"""One-sided level of each "removal costs less than the margin" test (the lower end of a 95 % interval)."""
RULE = "adam"
"""The named genome whose update rule and constants the two rule components put in."""
SWITCHES: tuple[tuple[str, str, Any], ...] = (
    ("weight decay", "weight_decay", False),
    ("bias correction", "bias_correction", False),
    ("clipping", "clip", "none"),
    ("warmup", "warmup", False),
    ("cosine decay", "cosine_decay", False),
)
"""(label, genome field, neutral value) of every switch the ablation tries to turn off."""
RECIPE_SWITCHES = frozenset({"clip", "warmup", "cosine_decay"})
"""The switches that are the training recipe: with a shared recipe (``[search] recipe = "shared"``) they were
never searched, so the ablation does not try them (each would cost a variant per lr of every step)."""


def components(g: Genome, *, rule_parts: bool = True, shared_recipe: bool = False) -> list[tuple[str, Genome]]:
    """(label, g without it) for each removable term, each switch not at its neutral value (the recipe's
    switches only when the recipe was searched, not ``shared_recipe``) and (``rule_parts``) the update rule
    → Adam's and β1, β2, ε → Adam's defaults, where they differ from ``g``'s."""
    out: list[tuple[str, Genome]] = []
    if rule_parts:
        adam = Genome.named(RULE)
        lo, hi, _ = FLOAT_RANGES["lr_log10"]  # Adam at the same step size: α's sum moves into the lr
        scale = math.log10(sum(g.merged_terms().values()) or 1.0)
        rule = replace(adam.with_recipe(g), lr_log10=min(hi, max(lo, g.lr_log10 + scale)),
                       weight_decay=g.weight_decay, wd_log10=g.wd_log10)
        if set(g.merged_terms()) != {"adam"}:  # once the rule is Adam's, never offered again (no cycles)
            out.append(("the update rule → Adam's", rule))
        consts = replace(g, beta1_log1m=adam.beta1_log1m, beta2_log1m=adam.beta2_log1m, eps_log10=adam.eps_log10)
        if consts != g:
            out.append(("β1, β2, ε → Adam's defaults", consts))
    merged = g.merged_terms()
    if len(merged) > 1:
        for term, alpha in merged.items():  # without(): a sign term (AddSign/PowerSign) lives in its own gene
            out.append((f"term {term} (α {alpha:.3g})", g.without(term)))
    for label, name, neutral in SWITCHES:
        if getattr(g, name) != neutral and not (shared_recipe and name in RECIPE_SWITCHES):
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
    final_diff: Interval | None = None
    """simplified − unsimplified on fresh seeds (None: not run, e.g. an ablation stored before it)."""
    holm: bool = False
    """Whether the decisions were Holm-corrected (ablations stored before it were not)."""

    def vs_reference(self) -> Interval | None:
        """The simplified genome − the reference on the ablation's fresh units (paired; None without a reference).

        Every step trains on the same units (same initial weights and data order per unit), so the
        simplified genome's scores from the step that measured it pair with the reference's of step 0."""
        return self.reference_diff


def run(study: optuna.Study, start: Genome, units: Sequence[Unit], run_unit: RunUnit, *,
        reference: Genome | None = None, margin: float = MARGIN, progress: bool = False,
        final_units: Sequence[Unit] = (), shared_recipe: bool = False) -> Ablation:
    """Run (or resume) the ablation of ``start`` on ``units``, then the final check on ``final_units``.

    The margin and the protocol (``shared_recipe``: the recipe's switches are not components) are stored with
    the steps, so :func:`read` replays the decisions that were made; an ablation already started keeps the
    rule it started with."""
    head = study.user_attrs.get(f"{PREFIX}0")
    rule: float | None = head.get("margin") if isinstance(head, dict) else margin
    proto = _protocol(head) if isinstance(head, dict) else {"lr_sweep": list(LR_SWEEP), "rule_parts": True,
                                                              "holm": True, "shared_recipe": shared_recipe,
                                                              "carry": True}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="run", desc="ablation", dynamic_ncols=True)

    def stage(step: int, genomes: list[Genome], has_ref: bool) -> list[list[float]]:
        if bar is not None:
            bar.total = (bar.total or 0) + len(units)
            bar.refresh()
        return run_stage(study, f"{PREFIX}{step}", genomes, units, run_unit,
                         extra={"reference": has_ref, "margin": rule, **proto}, progress=bar)

    try:
        result = _replay(start, reference, rule, stage, proto)
        assert result is not None
        if final_units and result.genome != start:
            if bar is not None:
                bar.total = (bar.total or 0) + len(final_units)
            scores = run_stage(study, FINAL, [result.genome, start], final_units, run_unit, progress=bar)
            result = replace(result, final_diff=paired_difference(scores[0], scores[1]))
    finally:
        if bar is not None:
            bar.close()
    return result


def _protocol(head: dict[str, Any]) -> dict[str, Any]:
    """The stored protocol of an ablation; one stored before the lr re-sweep, rule parts, Holm or carrying
    replays as it ran."""
    return {"lr_sweep": list(head.get("lr_sweep", [0.0])), "rule_parts": bool(head.get("rule_parts", False)),
            "holm": bool(head.get("holm", False)), "shared_recipe": bool(head.get("shared_recipe", False)),
            "carry": bool(head.get("carry", False))}


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

    result = _replay(start, reference, head.get("margin"), stage, _protocol(head))
    final = complete_scores(attrs, FINAL)
    if result is not None and final is not None and final[0]["params"] == [result.genome.to_params(), start.to_params()]:
        result = replace(result, final_diff=paired_difference(final[1][0], final[1][1]))
    return result


def harmless(effect: Interval, margin: float | None) -> bool:
    """May the part behind ``effect`` (variant − genome) go? Its removal costs less than ``margin`` (95 %).

    ``margin`` None: an ablation stored before the margin existed, replayed by its own rule (the
    interval reaches zero)."""
    if not math.isfinite(effect.hi):
        return False
    return effect.hi >= 0 if margin is None else effect.lo >= -margin


def holm_harmless(effects: Sequence[Interval], margin: float, alpha: float = ALPHA) -> list[bool]:
    """Which removals are shown to cost less than ``margin``: one-sided t-tests of H0 "effect ≤ −margin",
    Holm-corrected over ``effects`` (step-down: the i-th smallest p-value against alpha / (k − i))."""
    from scipy.stats import t as student

    pvals = []
    for e in effects:
        if e.n < 2 or not math.isfinite(e.half_width):
            pvals.append(1.0)
            continue
        se = e.half_width / stats.t_quantile(stats.LEVEL, e.n - 1)
        if se == 0:
            pvals.append(0.0 if e.mean > -margin else 1.0)
        else:
            pvals.append(float(student.sf((e.mean + margin) / se, e.n - 1)))
    out = [False] * len(effects)
    for rank, i in enumerate(sorted(range(len(effects)), key=lambda i: pvals[i])):
        if pvals[i] > alpha / (len(effects) - rank):
            break
        out[i] = True
    return out


def _replay(start: Genome, reference: Genome | None, margin: float | None, stage: Any,
            proto: dict[str, Any] | None = None) -> Ablation | None:
    """Step through the ablation; ``stage(step, genomes, has_reference)`` returns their scores (None: not yet).

    With ``carry`` (ablations stored since it), a step after the first does not train again what is known
    on these units: the current genome (measured in the previous step as the variant that was dropped,
    at its lr) and the parts shown to *hurt* — removing them cost more than the margin, the whole interval
    below −margin — which are kept with the row of the step that showed it. Dropping a part shown harmless
    is not expected to make a part that costs more than the margin free, and each such part not tried again
    saves its lr re-sweep's members on every run."""
    proto = proto or {"lr_sweep": [0.0], "rule_parts": False, "holm": False, "shared_recipe": False}
    carry = bool(proto.get("carry", False))
    sweep = [float(o) for o in proto["lr_sweep"]]
    current, rows, step, runs, trained = start, [], 0, 0, 0
    ref_scores: list[float] | None = None
    current_scores: list[float] = []
    hurting: dict[str, Row] = {}  # label -> the row that showed removing it costs more than the margin (carry)
    while True:
        variants = [(label, g) for label, g in components(current, rule_parts=proto["rule_parts"],
                                                          shared_recipe=proto["shared_recipe"]) if label not in hurting]
        if not variants and step > 0:
            break
        has_ref = step == 0 and reference is not None
        known = carry and step > 0  # the current genome's scores on these units are the previous step's
        swept = [_with_offset(g, o) for _, g in variants for o in sweep]
        genomes = [*([] if known else [current]), *swept, *([reference] if has_ref else [])]
        scores = stage(step, genomes, has_ref)
        if scores is None:
            return None
        trained += 1
        if not known:
            current_scores = scores[0]
        first, runs = (0 if known else 1), len(scores[0])
        if has_ref:
            ref_scores = scores[-1]
        effects = []
        for i, (label, _) in enumerate(variants):  # each variant at its best lr of the re-sweep
            rows_i = scores[first + i * len(sweep): first + (i + 1) * len(sweep)]
            b = max(range(len(sweep)), key=lambda k: (sum(rows_i[k]), -abs(sweep[k]), -k))
            effects.append((label, swept[i * len(sweep) + b], paired_difference(rows_i[b], current_scores), rows_i[b]))
        if proto["holm"] and margin is not None:
            ok = holm_harmless([eff for _, _, eff, _ in effects], margin)
        else:
            ok = [harmless(eff, margin) for _, _, eff, _ in effects]
        free = [j for j in range(len(effects)) if ok[j]]
        if not free:
            rows += [Row(label, eff, False, step) for label, _, eff, _ in effects]
            break
        if carry:
            bar = margin if margin is not None else 0.0
            hurting.update({label: Row(label, eff, False, step) for label, _, eff, _ in effects
                            if math.isfinite(eff.hi) and eff.hi < -bar})
        i = max(free, key=lambda j: effects[j][2].mean)  # the part whose removal costs least
        label, smaller, eff, smaller_scores = effects[i]
        rows.append(Row(label, eff, True, step))
        current, current_scores = smaller, smaller_scores
        step += 1
    rows += hurting.values()
    ref_diff = paired_difference(current_scores, ref_scores) if ref_scores is not None else None
    return Ablation(start, current, tuple(rows), trained, ref_diff, runs, margin, holm=bool(proto["holm"]))


def _with_offset(g: Genome, offset: float) -> Genome:
    lo, hi, _ = FLOAT_RANGES["lr_log10"]
    return replace(g, lr_log10=min(hi, max(lo, g.lr_log10 + offset))) if offset else g


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
            else f"a part goes when removing it costs < {a.margin:g} with 95 % confidence"
            + (", Holm-corrected over the parts tested per step, each at its best lr of a small re-sweep"
               if a.holm else ""))
    head = (f"ablation of the funnel winner on {a.runs} paired runs, {a.steps} step(s) ({rule}): "
            + (f"dropped {', '.join(dropped)}" if dropped else "nothing could be dropped"))
    if a.final_diff is not None and math.isfinite(a.final_diff.half_width):
        head += (f"; on {a.final_diff.n} fresh runs simplified − unsimplified {a.final_diff.fmt(digits=4, signed=True)} "
                 f"(95 % paired t-interval)")
    elif dropped:
        head += "; simplified vs unsimplified not checked on fresh runs"
    return [head, f"simplified: {a.genome.formula()}", *table(a)]


__all__ = ["Ablation", "LR_SWEEP", "MARGIN", "MIN_RUNS", "RECIPE_SWITCHES", "Row", "SWITCHES", "components", "harmless", "holm_harmless",
           "read", "run", "summary", "table"]

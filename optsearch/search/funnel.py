"""The funnel: the best genomes of the search, re-measured on larger meta-validation tasks with fresh seeds.

The search's best trial is the maximum of many noisy draws on cheap proxies; a rule that wins there
need not win on the tasks it is meant for. So, as Lion's search did, the top ``k`` distinct genomes
(ranked by their told value, already the mean over their evaluations) are trained again on the
``[funnel]`` tasks — larger than the proxies: more steps, CNNs, more data — on validation splits, with
``seeds`` fresh seeds and a short learning-rate sweep (each genome's lr × 10^offset, offsets
``lr_sweep``; with ``cosine_sweep`` each of them also with cosine decay switched the other way).
Candidates are the ``k`` best canonical genomes by the mean over all their measurements, pruned ones
included (:func:`optsearch.search.noise.genome_means`). Each genome scores the mean fitness of its best
variant; the best of them is the **funnel winner**, the study's answer (:func:`study_winner`).

The reference of the headline is **Adam with the winner's recipe** (warmup, schedule, clipping), swept
like the candidates on the same units, so "winner − Adam" measures the update rule, not the recipe. A
sweep whose best lies at an end — the winner's or the reference's — is extended :data:`EXTEND` decades at
a time (within the genome's lr range) until its best is interior, each extension a stage of its own.

A round runs at the end of ``study run`` (and every ``every`` generations when configured). Its
seeds come from (study seed, round) and never equal a search unit seed. Results are stored per unit
(:mod:`.staged`), so a killed funnel resumes at its first unfinished unit. After the final round the
winner is simplified by :mod:`.ablation`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial

from optsearch.genome import Genome
from optsearch.search import ablation
from optsearch.search.config import StudyConfig
from optsearch.search.generations import best_trials, completed_generations
from optsearch.search.noise import genome_means, unit_seeds
from optsearch.search.note import write_note_section
from optsearch.search.funnel_sweep import (EXTEND, PREFIX, REFERENCE, Entry, extended, next_offset, reference_entry,
                                           reference_genome, schedules, stage_key, variant, with_lr_offset)
from optsearch.search.staged import Unit, complete_scores, evaluator_unit, run_stage
from optsearch.stats import Interval, paired_difference, verdict



def round_key(generation: int) -> str:
    return f"{PREFIX}{generation}"


def fresh_seeds(cfg: StudyConfig, tag: str, n: int) -> list[int]:
    """``n`` seeds derived from (study seed, tag), none of them a search unit seed of any generation."""
    taken = {s for g in range(cfg.generations) for s in unit_seeds(cfg, g)}
    out: list[int] = []
    i = 0
    while len(out) < n:
        digest = hashlib.sha256(f"optsearch-{tag}/{cfg.seed}/{i}".encode()).digest()
        s = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
        if s not in taken and s not in out:
            out.append(s)
        i += 1
    return out


def units_for(cfg: StudyConfig, tag: str, n_seeds: int | None = None) -> list[Unit]:
    seeds = fresh_seeds(cfg, tag, n_seeds or cfg.funnel.seeds)
    return [(task, s) for s in seeds for task in cfg.funnel.tasks]


def candidates(study: optuna.Study, k: int) -> list[tuple[FrozenTrial, float]]:
    """The ``k`` best distinct canonical genomes, each as (its newest COMPLETE trial, the mean over all its
    measurements, pruned ones included: :func:`optsearch.search.noise.genome_means`), best first."""
    return [(t, mean) for t, mean, _ in genome_means(study)[:k]]


@dataclass(frozen=True)
class FunnelRound:
    """A finished round: candidates best first, the reference, and the units they were measured on."""

    generation: int
    units: tuple[Unit, ...]
    entries: tuple[Entry, ...]
    reference: Entry | None

    @property
    def winner(self) -> Entry:
        return self.entries[0]

    def vs_reference(self) -> Interval | None:
        if self.reference is None:
            return None
        return paired_difference(self.winner.scores, self.reference.scores)


def read_round(attrs: dict[str, Any], generation: int) -> FunnelRound | None:
    """A finished round from the stored attrs (None if it is missing or unfinished)."""
    got = complete_scores(attrs, round_key(generation))
    if got is None:
        return None
    head, scores = got
    offsets = [float(o) for o in head["offsets"]]
    sweep = bool(head.get("cosine_sweep"))  # rounds stored before the cosine sweep have none
    entries = []
    at = 0
    for c, (name, number, told) in enumerate(zip(head["names"], head["numbers"], head["told"])):
        genome = Genome.from_params(head["base"][c])
        keys = [(o, cos) for cos in schedules(genome, sweep) for o in offsets]
        rows = scores[at:at + len(keys)]
        at += len(keys)
        means = [sum(r) / len(r) for r in rows]
        # ties: the smaller lr change, then the genome's own schedule
        best = max(range(len(keys)), key=lambda i: (means[i], -abs(keys[i][0]), -i))
        offset, cosine = keys[best]
        entries.append(Entry(name, number, told, genome, offset, tuple(rows[best]), cosine,
                             tuple((o, cos, m) for (o, cos), m in zip(keys, means))))
    ref = entries.pop() if head.get("reference") else None  # rounds stored before the recipe-matched reference
    ranked = sorted(range(len(entries)), key=lambda i: -entries[i].mean)  # stable: ties keep the told order
    entries = [entries[i] for i in ranked]
    if head.get("recipe_reference"):
        if not attrs.get(done_key(generation)):
            return None
        entries[0] = extended(attrs, generation, "win", entries[0])
        ref = extended(attrs, generation, "ref", reference_entry(attrs, generation, entries[0]))
    return FunnelRound(int(head["generation"]), tuple((t, int(s)) for t, s in head["units"]), tuple(entries), ref)


def done_key(generation: int) -> str:
    """Set once a round's winner and reference sweeps are interior (or at the lr range's end)."""
    return f"{PREFIX}{generation}:done"


def rounds(study: optuna.Study) -> list[FunnelRound]:
    """The study's finished funnel rounds, oldest first."""
    attrs = study.user_attrs
    gens = sorted(int(k[len(PREFIX):]) for k in attrs if k.startswith(PREFIX) and k[len(PREFIX):].isdigit())
    return [r for r in (read_round(attrs, g) for g in gens) if r is not None]


def final_round(study: optuna.Study) -> FunnelRound | None:
    done = rounds(study)
    return done[-1] if done else None


def run_round(study: optuna.Study, cfg: StudyConfig, generation: int, *, device: str, data_dir: str | None,
              evaluator: Callable[..., Any] | None = None, progress: bool = False) -> FunnelRound:
    """Run (or finish) the round after ``generation`` completed generations."""
    key = round_key(generation)
    head = study.user_attrs.get(key)
    f = cfg.funnel
    if head is None:  # fix the candidates now: later generations must not change a half-run round
        ranked = candidates(study, f.k)
        picked = [t for t, _ in ranked]
        base = [Genome.from_params(t.params).canonical() for t in picked]
        extra = {"generation": generation, "offsets": list(f.lr_sweep), "cosine_sweep": f.cosine_sweep,
                 "base": [g.to_params() for g in base],
                 "names": [f"#{t.number}" for t in picked],
                 "numbers": [t.number for t in picked],
                 "told": [m for _, m in ranked], "recipe_reference": True}
        units = units_for(cfg, f"funnel/{generation}")
    else:
        base = [Genome.from_params(p) for p in head["base"]]
        extra = {k: v for k, v in head.items() if k not in ("params", "units")}
        units = [(t, int(s)) for t, s in head["units"]]
    offsets = [float(o) for o in extra["offsets"]]
    sweep = bool(extra.get("cosine_sweep"))
    genomes = [variant(g, o, cos) for g in base for cos in schedules(g, sweep) for o in offsets]
    run_unit = evaluator_unit(cfg.funnel_spec(device=device, data_dir=data_dir), evaluator=evaluator)
    bar = _bar(progress, len(units), f"funnel after generation {generation}")
    try:
        run_stage(study, key, genomes, units, run_unit, extra=extra, progress=bar)
        if extra.get("recipe_reference"):
            _sweep_to_interior(study, generation, units, run_unit, offsets, bar)
    finally:
        if bar is not None:
            bar.close()
    done = read_round(study.user_attrs, generation)
    assert done is not None
    return done


def _sweep_to_interior(study: optuna.Study, generation: int, units: Sequence[Unit], run_unit: Any,
                       offsets: Sequence[float], bar: Any) -> None:
    """Extend the winner's sweep while its best is an end, then sweep Adam with the winner's recipe likewise.

    Every step is a stage stored per unit (resumable); the round counts as finished only after the last.
    """
    winner = read_round({**study.user_attrs, done_key(generation): True,
                         stage_key(generation, "ref", 0): None}, generation).entries[0]  # type: ignore[union-attr]

    def extend(tag: str, e: Entry, first: int) -> Entry:
        i = first
        while complete_scores(study.user_attrs, stage_key(generation, tag, i)) is not None:  # stored: read in e
            i += 1
        while (nxt := next_offset(e)) is not None:
            run_stage(study, stage_key(generation, tag, i), [variant(e.genome, nxt, e.cosine)], units, run_unit,
                      extra={"offsets": [nxt], "cosine": e.cosine}, progress=bar)
            e = extended(study.user_attrs, generation, tag, e)  # type: ignore[assignment]
            i += 1
        return e

    winner = extend("win", winner, 0)
    ref = reference_genome(winner.tuned)
    run_stage(study, stage_key(generation, "ref", 0), [variant(ref, o, ref.cosine_decay) for o in offsets], units,
              run_unit, extra={"offsets": list(offsets), "base": ref.to_params()}, progress=bar)
    extend("ref", reference_entry(study.user_attrs, generation, winner), 1)  # type: ignore[arg-type]
    study.set_user_attr(done_key(generation), True)


def run_funnels(study: optuna.Study, cfg: StudyConfig, *, device: str, data_dir: str | None,
                evaluator: Callable[..., Any] | None = None, progress: bool = False) -> None:
    """Every round due at the study's current progress, then the winner's ablation once the search ended."""
    if not cfg.funnel.enabled or not best_trials(study, 1):  # nothing completed (every member diverged): no candidates
        return
    done = completed_generations(study, cfg.population)
    due = [g for g in range(cfg.funnel.every, done + 1, cfg.funnel.every)] if cfg.funnel.every else []
    if done >= cfg.generations:
        due.append(cfg.generations)
    for g in dict.fromkeys(due):
        if read_round(study.user_attrs, g) is None:
            run_round(study, cfg, g, device=device, data_dir=data_dir, evaluator=evaluator, progress=progress)
    last = final_round(study)
    if cfg.funnel.ablation and last is not None and last.generation >= cfg.generations:
        run_unit = evaluator_unit(cfg.funnel_spec(device=device, data_dir=data_dir), evaluator=evaluator)
        reference = last.reference.tuned if last.reference is not None else None
        runs = cfg.funnel.ablation_seeds or max(ablation.MIN_RUNS, cfg.funnel.seeds)
        ablation.run(study, last.winner.tuned, units_for(cfg, "ablation", runs), run_unit,
                     reference=reference, margin=cfg.funnel.ablation_margin, progress=progress,
                     final_units=units_for(cfg, "ablation-final", runs), shared_recipe=cfg.recipe == "shared")
    if last is not None:
        write_note_section(study, "funnel", funnel_markdown(study))


def study_winner(study: optuna.Study, *, simplified: bool = True) -> tuple[str, Genome, str] | None:
    """The study's answer: ``(label, genome, source)``, or None when nothing completed.

    ``source`` is ``"simplified"`` (the funnel winner after ablation), ``"funnel"`` (the winner of
    the last funnel round, at its best learning rate) or ``"best trial"`` (no funnel ran, e.g. a
    study made before it: the highest told value).
    """
    last = final_round(study)
    if last is None:
        best = best_trials(study, 1)
        if not best:
            return None
        return f"{study.study_name}#{best[0].number}", Genome.from_params(best[0].params), "best trial"
    w = last.winner
    label = f"{study.study_name}#{w.number}"
    if simplified:
        result = ablation.read(study)
        if result is not None and result.start == w.tuned:
            return f"{label}-simplified", result.genome, "simplified"
    return f"{label}-funnel", w.tuned, "funnel"


def headline(study: optuna.Study) -> list[str]:
    """The run summary's comparison with Adam: with an interval, or no number at all."""
    last = final_round(study)
    if last is None:
        return ["no funnel ran: the best trial is the maximum of many noisy proxy measurements, "
                "so no comparison with Adam is claimed (a [funnel] table in the config confirms a winner)"]
    w = last.winner
    n = len(last.units)
    lines = [f"funnel after generation {last.generation}: {len(last.entries)} genomes × {n} runs "
             f"({', '.join(dict.fromkeys(t for t, _ in last.units))}; {n // max(1, len({t for t, _ in last.units}))} "
             f"fresh seeds, {'lr and cosine' if _cosine_swept(last) else 'lr'} sweep); "
             f"winner trial #{w.number}: mean fitness {w.mean:.4f} "
             f"(told {w.told:.4f} on the proxies)"]
    edge = _sweep_edge(w)
    if edge is not None:
        lines.append(f"the winner did best at the sweep's {edge} lr (×10^{w.offset:+g}): its best lr may lie further "
                     "out, and candidates were compared at a truncated sweep; widen [funnel] lr_sweep")
    ref_edge = _sweep_edge(last.reference) if last.reference is not None else None
    if ref_edge is not None:
        lines.append(f"Adam did best at the sweep's {ref_edge} lr (×10^{last.reference.offset:+g}): the comparison "
                     "below may be with an under-tuned Adam; widen [funnel] lr_sweep")
    fresh = ablation.read(study)
    diff = fresh.vs_reference() if fresh is not None and fresh.start == w.tuned else None
    if diff is not None and math.isfinite(diff.half_width):
        simplified_here = any(r.dropped for r in fresh.rows)  # the parts to drop were chosen on these runs
        lines.append(f"simplified winner − {_ref_label(last)} on {diff.n} fresh runs not used to pick the winner"
                     f"{' (its simplification was chosen on them)' if simplified_here else ''}: "
                     f"{diff.fmt(digits=4, signed=True)} (95 % paired t-interval; "
                     f"{verdict(diff, selected_on_these_runs=simplified_here, reference_at_edge=ref_edge is not None).text('Adam')})")
        return lines
    diff = last.vs_reference()
    if diff is not None and math.isfinite(diff.half_width):
        lines.append(f"winner − {_ref_label(last)} on the funnel's {diff.n} runs: {diff.fmt(digits=4, signed=True)} "
                     f"(95 % paired t-interval; "
                     f"{verdict(diff, selected_on_these_runs=True, reference_at_edge=ref_edge is not None).text('Adam')})")
    else:
        lines.append("no interval for winner − Adam (too few runs): no comparison claimed")
    return lines


def _ref_label(r: FunnelRound) -> str:
    """The reference as the headline names it: recipe-matched in rounds that ran it so."""
    if r.reference is not None and r.reference.genome.recipe() == r.winner.tuned.recipe():
        return "Adam with the winner's recipe (lr-swept)"
    return "Adam (lr-swept)"


def _sweep_edge(e: Entry) -> str | None:
    """'lowest' or 'highest' when the entry's best lr offset is an end of a sweep of several offsets."""
    offsets = sorted({o for o, _, _ in e.by_variant})
    if len(offsets) < 2 or e.offset not in (offsets[0], offsets[-1]):
        return None
    return "lowest" if e.offset == offsets[0] else "highest"


def _cosine_swept(r: FunnelRound) -> bool:
    return any(len({cos for _, cos, _ in e.by_variant}) > 1 for e in r.entries)


def funnel_table(r: FunnelRound) -> list[str]:
    """The round's candidates as text rows, best first."""
    rows = [f"funnel after generation {r.generation}: mean validation fitness at each genome's best lr "
            f"{'and schedule ' if _cosine_swept(r) else ''}"
            f"over {len(r.units)} runs", "  rank  genome     told     funnel   lr offset  formula"]
    for i, e in enumerate([*r.entries, *([r.reference] if r.reference else [])]):
        rank = f"{i + 1:>4}" if i < len(r.entries) else " ref"
        told = f"{e.told:.4f}" if e.told is not None else "   —  "
        rows.append(f"  {rank}  {e.name:<9} {told:<8} {e.mean:.4f}   {e.offset:+.1f}       {e.tuned.formula()}")
    return rows


def funnel_markdown(study: optuna.Study) -> str:
    """The funnel, the headline and the ablation as Markdown (the dashboard note and the analysis report)."""
    last = final_round(study)
    if last is None:
        return ""
    lines = ["## The funnel: the study's answer", "", *(f"- {h}" for h in headline(study)), "", "```",
             *funnel_table(last), "```", ""]
    done = ablation.read(study)
    if done is not None and done.start == last.winner.tuned:
        head, simplified, *table = ablation.summary(done)  # table: Markdown rows (none when nothing was removable)
        lines += ["### Ablation of the winner", "", head, "", f"`{simplified.removeprefix('simplified: ')}`", "",
                  *table, ""]
    winner = study_winner(study)
    if winner is not None:
        lines.append(f"`export` writes **{winner[0]}** ({winner[2]}): `{winner[1].formula()}`")
    return "\n".join(lines) + "\n"


def _bar(progress: bool, total: int, desc: str) -> Any:
    if not progress or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc=desc, dynamic_ncols=True)


__all__ = ["EXTEND", "Entry", "FunnelRound", "REFERENCE", "candidates", "final_round", "fresh_seeds", "funnel_markdown", "funnel_table",
           "headline", "read_round", "round_key", "rounds", "run_funnels", "run_round", "schedules", "study_winner",
           "variant", "with_lr_offset"]

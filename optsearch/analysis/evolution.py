"""The search itself as data: who bred whom, what each generation held, and what the winner is made of.

The importance and principle analyses look only at the finished, non-diverged trials of one
objective. A researcher watching an evolutionary search also wants the search's own story: the
family tree of the best genome (the GA sampler stores each child's parent trial numbers and the
operator that made it), the fitness distribution of every generation with its pruned and diverged
members, which primitives and switches the population carries, the Pareto front of each generation
of a per-task study, and the winner's terms. This module reads all of that straight from the study's
trials (every state, so nothing is hidden); :mod:`optsearch.analysis.evolution_figures` draws it.
It needs no minimum number of trials, so the dashboard can draw it from the first generation on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import optuna

from optsearch.analysis.data import trial_generation
from optsearch.analysis.importance import PRIMS, SWITCHES
from optsearch.analysis.principles import departs, departures, departure_label
from optsearch.errors import GenomeError, OptsearchError
from optsearch.genome import Genome, search_space, upgrade_params
from optsearch.search.funnel import final_round
from optsearch.search.generations import best_trials, fitness_values, outcome

ORIGIN_ATTR = "GeneticSampler:origin"
PARENTS_ATTR = "GeneticSampler:parents"
MEMBER_ATTR = "GeneticSampler:member"
STATES = ("complete", "pruned", "diverged", "failed", "running")
SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class Member:
    """One trial of the search, as the search figures need it.

    Attributes:
        number: the trial number.
        generation, member: its slot (member is -1 when the sampler did not record one).
        state: one of :data:`STATES` (a diverged trial is "diverged" whatever Optuna's state).
        fitness: the aggregate fitness (a per-task study's mean over its values) of a complete
            member, else None.
        values: the raw fitness values of a complete member (empty otherwise; a ``+memory`` study's
            optimizer state is no fitness: it is ``genome.state_floats()``).
        origin: how it was made: "seed:NAME", "random", "elite", "crossover", "mutation", … ("" if unknown).
        parents: parent trial numbers as the sampler stored them.
        genome: its genome (None for a trial that never got parameters).
    """

    number: int
    generation: int
    member: int
    state: str
    fitness: float | None
    values: tuple[float, ...]
    origin: str
    parents: list[int]
    genome: Genome | None

    @property
    def formula(self) -> str:
        return self.genome.formula() if self.genome is not None else "(no genome)"


def read_members(study: optuna.Study) -> list[Member]:
    """Every trial with a generation, in trial order (trials the sampler never placed are left out)."""
    names = set(search_space())
    out = []
    for t in study.get_trials(deepcopy=False):
        gen = trial_generation(t)
        if gen is None:
            continue
        genome = None
        if names <= set(upgrade_params(t.params)):  # an old trial lacks later genes, or stores β itself
            try:
                genome = Genome.from_params(t.params)
            except GenomeError:
                genome = None
        state = outcome(t)
        values = tuple(float(v) for v in fitness_values(t)) if state == "complete" else ()
        fitness = float(np.mean(values)) if values and all(math.isfinite(v) for v in values) else None
        if fitness is None and state == "complete":
            state = "failed"  # a COMPLETE trial without a finite value cannot be drawn or ranked
        out.append(Member(t.number, gen, int(t.system_attrs.get(MEMBER_ATTR, -1)), state, fitness, values,
                          str(t.system_attrs.get(ORIGIN_ATTR, "")), [int(p) for p in t.system_attrs.get(PARENTS_ATTR) or []],
                          genome))
    return out


def best_member(members: Sequence[Member]) -> Member | None:
    """The complete member of highest aggregate fitness (the earliest on ties), or None."""
    done = [m for m in members if m.fitness is not None]
    return max(done, key=lambda m: (m.fitness, -m.number)) if done else None


# ----------------------------------------------------------------------------- lineage
@dataclass
class Lineage:
    """The family tree of some members: every ancestor reachable through stored parents.

    Attributes:
        roots: the members whose ancestry is drawn (e.g. the best one).
        nodes: trial number -> member, the roots and all their ancestors.
        edges: (parent number, child number, the child's origin) for every stored parent link among nodes.
        missing: parent numbers a node names that are not in the study (never expected; counted, not hidden).
    """

    roots: list[int]
    nodes: dict[int, Member]
    edges: list[tuple[int, int, str]]
    missing: set[int] = field(default_factory=set)


def lineage(members: Sequence[Member], roots: Sequence[int] | None = None) -> Lineage:
    """The ancestry of ``roots`` (trial numbers; default: the best member)."""
    by_number = {m.number: m for m in members}
    if roots is None:
        best = best_member(members)
        roots = [best.number] if best is not None else []
    nodes: dict[int, Member] = {}
    edges: list[tuple[int, int, str]] = []
    missing: set[int] = set()
    todo = [r for r in roots if r in by_number]
    while todo:
        n = todo.pop()
        if n in nodes:
            continue
        nodes[n] = m = by_number[n]
        for p in m.parents:
            if p in by_number:
                edges.append((p, n, m.origin))
                todo.append(p)
            else:
                missing.add(p)
    edges.sort(key=lambda e: (e[1], e[0]))
    return Lineage(list(roots), dict(sorted(nodes.items())), edges, missing)


# ----------------------------------------------------------------------------- generations
def main_line(lin: Lineage) -> list[int]:
    """The roots and, from each, the chain of fitter parents back to a founder: the lineage's main line."""
    parents: dict[int, list[int]] = {}
    for p, c, _ in lin.edges:
        parents.setdefault(c, []).append(p)
    line: list[int] = []
    for node in lin.roots:
        while node in lin.nodes and node not in line:
            line.append(node)
            up = [n for n in parents.get(node, []) if n in lin.nodes]
            fitness = {n: lin.nodes[n].fitness for n in up}
            node = max(up, key=lambda n: (fitness[n] if fitness[n] is not None else -math.inf, -n)) if up else None
    return line


@dataclass
class Generations:
    """Per generation (``generation[i]``): fitness of the complete members, outcome counts, carried units.

    Attributes:
        fitness: the aggregate fitness of each generation's complete members.
        counts: state -> count per generation (every state of :data:`STATES`).
        best, best_so_far: best complete fitness of each generation and the running maximum (NaN before any).
        terms: primitive -> fraction of members (with a genome) that carry the primitive.
        switches: switch -> fraction of members departing from Adam's setting.
    """

    generation: np.ndarray
    fitness: list[np.ndarray]
    counts: dict[str, np.ndarray]
    best: np.ndarray
    best_so_far: np.ndarray
    terms: dict[str, np.ndarray]
    switches: dict[str, np.ndarray]


def generations(members: Sequence[Member]) -> Generations:
    """Summarise the members generation by generation (see :class:`Generations`)."""
    gens = np.array(sorted({m.generation for m in members}), dtype=int)
    by_gen = {g: [m for m in members if m.generation == g] for g in gens}
    fitness = [np.array([m.fitness for m in by_gen[g] if m.fitness is not None], dtype=float) for g in gens]
    counts = {s: np.array([sum(m.state == s for m in by_gen[g]) for g in gens], dtype=int) for s in STATES}
    best = np.array([f.max() if len(f) else np.nan for f in fitness])
    so_far = np.fmax.accumulate(best) if len(best) else best
    terms: dict[str, np.ndarray] = {}
    switches: dict[str, np.ndarray] = {}
    genomes = {g: [m.genome for m in by_gen[g] if m.genome is not None] for g in gens}
    share = {g: departures(genomes[g]) for g in gens if genomes[g]}
    for key in (*PRIMS, *SWITCHES):
        freq = np.array([share[g][key].mean() if genomes[g] else 0.0 for g in gens])
        (terms if key in PRIMS else switches)[key] = freq
    return Generations(gens, fitness, counts, best, so_far, terms, switches)


def switch_name(key: str) -> str:
    """A switch's departure from Adam's setting in words; a primitive's own name."""
    return key if key in PRIMS else departure_label(key)


# ----------------------------------------------------------------------------- Pareto fronts
def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``values`` (every column maximized)."""
    n = len(values)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if mask[i]:
            dominated = np.all(values <= values[i], axis=1) & np.any(values < values[i], axis=1)
            mask[dominated] = False
    return mask


def fronts_by_generation(members: Sequence[Member]) -> dict[int, list[Member]]:
    """Per generation, the complete members no other member of that generation dominates (all objectives)."""
    out: dict[int, list[Member]] = {}
    for g in sorted({m.generation for m in members}):
        done = [m for m in members if m.generation == g and m.values]
        if done:
            mask = pareto_mask(np.array([m.values for m in done]))
            out[g] = [m for m, keep in zip(done, mask) if keep]
    return out


def memory_front(members: Sequence[Member]) -> list[Member]:
    """The accuracy–memory Pareto front over the whole study: the complete members that no other beats on
    fitness without needing more optimizer state (:meth:`Genome.state_floats`), fewest floats first."""
    done = [m for m in members if m.fitness is not None and m.genome is not None]
    if not done:
        return []
    mask = pareto_mask(np.array([(m.fitness, -m.genome.state_floats()) for m in done]))
    return sorted((m for m, keep in zip(done, mask) if keep), key=lambda m: (m.genome.state_floats(), -m.fitness))


# ----------------------------------------------------------------------------- the winner
@dataclass
class Anatomy:
    """The winner's parts and what the study says about each.

    Attributes:
        winner: the best complete member.
        parts: (part, weight, association, n_with, n_without) for each of the winner's terms (weight Σα)
            and each switch where it departs from Adam (weight None). ``association`` is the mean fitness
            of the study's complete members having that part minus those without it (None when one side
            is empty): an association within what the search sampled, not an ablation.
        curves: the stored checkpoint values of the winner and the Adam seed, one :class:`Curve` per
            (genome, task, seed), so a figure draws each task in its own panel; empty when the study stored
            none (the run loop reports them only with one objective) or its checkpoint layout is unknown.
    """

    winner: Member
    parts: list[tuple[str, float | None, float | None, int, int]]
    curves: list[Curve]


@dataclass(frozen=True)
class Curve:
    """One genome's fitness estimate at the checkpoints of one (task, seed) unit of its generation."""

    label: str
    task: str
    seed: int
    """Position of the seed in the study's ``seeds``."""
    steps: list[int]
    """Training steps within the unit."""
    values: list[float]


def checkpoint_layout(study: optuna.Study) -> list[tuple[str, int, int]] | None:
    """(task, seed position, training step) of each reported checkpoint, in reporting order; None without a config.

    The run loop reports one intermediate value per checkpoint and numbers them across a trial's units
    (``for seed: for task``, :func:`optsearch.train.evaluate.evaluate`'s order), every ``checkpoint_every``
    steps and at each unit's end, so step *k* of a trial is the *k*-th entry here: one line across
    them would join different tasks' checkpoints."""
    from optsearch.search.config import StudyConfig
    from optsearch.search.storage import CONFIG_ATTR
    from optsearch.train.tasks import get_task

    raw = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(raw, dict):
        return None
    try:
        cfg = StudyConfig.from_dict(raw, where="stored config", stored=True)
    except OptsearchError:
        return None
    out = []
    for k in range(len(cfg.seeds)):
        for task in cfg.tasks:
            steps = cfg.steps or get_task(task).steps
            every = cfg.checkpoint_every
            out += [(task, k, s) for s in (list(range(every, steps, every)) if every else []) + [steps]]
    return out


def winner_member(study: optuna.Study, members: Sequence[Member]) -> Member | None:
    """The funnel winner's trial when a funnel round ran (the study's confirmed answer), else the study's best
    trial as every ranking takes it (:func:`~optsearch.search.generations.best_trials`: less its generation's
    control in a study with controls), else the best member."""
    last = final_round(study)
    number = last.winner.number if last is not None else next((t.number for t in best_trials(study, 1)), None)
    found = next((m for m in members if m.number == number), None)
    return found or best_member(members)


def winner_lineage(study: optuna.Study, members: Sequence[Member]) -> Lineage:
    """The family tree of the study's winner (:func:`winner_member`)."""
    win = winner_member(study, members)
    return lineage(members, [win.number] if win is not None else [])


def anatomy(study: optuna.Study, members: Sequence[Member]) -> Anatomy | None:
    """The winner's terms and departing switches with their association, and stored training curves.

    The winner is the funnel's (see :func:`winner_member`): the proxy maximum is one lucky draw.
    """
    win = winner_member(study, members)
    if win is None or win.genome is None:
        return None
    done = [m for m in members if m.fitness is not None and m.genome is not None]
    fit = np.array([m.fitness for m in done])
    genomes = [m.genome for m in done]
    parts = []
    keys = [(k, w) for k, w in win.genome.merged_terms().items()]
    keys += [(s, None) for s in SWITCHES if departs([win.genome], s)[0]]
    for key, weight in keys:
        has = departs(genomes, key)
        assoc = float(fit[has].mean() - fit[~has].mean()) if has.any() and (~has).any() else None
        parts.append((key if key in PRIMS else departure_label(key), weight, assoc, int(has.sum()), int((~has).sum())))
    adam = next((m for m in members if m.origin == "seed:adam" and m.generation == 0), None)
    wanted = [(f"winner #{win.number}", win.number)] + ([(f"Adam seed #{adam.number} (untuned)", adam.number)]
                                                         if adam else [])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    layout = checkpoint_layout(study)
    curves: list[Curve] = []
    for label, n in wanted:
        iv = trials[n].intermediate_values
        if not iv or layout is None or max(iv) >= len(layout):  # a layout that does not fit: draw nothing
            continue
        units: dict[tuple[str, int], tuple[list[int], list[float]]] = {}
        for k in sorted(iv):
            task, seed, step = layout[k]
            xs, ys = units.setdefault((task, seed), ([], []))
            xs.append(step)
            ys.append(float(iv[k]))
        curves += [Curve(label, task, seed, xs, ys) for (task, seed), (xs, ys) in units.items()]
    return Anatomy(win, parts, curves)


# ----------------------------------------------------------------------------- text
def sparkline(values: Sequence[float]) -> str:
    """One block character per value, scaled from the smallest (▁) to the largest (█); NaN is a space."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    if not ok.any():
        return " " * len(v)
    lo, hi = v[ok].min(), v[ok].max()
    idx = np.zeros(len(v), dtype=int) if hi == lo else np.round((v - lo) / (hi - lo) * (len(SPARK) - 1))
    return "".join(SPARK[int(i)] if k else " " for i, k in zip(np.nan_to_num(idx), ok))


def generation_summary_text(study: optuna.Study, *, members: Sequence[Member] | None = None) -> str:
    """A few terminal lines: best fitness per generation as a sparkline, outcome counts, the winner's line.

    For people on a remote machine without a browser (``study show`` prints it). A per-task study's
    fitness is the mean over its objectives, as in the rest of the search figures.
    """
    members = read_members(study) if members is None else members
    if not members:
        return "no generations yet"
    gs = generations(members)
    g0, g1 = int(gs.generation[0]), int(gs.generation[-1])
    ok = np.isfinite(gs.best)
    lines = [f"generations {g0}–{g1}: best fitness per generation (▁ lowest … █ highest)"]
    if ok.any():
        lines.append(f"  best      {sparkline(gs.best)}  {gs.best[ok][0]:.4f} → {gs.best[ok][-1]:.4f} "
                     f"(best so far {np.nanmax(gs.best):.4f})")
    if len(gs.generation) <= 30:
        width = max(2, *(len(str(int(c))) for s in STATES for c in gs.counts[s]))
        lines.append("  generation " + " ".join(f"{int(g):>{width}}" for g in gs.generation))
        for s in ("complete", "pruned", "diverged", "failed"):
            if gs.counts[s].any() or s in ("pruned", "diverged"):
                lines.append(f"  {s:<10} " + " ".join(f"{int(c):>{width}}" for c in gs.counts[s]))
    else:
        for s in ("pruned", "diverged", "failed"):
            lines.append(f"  {s:<9} {sparkline(gs.counts[s])}  {int(gs.counts[s].sum()):,} in all")
    running = int(gs.counts["running"].sum())
    if running:
        lines.append(f"  {running} running")
    return "\n".join(lines)


__all__ = ["Anatomy", "Curve", "checkpoint_layout", "Generations", "Lineage", "Member", "anatomy", "best_member", "fronts_by_generation", "main_line", "memory_front",
           "generation_summary_text", "generations", "lineage", "pareto_mask", "read_members", "sparkline",
           "winner_lineage", "winner_member"]

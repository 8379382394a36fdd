"""The analysis of a study, written out: report.md, principles.json, PNG figures and the dashboard note.

``analyze_study`` reads a (finished or running) study, picks one objective (the aggregate fitness,
a task's fitness, or the mean of a per-task study's values), and writes ``report.md``,
``principles.json`` and PNG figures to an output folder. The same note and interactive figures go
into the study itself for optuna-dashboard, replacing those of an earlier run.

The stages are public so the scripts in ``analysis/`` (and a researcher) can run them one by one:
:func:`optsearch.analysis.data.load_study_data` → :func:`optsearch.analysis.result.analyze` (importance,
then principles) → :func:`optsearch.analysis.figures.write_figures` / :func:`report_markdown`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from optsearch.errors import OptsearchError
from optsearch.analysis.data import StudyData, load_study_data
from optsearch.analysis.evolution import (
    Member, anatomy, fronts_by_generation, generation_summary_text, memory_front, winner_lineage,
)
from optsearch.analysis.evolution_figures import NO_CURVES, save_search_figures, write_search_figures
from optsearch.analysis.child import in_child
from optsearch.analysis.figures import plotly_figures, write_figures
from optsearch.analysis.importance import METHODS, Importance, unit_label
from optsearch.analysis.principles import ALPHA, CORRECTION, N_BOOT, pct
from optsearch.analysis.result import Analysis, analyze
from optsearch.search.config import MEMORY_OBJECTIVE


# ----------------------------------------------------------------------------- the whole analysis
def analyze_study(name: str, storage: str | None = None, objective: str | None = None,
                  out_dir: str | Path | None = None, *, dashboard: bool = True, seed: int = 0) -> str:
    """Analyse a study, write report.md, principles.json and figures, save them for the dashboard.

    Args:
        name: the study.
        storage: storage URL (default ``$OPTSEARCH_STORAGE``, else ``sqlite:///studies/optsearch.db``).
        objective: a task name for per-task objectives (default: the aggregate fitness).
        out_dir: output folder (default ``reports/NAME``).
        dashboard: also save the note and figures into the study for optuna-dashboard.
        seed: seeds fANOVA, the forest, the folds and every bootstrap.

    Returns:
        A few lines to print, naming the output folder.
    """
    data = load_study_data(name, storage, objective)
    result = analyze(data, seed=seed)
    out = output_dir(name, out_dir)
    ids: list[str] = []
    files = write_outputs(result, out, meanwhile=(lambda: ids.extend(save_to_dashboard(result))) if dashboard else None)
    lines = [summary_text(result), f"wrote {out}: {', '.join(p.name for p in files)}"]
    if dashboard:
        lines.append(f"saved the analysis note and {len(ids)} figures into the study for optuna-dashboard "
                     f"(python -m optsearch dashboard {name})")
    return "\n".join(lines)


def write_outputs(result: Analysis, out: Path, *, meanwhile: Callable[[], Any] | None = None) -> list[Path]:
    """report.md, principles.json and the PNG figures in ``out``; returns the files written.

    A forked child draws the analysis's PNGs while this process draws the search's and then runs
    ``meanwhile`` (:func:`analyze_study` saves the dashboard's note and figures there: the child's share is the
    longer one).
    """
    import matplotlib.backends.backend_agg  # noqa: F401  imported once, before the fork, not in both processes
    import matplotlib.figure  # noqa: F401

    pending = in_child(write_figures, result, out)  # the analysis's PNGs on the other core
    members = result.members
    search_pngs = write_search_figures(result.data.study, out, members)
    if meanwhile is not None:
        meanwhile()
    pngs = pending()
    js = write_json(result.to_dict(), out / "principles.json")
    text = report_markdown(result, [p.name for p in pngs]) + search_markdown(result.data.study, members,
                                                                             [p.name for p in search_pngs])
    (out / "report.md").write_text(text, encoding="utf-8")
    return [out / "report.md", js, *pngs, *search_pngs]


def write_json(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=_jsonable) + "\n", encoding="utf-8")
    return path


def output_dir(name: str, out_dir: str | Path | None) -> Path:
    """The output folder: the given one, else ``reports/NAME``."""
    return Path(out_dir) if out_dir else Path("reports") / name


def script_main(description: str, body: Callable[[argparse.Namespace], str], argv: Sequence[str] | None = None) -> int:
    """The shared front of the scripts in ``analysis/``: ``NAME [--storage URL] [--objective T] [-o DIR]``.

    Errors a user can cause print one line and exit 2, as in the CLI.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("name", help="the study")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/optsearch.db)")
    p.add_argument("--objective", help="a task name for per-task objectives (default: the aggregate)")
    p.add_argument("-o", "--output", help="output folder (default: reports/NAME)")
    p.add_argument("--seed", type=int, default=0, help="seed of fANOVA, the forest and the bootstraps (default 0)")
    args = p.parse_args(argv)
    try:
        print(body(args))
    except OptsearchError as e:
        print(f"optsearch: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)


# ----------------------------------------------------------------------------- text
def _counts_line(d: StudyData) -> str:
    c = d.counts
    return (f"{c['complete']:,} completed trials analysed; {c['diverged']:,} diverged (excluded from fitness effects, "
            f"their rates reported separately); {c['pruned']:,} pruned and {c['failed']:,} failed (no final value); "
            f"{c['running']:,} running")


def top_importances(imp: Importance, method: str, k: int = 5) -> str:
    """``lr_log10 0.92, wd_log10 0.03, …``: one method's top ``k`` units with their scores."""
    scores = imp.scores()[method]
    return ", ".join(f"{u} {scores[u]:.2f}" for u in sorted(scores, key=lambda u: -scores[u])[:k])


def correction_text(result: Analysis) -> str:
    """How the principles were corrected for multiple testing, in a few words."""
    return f"{CORRECTION}-corrected over {result.tests} tests, family-wise error {pct(ALPHA)}"


def summary_text(result: Analysis) -> str:
    """The terminal summary: counts, the three importance methods and where they agree, the principles."""
    d, imp = result.data, result.importance
    s = imp.surrogate
    est = [p for p in result.principles if p.established and p.kind != "divergence"]
    tested = [p for p in result.principles if p.kind != "divergence"]
    name = {"PED-ANOVA": "PED-ANOVA", "fANOVA": "fANOVA", "forest": f"forest (CV R² {s.r2:.2f}: {s.verdict()})"}
    lines = [f"study {d.name!r} ({d.label}): {_counts_line(d)}", "importance, top 5 by each method:"]
    lines += [f"  {name[m]}: {top_importances(imp, m)}" for m in METHODS]
    lines += [f"  {imp.agreement().text()}",
              f"{len(est)} of {len(tested)} principles established ({correction_text(result)}) in {result.seconds:.1f} s"]
    for p in sorted(est, key=lambda p: -abs(p.effect or 0))[:3]:
        lines.append(f"  {p.sentence}")
    return "\n".join(lines)


def importance_table(imp: Importance) -> list[str]:
    """The importance of every unit by the three methods with its rank by each, as Markdown table rows
    (consensus order: mean rank over the methods)."""
    fa, sp = imp.fanova, imp.surrogate.importance
    ag = imp.agreement()
    rows = ["| unit | PED-ANOVA | fANOVA (mean ± sd, 3 seeds) | forest: R² lost when permuted (± sd) | "
            f"rank by {' / '.join(METHODS)} |", "|---|---:|---:|---:|---:|"]
    for u in ag.consensus():
        f = f"{fa[u][0]:.3f} ± {fa[u][1]:.3f}" if u in fa else "–"
        p = f"{sp[u][0]:.3f} ± {sp[u][1]:.3f}" if u in sp else "–"
        name = f"**{unit_label(u)}**" if u in ag.agreed else unit_label(u)
        rows.append(f"| {name} | {imp.ped_anova[u]:.3f} | {f} | {p} | {ag.rank_text(u)} |")
    return rows


def agreement_markdown(imp: Importance) -> str:
    """The methods' agreement in a sentence: rank correlations, top-k overlaps, agreed and disputed units."""
    ag = imp.agreement()
    overlap = ", ".join(f"{pair} {n} of {ag.k}" for pair, n in ag.overlap.items())
    return (f"**Agreement of the three methods**: {ag.text()}. Top-{ag.k} overlap: {overlap}. Units in bold are in "
            f"the top {ag.k} of all three; trust those, and read a unit that only one method ranks high as that "
            "method's view (PED-ANOVA looks at where the best trials sit; fANOVA and the forest at the variance of the "
            "whole fitness surface).")


def principles_markdown(result: Analysis, *, images: Sequence[str] = ()) -> str:
    """The body shared by report.md and the dashboard note."""
    d, imp = result.data, result.importance
    s = imp.surrogate
    best = int(np.argmax(d.y))
    ps = result.principles
    sec = lambda kind: [p for p in ps if p.kind == kind]  # noqa: E731
    n_ci = sum(p.ci is not None for p in ps)
    n_borderline = sum(not p.established and p.ci is not None and (p.ci[0] > 0 or p.ci[1] < 0) for p in ps)
    lines = [
        f"Objective: **{d.label}**. {_counts_line(d)}.",
        "",
        f"Best analysed trial: #{d.numbers[best]} (generation {d.generation[best]}), {d.label} {d.y[best]:.4f}: "
        f"`{d.genomes[best].formula()}`",
        "",
        "## Importance",
        "",
        "Units are genes, switches and primitives (for the Optuna evaluators, whether a primitive is present in any "
        "slot; for the forest, its presence and total weight Σα over the slots together, since slot order is "
        f"arbitrary). The forest surrogate has cross-validated R² = {s.r2:.2f} ± {np.std(s.cv_r2):.2f} "
        f"({len(s.cv_r2)} folds) and out-of-bag R² = {s.oob_r2:.2f}: it {s.verdict()}.",
        "",
        *importance_table(imp),
        "",
        agreement_markdown(imp),
        "",
        "PED-ANOVA over the raw Optuna parameters (what the dashboard's own importance view shows): "
        + ", ".join(f"{k} {v:.3f}" for k, v in list(imp.raw_ped_anova.items())[:8]) + ".",
        "",
    ]
    for img in images:
        if img.startswith("importance"):
            lines += [f"![importance]({img})", ""]
    for title, kind in (("Switches", "switch"), ("Primitives", "primitive"), ("Continuous genes", "continuous"),
                        ("Divergence (reported separately)", "divergence")):
        group = sec(kind)
        if not group:
            continue
        lines += [f"## {title}", ""]
        est = [p for p in group if p.established]
        rest = [p for p in group if not p.established]
        lines += [f"- **{p.sentence}**" for p in est] + [f"- {p.sentence}" for p in rest] + [""]
    lines += [
        "## Method",
        "",
        "Effects are mean differences between trials that depart from the hand-crafted choice (Adam's setting of a "
        "switch; having a primitive) and those that keep it, with seeded bootstrap 95 % percentile intervals "
        f"({N_BOOT:,} resamples); an interval that crosses zero is *not established*. Because {result.tests} tests are "
        f"made, an effect is *established* only when its interval excludes zero and it also survives {CORRECTION}'s "
        f"step-down correction over all {result.tests} (adjusted p ≤ {ALPHA:g}; p from the bootstrap's standard error), "
        f"so the chance that any established principle is a fluke stays under {pct(ALPHA)}; "
        f"{n_borderline} interval(s) exclude zero but do not survive it. Top-quantile effects condition on "
        "the best 25 % of trials. A continuous gene's top-10 % range is found on one random half of the trials and "
        "tested on the other half. Diverged trials are excluded from fitness effects (their fitness is a sentinel) "
        f"and compared by divergence rate instead. Without the correction about {0.05 * n_ci:.0f} of the {n_ci} intervals "
        "would exclude zero by chance; still, trust effects that are large, hold among the top trials too, and agree with "
        "the importances. "
        "Trials of an evolutionary search are not a randomised experiment: a plain difference is an association within "
        "what the search sampled, and selection on fitness biases it (a survivor lacking one good gene tends to carry "
        "another). The effects marked *with the other genes held fixed* correct for that: each is the coefficient of the "
        "departure in one additive regression over the whole genome (indicators for switches and primitives, a "
        "piecewise-linear spline per continuous gene), with bootstrap intervals that resample genomes within each "
        f"generation. Repeated genomes (elites carried over and re-measured) are merged first: the {len(d.y):,} analysed "
        f"trials are {len(result.distinct.y):,} distinct genomes, each one observation (its mean), so the forest's "
        "cross-validation never sees a genome on both sides of a split.",
        "",
    ]
    return "\n".join(lines)


def report_markdown(result: Analysis, images: Sequence[str] = ()) -> str:
    d = result.data
    figs = [f"![{Path(i).stem}]({i})" for i in images if not i.startswith("importance")]
    return (f"# Analysis of study `{d.name}` — {d.label}\n\n" + principles_markdown(result, images=images)
            + ("\n## Figures\n\n" + "\n\n".join(figs) + "\n" if figs else ""))


def search_markdown(study: Any, members: Sequence[Member], images: Sequence[str] = ()) -> str:
    """The search as the report tells it: per-generation summary, lineage, last Pareto front, the winner's parts."""
    if not members:
        return ""
    lines = ["", "## The search", "", "```", generation_summary_text(study, members=members), "```", ""]
    lines += [f"![{Path(i).stem}]({i})" + "\n" for i in images if "generations" in i]
    lin = winner_lineage(study, members)
    if lin.nodes:
        lines += ["### Lineage of the best genome", "", "| trial | generation | made by | parents | fitness | formula |",
                  "|---:|---:|---|---|---:|---|"]
        for m in lin.nodes.values():
            fit = "—" if m.fitness is None else f"{m.fitness:.4f}"
            lines.append(f"| {m.number} | {m.generation} | {m.origin or '?'} | {', '.join(map(str, m.parents)) or '–'} "
                         f"| {fit} | `{m.formula}` |")
        lines += [""] + [f"![{Path(i).stem}]({i})\n" for i in images if "lineage" in i]
    fronts = fronts_by_generation(members)
    if len(study.directions) - (MEMORY_OBJECTIVE in (study.metric_names or [])) > 1 and fronts:  # fitness vs fitness
        last = max(fronts)
        lines += [f"### Pareto front of generation {last}", ""]
        lines += [f"- trial {m.number} ({', '.join(f'{v:.4f}' for v in m.values)}): `{m.formula}`" for m in fronts[last]]
        lines += [""] + [f"![{Path(i).stem}]({i})\n" for i in images if "pareto" in i and "memory" not in i]
    front = memory_front(members)
    if MEMORY_OBJECTIVE in (study.metric_names or []) and front:
        lines += ["### Accuracy–memory Pareto front", "", "| trial | generation | optimizer state (floats/param) | fitness "
                  "| formula |", "|---:|---:|---:|---:|---|"]
        lines += [f"| {m.number} | {m.generation} | {m.genome.state_floats()} | {m.fitness:.4f} | `{m.formula}` |"
                  for m in front]
        lines += [""] + [f"![{Path(i).stem}]({i})\n" for i in images if "pareto_memory" in i]
    an = anatomy(study, members)
    if an is not None:
        lines += [f"### The winner: trial {an.winner.number}", "", f"`{an.winner.formula}`", "",
                  "| part | Σα | mean fitness with − without (association in this study) | with / without |",
                  "|---|---:|---:|---:|"]
        for part, w, assoc, n_with, n_without in an.parts:
            lines.append(f"| {part} | {'–' if w is None else f'{w:.3g}'} | {'–' if assoc is None else f'{assoc:+.4f}'} "
                         f"| {n_with} / {n_without} |")
        lines += ["", "Training curves: " + (", ".join(dict.fromkeys(c.label for c in an.curves)) + " (in the figure, one panel per task)." if an.curves else NO_CURVES + "."),
                  ""] + [f"![{Path(i).stem}]({i})\n" for i in images if "winner" in i]
    from optsearch.search.funnel import funnel_markdown  # the confirmed, simplified answer when a funnel ran

    funnel = funnel_markdown(study)
    return "\n".join(lines + ([funnel] if funnel else []))


# ----------------------------------------------------------------------------- dashboard
def _marker(objective: str, end: bool) -> str:
    # A link reference definition: valid Markdown that renders as nothing, so the markers stay invisible.
    return f"[//]: # (optsearch-analysis-{objective}-{'end' if end else 'begin'})"


def replace_section(note: str, objective: str, body: str) -> str:
    """``note`` with this objective's analysis section replaced (or appended); other text is kept."""
    begin, end = _marker(objective, False), _marker(objective, True)
    section = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(note):
        return pattern.sub(lambda _: section, note, count=1)
    return (note.rstrip() + "\n\n" if note.strip() else "") + section + "\n"


def graph_id(objective: str, figure: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]", "-", objective)
    return f"optsearch-{slug}-{figure}"


def save_to_dashboard(result: Analysis) -> list[str]:
    """Save the note and the interactive figures (the analysis's and the search's) into the study, replacing
    an earlier analysis's.

    The study note is shared (the creation note holds the config), so only this objective's section
    is replaced; figures have fixed ids per objective, so re-running overwrites them.
    """
    from optuna_dashboard import get_note, save_note, save_plotly_graph_object

    d = result.data
    body = f"## optsearch analysis — {d.label}\n\n" + principles_markdown(result)
    save_note(d.study, replace_section(get_note(d.study), d.objective, body))
    ids = []
    for name, fig in plotly_figures(result).items():
        ids.append(save_plotly_graph_object(d.study, fig, graph_object_id=graph_id(d.objective, name)))
    return ids + save_search_figures(d.study, result.members)


__all__ = [
    "Analysis",
    "StudyData",
    "analyze",
    "analyze_study",
    "load_study_data",
    "save_to_dashboard",
    "write_outputs",
]

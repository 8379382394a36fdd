"""Figures of an analysis: matplotlib PNGs for the report and compact plotly ones for optuna-dashboard.

Kept apart from the statistics (:mod:`~optsearch.analysis.result`) and the writing
(:mod:`~optsearch.analysis.report`) so a researcher can restyle a figure without reading either;
every function takes the :class:`~optsearch.analysis.data.StudyData` or
:class:`~optsearch.analysis.result.Analysis` it draws.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from optsearch.analysis.importance import PRIMS, SWITCHES, Importance
from optsearch.analysis.adjusted import SCOPE as ADJUSTED
from optsearch.analysis.data import StudyData
from optsearch.analysis.evolution import pareto_mask
from optsearch.analysis.principles import ALPHA, CORRECTION, TOP_QUANTILE, Principle, departures, departure_label, pct
from optsearch.analysis.result import Analysis


def per_generation(d: StudyData) -> dict[str, np.ndarray]:
    """Best, median and best-so-far of the analysed trials per generation."""
    gens = np.unique(d.generation)
    best = np.array([d.y[d.generation == g].max() for g in gens])
    med = np.array([np.median(d.y[d.generation == g]) for g in gens])
    return {"generation": gens, "best": best, "median": med, "best_so_far": np.maximum.accumulate(best),
            "n": np.array([(d.generation == g).sum() for g in gens])}


def term_frequencies(d: StudyData) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per generation, the fraction of members (every trial with a genome) that has each primitive or
    departs from Adam's setting of each switch."""
    gens = np.array(sorted({g for g, _ in d.population}))
    by_gen = {g: [x for gg, x in d.population if gg == g] for g in gens}
    share = {g: departures(by_gen[g]) for g in gens}
    freq = {k: np.array([share[g][k].mean() for g in gens]) for k in (*PRIMS, *SWITCHES)}
    return gens, freq


def _switch_text(key: str) -> str:
    return key if key in PRIMS else departure_label(key)


def figure(w: float, h: float, rows: int = 1, cols: int = 1, *, margins: dict[str, float] | None = None, **kw: Any):
    """A figure and its grid of axes, for the report's PNGs and the analysis's.

    The object-oriented API renders with Agg and never touches pyplot's global backend. The layout is
    Matplotlib's constrained layout unless ``margins`` (``subplots_adjust``'s fractions) fix it: the constrained
    layout measures every label before drawing, which was half the drawing time of the largest grids.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout=None if margins else "constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    if margins:
        fig.subplots_adjust(**margins)
    return fig, axes


def _integer_x(a: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    a.xaxis.set_major_locator(MaxNLocator(integer=True))


def importance_figure(imp: Importance, title: str):
    """The three methods side by side over the same units (consensus order: mean rank over the methods),
    each method's top 5 in a darker colour, the units all three put in their top 5 in bold, and their
    agreement (Spearman ρ, top-5 overlap, agreed and disputed units) stated under the panels."""
    import textwrap

    ag = imp.agreement()
    units = ag.consensus()[::-1]
    fig, ax = figure(13, 7, 1, 3, sharey=True)
    fa, sp = imp.fanova, imp.surrogate.importance
    panels = (("PED-ANOVA", "PED-ANOVA", [imp.ped_anova[u] for u in units], None),
              ("fANOVA", "fANOVA (mean ± sd, 3 seeds)", [fa.get(u, (0, 0))[0] for u in units],
               [fa.get(u, (0, 0))[1] for u in units]),
              ("forest", f"forest: R² lost when permuted (CV R² {imp.surrogate.r2:.2f})",
               [sp.get(u, (0, 0))[0] for u in units], [sp.get(u, (0, 0))[1] for u in units]))
    for a, (method, name, vals, err) in zip(ax[0], panels):
        colors = ["C0" if ag.ranks[method][u] <= ag.k else "#a6c8e4" for u in units]
        a.barh(range(len(units)), vals, xerr=err, color=colors)
        a.set_title(name, fontsize=10)
        a.set_xlabel("importance")
    ax[0][0].set_yticks(range(len(units)), [u if u not in PRIMS else f"{u} term" for u in units], fontsize=8)
    for label, u in zip(ax[0][0].get_yticklabels(), units):
        if u in ag.agreed:
            label.set_fontweight("bold")
    overlap = ", ".join(f"{pair} {n}/{ag.k}" for pair, n in ag.overlap.items())
    fig.suptitle(f"{title}\nrows: mean rank over the three methods; dark bars: a method's top {ag.k}; "
                 f"bold: in all three top {ag.k}", fontsize=10)
    fig.supxlabel(textwrap.fill(f"Agreement: {ag.text()}; top-{ag.k} overlap {overlap}", 170), fontsize=8)
    return fig


def history_figure(d: StudyData):
    """Best, median and best-so-far per generation over the analysed trials (diverged ones left out)."""
    h = per_generation(d)
    fig, ax = figure(8, 4.5)
    a = ax[0][0]
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(d.y))
    a.scatter(d.generation + jitter, d.y, s=4, color="0.6", alpha=0.5, label="trials")
    a.plot(h["generation"], h["best"], "o-", label="best of generation")
    a.plot(h["generation"], h["median"], "s-", label="median of generation")
    a.plot(h["generation"], h["best_so_far"], "k--", label="best so far")
    a.set_xlabel("generation")
    a.set_ylabel(d.label)
    _integer_x(a)
    a.legend(fontsize=8)
    a.set_title(f"Evolution of {d.name} (not shown: {d.counts['diverged']:,} diverged, {d.counts['pruned']:,} pruned "
                "trials)", fontsize=10)
    return fig


def terms_figure(d: StudyData):
    """Per generation: members holding each primitive, and members departing from Adam's switches."""
    gens, freq = term_frequencies(d)
    fig, ax = figure(12, 4.5, 1, 2)
    for k in PRIMS:
        if freq[k].any():
            ax[0][0].plot(gens, freq[k], marker=".", label=k)
    for k in SWITCHES:
        ax[0][1].plot(gens, freq[k], marker=".", label=_switch_text(k))
    ax[0][0].set_title("members with each primitive", fontsize=10)
    ax[0][1].set_title("members departing from Adam's switch setting", fontsize=10)
    for a in ax[0]:
        a.set_xlabel("generation")
        a.set_ylim(-0.02, 1.02)
        _integer_x(a)
        a.legend(fontsize=7)
    return fig


MAX_PRINCIPLE_ROWS = 30
"""principles.png shows at most this many rows (established first); the report lists every principle."""
_MARKERS = {"all": ("o", "all trials"), "top": ("^", f"top {pct(TOP_QUANTILE)} of trials"),
            "held-out half": ("s", "held-out half (continuous gene's top range)"),
            ADJUSTED: ("D", "other genes held fixed (regression)")}


def _marker(p: Principle) -> str:
    return _MARKERS.get("top" if p.scope.startswith("top ") else p.scope, _MARKERS["all"])[0]


def _excludes_zero(p: Principle) -> bool:
    return p.ci is not None and (p.ci[0] > 0 or p.ci[1] < 0)


def principle_rows(principles: Sequence[Principle], max_rows: int = MAX_PRINCIPLE_ROWS) -> list[Principle]:
    """The fitness effects principles.png draws, top row first: established ones (largest first), then
    those whose interval excluded zero but not after the correction, then the rest by size; at most
    ``max_rows``."""
    rows = [p for p in principles if p.kind in ("switch", "primitive", "continuous") and p.effect is not None]
    return sorted(rows, key=lambda p: (not p.established, not _excludes_zero(p), -abs(p.effect)))[:max_rows]


def principles_figure(principles: Sequence[Principle], label: str, max_rows: int = MAX_PRINCIPLE_ROWS):
    """Forest plot of the fitness effects, established first, with a legend for colours and markers."""
    from matplotlib.lines import Line2D

    tested = [p for p in principles if p.kind in ("switch", "primitive", "continuous") and p.effect is not None]
    rows = principle_rows(principles, max_rows)
    n_tests = sum(p.p is not None for p in principles)
    fig, ax = figure(10, 0.3 * len(rows) + 2.6)
    a = ax[0][0]
    n = len(rows)
    for i, p in enumerate(rows):
        y = n - 1 - i  # first row on top
        color = ("C3" if p.effect > 0 else "C0") if p.established else ("C1" if _excludes_zero(p) else "0.6")
        a.errorbar(p.effect, y, xerr=[[p.effect - p.ci[0]], [p.ci[1] - p.effect]], fmt=_marker(p), color=color,
                   capsize=2, ms=5)
    a.set_yticks([n - 1 - i for i in range(n)], [f"{p.label} [{p.scope}]" for p in rows], fontsize=7)
    n_est = sum(p.established for p in tested)
    if 0 < n_est < n:
        a.axhline(n - n_est - 0.5, color="k", lw=0.6, ls=":")
    a.axvline(0, color="k", lw=0.8)
    a.set_xlabel(f"difference in {label} (95 % bootstrap CI)")
    shown = f"all {len(tested)}" if len(rows) == len(tested) else f"{len(rows)} of {len(tested)} (the rest are in report.md)"
    a.set_title(f"Design principles: {n_est} of {len(tested)} effects established, {CORRECTION}-corrected over "
                f"{n_tests} tests (family-wise error {pct(ALPHA)}); established first, {shown} shown", fontsize=9)
    handles = [Line2D([], [], color="C3", marker="s", ls="", label=f"established, raises {label}"),
               Line2D([], [], color="C0", marker="s", ls="", label=f"established, lowers {label}"),
               Line2D([], [], color="C1", marker="s", ls="", label=f"95 % CI excludes 0, not after {CORRECTION}"),
               Line2D([], [], color="0.6", marker="s", ls="", label="not established")]
    scopes = {_marker(p) for p in rows}
    handles += [Line2D([], [], color="k", marker=m, ls="", label=text) for m, text in _MARKERS.values() if m in scopes]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=3, frameon=False)
    return fig


def partial_dependence_figure(principles: Sequence[Principle], label: str):
    """The surrogate's partial dependence of each continuous gene, with the top-10 % range shaded."""
    cont = [p for p in principles if p.kind == "continuous" and "partial_dependence" in p.details]
    if not cont:
        return None
    fig, ax = figure(13, 6, 2, 4, sharey=True,  # one scale: a flat curve means an irrelevant gene
                     margins=dict(left=0.05, right=0.99, bottom=0.06, top=0.89, wspace=0.1, hspace=0.3))
    for a, p in zip(ax.flat, cont):
        pd = p.details["partial_dependence"]
        a.plot(pd["grid"], pd["mean_prediction"], color="C0")
        a.axvspan(*p.details["top_range"], color="C1", alpha=0.25, label="top 10 %")
        if p.key == "clip_threshold":
            a.set_xscale("log")
        a.set_title(p.label + ("" if p.established else " (n.e.)"), fontsize=8)
    for a in ax.flat[len(cont):]:
        a.set_axis_off()
    ax[0][0].legend(fontsize=7)
    fig.suptitle(f"Surrogate partial dependence of {label}; shaded: where the top 10 % lie")
    return fig


def pareto_figure(d: StudyData):
    """Per-task studies: each pair of objectives, the non-dominated trials joined."""
    if not d.per_task or not len(d.values):
        return None
    m = d.values.shape[1]
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)][:6]
    front = pareto_mask(d.values)
    fig, ax = figure(5 * len(pairs), 4.5, 1, len(pairs))
    for a, (i, j) in zip(ax[0], pairs):
        a.scatter(d.values[:, i], d.values[:, j], s=5, color="0.6", label="trials")
        f = d.values[front][np.argsort(d.values[front][:, i])]
        a.plot(f[:, i], f[:, j], "o-", color="C3", ms=4, label=f"Pareto front ({front.sum()})")
        a.set_xlabel(d.objective_names[i])
        a.set_ylabel(d.objective_names[j])
        a.legend(fontsize=8)
    fig.suptitle(f"Per-task objectives of {d.name}")
    return fig


def matplotlib_figures(result: Analysis) -> dict[str, Any]:
    """Every figure of the analysis by file stem (Pareto only for per-task studies)."""
    d = result.data
    figs = {
        "importance": importance_figure(result.importance, f"Importance of genome units for {d.label} ({d.name})"),
        "history": history_figure(d),
        "terms": terms_figure(d),
        "principles": principles_figure(result.principles, d.label),
        "partial_dependence": partial_dependence_figure(result.principles, d.label),
        "pareto": pareto_figure(d),
    }
    return {k: f for k, f in figs.items() if f is not None}


def write_figures(result: Analysis, out: Path) -> list[Path]:
    """Save :func:`matplotlib_figures` as PNGs in ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in matplotlib_figures(result).items():
        fig.savefig(out / f"{name}.png", dpi=100)
        paths.append(out / f"{name}.png")
    return paths


def _short(p: Principle) -> str:
    """A principle's name for a dashboard card, where long labels would crowd out the plot."""
    if p.scope == ADJUSTED:
        return _short(replace(p, scope="all")) + " (adjusted)"
    if p.kind == "primitive":
        return f"+ {p.key}"
    if p.kind == "continuous":
        return f"{p.key} in top range"
    return {"bias_correction": "no bias correction", "clip": "clipping"}.get(p.key, p.key)


def plotly_figures(result: Analysis) -> dict[str, Any]:
    """Interactive versions for optuna-dashboard (key: figure name).

    The dashboard draws each figure in a fixed-size card, so these are compact: the 12 most important
    units (mean rank over the three methods), and the all-trials principles (hover for the full sentence); the PNGs have everything.
    """
    import plotly.graph_objects as go

    d, imp = result.data, result.importance
    units = imp.agreement().consensus()[:12][::-1]
    sp = imp.surrogate.importance
    pos = sum(max(0.0, v[0]) for v in sp.values()) or 1.0
    fig_imp = go.Figure([
        go.Bar(y=units, x=[imp.ped_anova[u] for u in units], orientation="h", name="PED-ANOVA"),
        go.Bar(y=units, x=[imp.fanova.get(u, (0, 0))[0] for u in units], orientation="h", name="fANOVA (3 seeds)",
               error_x={"array": [imp.fanova.get(u, (0, 0))[1] for u in units]}),
        go.Bar(y=units, x=[sp.get(u, (0, 0))[0] / pos for u in units], orientation="h",
               name=f"forest (CV R² {imp.surrogate.r2:.2f})", error_x={"array": [sp.get(u, (0, 0))[1] / pos for u in units]}),
    ])
    fig_imp.update_layout(title=f"Importance of genome units for {d.label} (shares); "
                          + ", ".join(f"ρ {pair} {r:+.2f}" for pair, r in imp.agreement().rho.items()), barmode="group",
                          legend={"orientation": "h", "y": -0.15}, margin={"l": 10, "r": 10})
    h = per_generation(d)
    g = h["generation"].tolist()
    fig_hist = go.Figure([go.Scatter(x=g, y=h[k].tolist(), name=k.replace("_", " ")) for k in ("best", "median", "best_so_far")])
    fig_hist.update_layout(title=f"Evolution of {d.label} per generation", xaxis_title="generation", yaxis_title=d.label)
    gens, freq = term_frequencies(d)
    fig_terms = go.Figure([go.Scatter(x=gens.tolist(), y=freq[k].tolist(), name=k if k in PRIMS else _switch_text(k))
                           for k in (*PRIMS, *SWITCHES) if freq[k].any()])
    fig_terms.update_layout(title="Members with each primitive / departing from Adam's switches",
                            xaxis_title="generation", yaxis_range=[0, 1])
    rows = [p for p in result.principles
            if p.kind in ("switch", "primitive", "continuous") and p.scope != f"top {pct(TOP_QUANTILE)}"
            and p.effect is not None]
    fig_pr = go.Figure([go.Scatter(
        x=[p.effect for p in rows], y=[_short(p) for p in rows], mode="markers",
        marker={"color": ["crimson" if p.established else "grey" for p in rows]},
        error_x={"type": "data", "symmetric": False, "array": [p.ci[1] - p.effect for p in rows],
                 "arrayminus": [p.effect - p.ci[0] for p in rows]},
        text=[p.sentence for p in rows], hoverinfo="text")])
    fig_pr.add_vline(x=0, line_width=1)
    fig_pr.update_layout(title=f"Principles: Δ {d.label}, 95 % CI (red: established, {CORRECTION}-corrected)", yaxis={"autorange": "reversed",
                         "tickfont": {"size": 9}}, margin={"l": 10, "r": 10})
    return {"importance": fig_imp, "history": fig_hist, "terms": fig_terms, "principles": fig_pr}

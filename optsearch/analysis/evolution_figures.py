"""The search as pictures: lineage, generations, per-generation Pareto fronts and the winner's anatomy.

Each figure exists twice, drawn from the same :mod:`optsearch.analysis.evolution` data: a plotly
figure for optuna-dashboard's custom-plot cards (:func:`save_search_figures`, refreshed while the
dashboard runs) and a matplotlib one saved as PNG by the analysis report (:func:`write_search_figures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna

from optsearch.analysis.evolution import (
    Anatomy, Generations, Lineage, Member, anatomy, fronts_by_generation, generations, main_line, memory_front,
    read_members, switch_name, winner_lineage,
)
from optsearch.analysis.figures import figure

from optsearch.search.config import MEMORY_OBJECTIVE

GRAPH_PREFIX = "optsearch-search-"
"""Dashboard graph ids of the search figures: ``optsearch-search-<name>``, overwritten on every save."""
ORIGIN_COLORS = {"crossover": "#1f77b4", "mutation": "#ff7f0e", "elite": "#2ca02c"}
STATE_COLORS = {"complete": "#4c78a8", "pruned": "#f58518", "diverged": "#e45756", "failed": "#9d755d",
                "running": "#bab0ac"}
NO_CURVES = ("no training curves stored: the run loop reports them as intermediate values only with a pruner "
             "on and a single objective")


def _color(origin: str) -> str:
    return ORIGIN_COLORS.get(origin, "#7f7f7f")


def _short(formula: str, n: int = 60) -> str:
    body = formula.replace("Δθ = ", "")
    return body if len(body) <= n else body[: n - 1] + "…"


def _y(m: Member, floor: float) -> float:
    return m.fitness if m.fitness is not None else floor


# ----------------------------------------------------------------------------- plotly (dashboard)
def lineage_plotly(lin: Lineage, title: str = "Lineage of the best genome"):
    """Ancestors at (generation, fitness); edges parent → child coloured by the child's operator."""
    import plotly.graph_objects as go

    nodes = lin.nodes
    known = [m.fitness for m in nodes.values() if m.fitness is not None]
    floor = min(known) if known else 0.0
    traces = []
    for origin in sorted({o for _, _, o in lin.edges}):
        xs: list[Any] = []
        ys: list[Any] = []
        for p, c, o in lin.edges:
            if o == origin:
                xs += [nodes[p].generation, nodes[c].generation, None]
                ys += [_y(nodes[p], floor), _y(nodes[c], floor), None]
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", name=origin or "unknown", hoverinfo="skip",
                                 line={"color": _color(origin), "width": 1.5}))
    ms = list(nodes.values())
    traces.append(go.Scatter(
        x=[m.generation for m in ms], y=[_y(m, floor) for m in ms], mode="markers", name="ancestor",
        marker={"size": [14 if m.number in lin.roots else 9 for m in ms],
                "symbol": ["star" if m.number in lin.roots else "circle" for m in ms],
                "color": [STATE_COLORS.get(m.state, "#333") for m in ms]},
        text=[f"trial {m.number} (gen {m.generation}, {m.origin or '?'}), fitness "
              f"{'—' if m.fitness is None else f'{m.fitness:.4f}'}<br>{m.formula}" for m in ms],
        hoverinfo="text"))
    fig = go.Figure(traces)
    fig.update_layout(title=f"{title}: {len(nodes)} genomes, {len(lin.edges)} parent links", xaxis_title="generation",
                      yaxis_title="fitness", xaxis={"dtick": 1}, legend={"orientation": "h", "y": -0.2})
    return fig


def generations_plotly(gs: Generations):
    """Fitness of each generation's complete members (box, every point) with the best so far; outcomes below."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    g = gs.generation.tolist()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.68, 0.32])
    for gen, f in zip(g, gs.fitness):
        fig.add_trace(go.Box(y=f.tolist(), x=[gen] * len(f), name=f"gen {gen}", marker_color="#4c78a8",
                             boxpoints="all", jitter=0.4, pointpos=0, showlegend=False), row=1, col=1)
    fig.add_trace(go.Scatter(x=g, y=[None if np.isnan(v) else v for v in gs.best_so_far], name="best so far",
                             mode="lines+markers", line={"color": "black", "dash": "dash"}), row=1, col=1)
    for s, c in STATE_COLORS.items():
        if gs.counts[s].any():
            fig.add_trace(go.Bar(x=g, y=gs.counts[s].tolist(), name=s, marker_color=c), row=2, col=1)
    fig.update_layout(barmode="stack", title="Generations: fitness (complete members) and outcomes",
                      legend={"orientation": "h", "y": -0.15}, margin={"l": 10, "r": 10})
    fig.update_yaxes(title_text="fitness", row=1, col=1)
    fig.update_yaxes(title_text="members", row=2, col=1)
    fig.update_xaxes(title_text="generation", row=2, col=1)
    return fig


def population_plotly(gs: Generations):
    """What the population carries per generation: primitives (stacked shares) and departures from Adam's switches."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    g = gs.generation.tolist()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("members carrying each primitive (stacked shares)",
                                        "members departing from Adam's switch setting"))
    for k, v in gs.terms.items():
        if v.any():
            fig.add_trace(go.Scatter(x=g, y=v.tolist(), name=k, stackgroup="terms", mode="lines"), row=1, col=1)
    for k, v in gs.switches.items():
        fig.add_trace(go.Scatter(x=g, y=v.tolist(), name=switch_name(k), mode="lines+markers"), row=2, col=1)
    fig.update_layout(title="Population per generation", legend={"font": {"size": 9}}, margin={"l": 10, "r": 10})
    fig.update_yaxes(range=[0, 1.02], row=2, col=1)
    fig.update_xaxes(title_text="generation", row=2, col=1)
    return fig


def pareto_plotly(members: Sequence[Member], names: Sequence[str], pair: tuple[int, int] = (0, 1)):
    """Each generation's Pareto front on two objectives (later generations darker); hover for formulas."""
    import plotly.graph_objects as go

    i, j = pair
    done = [m for m in members if m.values]
    fronts = fronts_by_generation(members)
    traces = [go.Scatter(x=[m.values[i] for m in done], y=[m.values[j] for m in done], mode="markers",
                         name="all complete members", marker={"color": "lightgrey", "size": 5},
                         text=[f"trial {m.number} (gen {m.generation})<br>{m.formula}" for m in done], hoverinfo="text")]
    last = max(fronts) if fronts else 0
    for g, front in fronts.items():
        front = sorted(front, key=lambda m: m.values[i])
        shade = 0.25 + 0.75 * (g / last if last else 1.0)
        traces.append(go.Scatter(
            x=[m.values[i] for m in front], y=[m.values[j] for m in front], mode="lines+markers",
            name=f"front of gen {g} ({len(front)})", opacity=shade, line={"color": "#d62728", "width": 1 + 2 * (g == last)},
            text=[f"trial {m.number} (gen {g})<br>{m.formula}" for m in front], hoverinfo="text"))
    fig = go.Figure(traces)
    fig.update_layout(title=f"Pareto front per generation: {names[i]} vs {names[j]}", xaxis_title=f"{names[i]} fitness",
                      yaxis_title=f"{names[j]} fitness")
    return fig


MEMORY_TITLE = "Accuracy–memory Pareto front"
MEMORY_X = "optimizer state (floats per parameter)"


def _state_label(m: Member) -> str:
    assert m.genome is not None
    return f"{m.genome.state_floats()} float{'s' if m.genome.state_floats() != 1 else ''}"


def memory_plotly(members: Sequence[Member]):
    """Fitness against optimizer state over the whole study, the front labelled with each member's state size."""
    import plotly.graph_objects as go

    done = [m for m in members if m.fitness is not None and m.genome is not None]
    front = memory_front(members)
    traces = [go.Scatter(x=[m.genome.state_floats() for m in done], y=[m.fitness for m in done], mode="markers",
                         name="all complete members", marker={"color": "lightgrey", "size": 6},
                         text=[f"trial {m.number} (gen {m.generation})<br>{m.formula}" for m in done], hoverinfo="text"),
              go.Scatter(x=[m.genome.state_floats() for m in front], y=[m.fitness for m in front], mode="lines+markers+text",
                         name=f"Pareto front ({len(front)})", line={"color": "#d62728", "shape": "hv", "width": 2},
                         text=[_state_label(m) for m in front], textposition="top center",
                         hovertext=[f"trial {m.number} (gen {m.generation})<br>{m.formula}" for m in front],
                         hoverinfo="text")]
    fig = go.Figure(traces)
    fig.update_layout(title=f"{MEMORY_TITLE}: fitness vs optimizer state", xaxis_title=MEMORY_X, yaxis_title="fitness",
                      xaxis={"dtick": 1})
    return fig


CURVE_X = "training step (within each task's run)"
CURVE_Y = "fitness estimate at checkpoint"
CURVE_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")


def _curve_tasks(an: Anatomy) -> list[str]:
    """The tasks with stored curves, in the study's order: one panel each (never one line across tasks)."""
    return list(dict.fromkeys(c.task for c in an.curves))


def _curve_color(an: Anatomy, label: str) -> str:
    labels = list(dict.fromkeys(c.label for c in an.curves))
    return CURVE_COLORS[labels.index(label) % len(CURVE_COLORS)]


def anatomy_plotly(an: Anatomy):
    """The winner's parts with the study's fitness association, and its stored training curves, one panel per task."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tasks = _curve_tasks(an) or ["training curves"]
    fig = make_subplots(rows=1, cols=1 + len(tasks), column_widths=[0.5] + [0.5 / len(tasks)] * len(tasks),
                        subplot_titles=("Δ fitness with vs. without each part (association)",
                                        *(f"{t}: fitness at checkpoints" if an.curves else t for t in tasks)))
    parts = an.parts[::-1]
    fig.add_trace(go.Bar(
        y=[f"{p} (Σα {w:.2g})" if w is not None else p for p, w, *_ in parts],
        x=[a if a is not None else 0.0 for _, _, a, _, _ in parts], orientation="h", name="association",
        marker_color=["#d62728" if (a or 0) > 0 else "#1f77b4" for _, _, a, _, _ in parts],
        text=[f"{n_with} with, {n_without} without" for *_, n_with, n_without in parts], hoverinfo="text+x",
        showlegend=False), row=1, col=1)
    fig.update_xaxes(title_text="mean fitness with − without (association)", row=1, col=1)
    shown: set[str] = set()
    for c in an.curves:
        col = 2 + tasks.index(c.task)
        fig.add_trace(go.Scatter(x=c.steps, y=c.values, mode="lines+markers", name=c.label, legendgroup=c.label,
                                 showlegend=c.label not in shown, line={"color": _curve_color(an, c.label)},
                                 hovertext=f"{c.label}, {c.task}, seed {c.seed}"), row=1, col=col)
        shown.add(c.label)
    for col in range(2, 2 + len(tasks)):
        fig.update_xaxes(title_text=CURVE_X, row=1, col=col)
        fig.update_yaxes(title_text=CURVE_Y, row=1, col=col)
    if not an.curves:
        fig.add_annotation(text=NO_CURVES.replace(": ", ":<br>"), row=1, col=2, showarrow=False,
                           x=0.5, y=0.5, xref="x2 domain", yref="y2 domain", font={"size": 10})
    w = an.winner
    fig.update_layout(title=f"Winner: trial {w.number} (gen {w.generation}), fitness {w.fitness:.4f}<br>"
                            f"<sub>{w.formula}</sub>", showlegend=bool(an.curves))
    return fig


def search_figures_plotly(study: optuna.Study, members: Sequence[Member] | None = None) -> dict[str, Any]:
    """Every search figure for the dashboard (key: figure name); none before the first trial has a generation."""
    return _build(study, members, {"generations": generations_plotly, "population": population_plotly,
                                   "lineage": lineage_plotly, "pareto": pareto_plotly, "winner": anatomy_plotly,
                                   "pareto_memory": memory_plotly})


def _build(study: optuna.Study, members: Sequence[Member] | None, draw: dict[str, Any]) -> dict[str, Any]:
    """The figures ``draw`` has a function for (name -> function of the figure's data), from one read of the trials."""
    members = read_members(study) if members is None else members
    if not members:
        return {}
    gs = generations(members)
    figs: dict[str, Any] = {k: draw[k](gs) for k in ("generations", "population") if k in draw}
    lin = winner_lineage(study, members)
    if lin.nodes:
        figs["lineage"] = draw["lineage"](lin)
    names = list(study.user_attrs.get("objectives") or study.metric_names or [])
    if len(names) == len(study.directions) and len(fitness := [n for n in names if n != MEMORY_OBJECTIVE]) > 1:
        figs["pareto"] = draw["pareto"](members, fitness)
    if MEMORY_OBJECTIVE in names and "pareto_memory" in draw:  # a +memory study: the accuracy–memory front
        figs["pareto_memory"] = draw["pareto_memory"](members)
    an = anatomy(study, members)
    if an is not None:
        figs["winner"] = draw["winner"](an)
    return figs


def save_search_figures(study: optuna.Study, members: Sequence[Member] | None = None) -> list[str]:
    """Save the search figures into the study as optuna-dashboard cards (fixed ids: re-saving overwrites)."""
    from optuna_dashboard import save_plotly_graph_object

    return [save_plotly_graph_object(study, fig, graph_object_id=GRAPH_PREFIX + name)
            for name, fig in search_figures_plotly(study, members).items()]


# ----------------------------------------------------------------------------- matplotlib (report PNGs)
LABELLED = 60
"""A lineage of more members than this labels only its roots' main line (more labels overlap into a smear)."""


def lineage_png(lin: Lineage):
    """One arrow field per operator, one scatter per marker, labels out of the layout, a fixed legend place: an
    annotation per link and ``loc="best"`` (which measures every label) took 44 s on 375 ancestors. Every member
    is labelled up to :data:`LABELLED` members, else the main line (:func:`main_line`); the dashboard's lineage
    names every member on hover."""
    nodes = lin.nodes
    known = [m.fitness for m in nodes.values() if m.fitness is not None]
    floor = min(known) if known else 0.0
    fig, ax = figure(10, 5.5)
    a = ax[0][0]
    for origin in sorted({o for *_, o in lin.edges}):
        xy = np.array([[nodes[p].generation, _y(nodes[p], floor), nodes[c].generation, _y(nodes[c], floor)]
                       for p, c, o in lin.edges if o == origin])
        a.quiver(xy[:, 0], xy[:, 1], xy[:, 2] - xy[:, 0], xy[:, 3] - xy[:, 1], angles="xy", scale_units="xy", scale=1,
                 color=_color(origin), width=0.0015, headwidth=5, headlength=6, label=origin or "unknown")
    for root in (False, True):
        ms = [m for m in nodes.values() if (m.number in lin.roots) == root]
        if ms:
            a.scatter([m.generation for m in ms], [_y(m, floor) for m in ms], s=120 if root else 40,
                      marker="*" if root else "o", color=[STATE_COLORS.get(m.state, "k") for m in ms], zorder=3)
    for m in (nodes.values() if len(nodes) <= LABELLED else [nodes[n] for n in main_line(lin)]):
        a.annotate(f"#{m.number}", (m.generation, _y(m, floor)), fontsize=7, xytext=(4, 4),
                   textcoords="offset points").set_in_layout(False)
    if lin.roots and lin.roots[0] in nodes:
        a.set_title(f"Lineage of trial {lin.roots[0]} ({len(nodes)} genomes): {_short(nodes[lin.roots[0]].formula, 90)}",
                    fontsize=9)
    a.set_xlabel("generation")
    a.set_ylabel("fitness")
    if lin.edges:
        a.legend(fontsize=8, title="operator", title_fontsize=8, loc="lower right")
    a.xaxis.get_major_locator().set_params(integer=True)
    return fig


def generations_png(gs: Generations):
    fig, ax = figure(11, 10, 4, 1, sharex=True, height_ratios=[2, 1, 1, 1],
                     margins=dict(left=0.07, right=0.99, bottom=0.05, top=0.97, hspace=0.1))
    g = gs.generation
    data = [f if len(f) else np.array([np.nan]) for f in gs.fitness]
    ax[0][0].boxplot(data, positions=g, widths=0.6, manage_ticks=False)  # its ticks would read 0, 1, … not g
    ax[0][0].plot(g, gs.best_so_far, "k--", label="best so far")
    ax[0][0].set_ylabel("fitness")
    ax[0][0].legend(fontsize=8, loc="lower right")
    ax[0][0].set_title("Fitness of complete members per generation", fontsize=10)
    bottom = np.zeros(len(g))
    for s, c in STATE_COLORS.items():
        if gs.counts[s].any():
            ax[1][0].bar(g, gs.counts[s], bottom=bottom, color=c, label=s)
            bottom += gs.counts[s]
    ax[1][0].set_ylabel("members")
    ax[1][0].legend(fontsize=7, ncol=5, loc="lower left")
    carried = {k: v for k, v in gs.terms.items() if v.any()}
    if carried:
        ax[2][0].stackplot(g, *carried.values(), labels=list(carried))
    ax[2][0].set_ylabel("share carrying")
    ax[2][0].legend(fontsize=7, ncol=4, loc="upper left")
    for k, v in gs.switches.items():
        ax[3][0].plot(g, v, marker=".", label=switch_name(k))
    ax[3][0].set_ylim(-0.02, 1.02)
    ax[3][0].set_ylabel("share departing")
    ax[3][0].legend(fontsize=7, ncol=3, loc="upper left")
    ax[3][0].set_xlabel("generation")
    ax[3][0].set_xticks(g if len(g) <= 25 else g[:: max(1, len(g) // 20)])
    return fig


def memory_png(members: Sequence[Member]):
    done = [m for m in members if m.fitness is not None and m.genome is not None]
    front = memory_front(members)
    fig, ax = figure(7, 5)
    a = ax[0][0]
    a.scatter([m.genome.state_floats() for m in done], [m.fitness for m in done], s=8, color="0.75", label="members")
    a.step([m.genome.state_floats() for m in front], [m.fitness for m in front], "o-", where="post", color="#d62728",
           label=f"Pareto front ({len(front)})")
    for m in front:
        a.annotate(f"#{m.number} ({_state_label(m)})", (m.genome.state_floats(), m.fitness), fontsize=7, xytext=(3, 3),
                   textcoords="offset points")
    a.set_xlabel(MEMORY_X)
    a.set_ylabel("fitness")
    a.xaxis.get_major_locator().set_params(integer=True)
    a.legend(fontsize=8, loc="lower right")
    a.set_title(f"{MEMORY_TITLE} (formulas in report.md)", fontsize=10)
    return fig


def pareto_png(members: Sequence[Member], names: Sequence[str]):
    m_ = len(names)
    pairs = [(i, j) for i in range(m_) for j in range(i + 1, m_)][:3]
    fronts = fronts_by_generation(members)
    done = [m for m in members if m.values]
    last = max(fronts) if fronts else 0
    cmap = __import__("matplotlib").colormaps["viridis"]
    fig, ax = figure(6 * len(pairs), 5.5, 1, len(pairs))
    for a, (i, j) in zip(ax[0], pairs):
        a.scatter([m.values[i] for m in done], [m.values[j] for m in done], s=6, color="0.75")
        for g, front in fronts.items():
            front = sorted(front, key=lambda m: m.values[i])
            a.plot([m.values[i] for m in front], [m.values[j] for m in front], "o-", ms=3,
                   color=cmap(g / last if last else 1.0), lw=2 if g == last else 0.8, label=f"gen {g}")
        for m in fronts.get(last, []):
            a.annotate(f"#{m.number}", (m.values[i], m.values[j]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        a.set_xlabel(f"{names[i]} fitness")
        a.set_ylabel(f"{names[j]} fitness")
        a.legend(fontsize=6, ncol=2, title="front of", title_fontsize=7, loc="lower left")
    fig.suptitle("Pareto front per generation (last generation's members numbered; formulas in report.md)", fontsize=10)
    return fig


def anatomy_png(an: Anatomy):
    tasks = _curve_tasks(an) or ["training curves"]
    fig, ax = figure(7 + 4 * len(tasks), 4.5, 1, 1 + len(tasks), width_ratios=[1.2] + [1] * len(tasks))
    parts = an.parts[::-1]
    a = ax[0][0]
    vals = [x if x is not None else 0.0 for _, _, x, _, _ in parts]
    a.barh(range(len(parts)), vals, color=["C3" if v > 0 else "C0" for v in vals])
    a.set_yticks(range(len(parts)), [f"{p} (Σα {w:.2g})" if w is not None else p for p, w, *_ in parts], fontsize=8)
    a.axvline(0, color="k", lw=0.8)
    a.set_xlabel("mean fitness with − without this part, over the study (association, not ablation)")
    shown: set[tuple[str, str]] = set()
    for c in an.curves:  # one panel per task; each (genome, seed) a line of its own
        b = ax[0][1 + tasks.index(c.task)]
        b.plot(c.steps, c.values, marker=".", color=_curve_color(an, c.label),
               label=c.label if (c.task, c.label) not in shown else None)
        shown.add((c.task, c.label))
    for task, b in zip(tasks, ax[0][1:]):
        if an.curves:
            b.set_title(task, fontsize=9)
            b.set_xlabel(CURVE_X)
            b.set_ylabel(CURVE_Y)
            b.legend(fontsize=8, loc="lower right")
        else:
            b.text(0.5, 0.5, NO_CURVES.replace(": ", ":\n"), ha="center", va="center", fontsize=8, wrap=True)
            b.set_axis_off()
    w = an.winner
    fig.suptitle(f"Winner: trial {w.number} (generation {w.generation}), fitness {w.fitness:.4f}\n{_short(w.formula, 120)}",
                 fontsize=9)
    return fig


def write_search_figures(study: optuna.Study, out: Path, members: Sequence[Member] | None = None) -> list[Path]:
    """Save the search figures as ``search_<name>.png`` in ``out``; returns the paths."""
    figs = _build(study, members, {"generations": generations_png, "lineage": lineage_png, "pareto": pareto_png,
                                   "winner": anatomy_png, "pareto_memory": memory_png})
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        fig.savefig(out / f"search_{name}.png", dpi=100)
        paths.append(out / f"search_{name}.png")
    return paths


__all__ = ["GRAPH_PREFIX", "save_search_figures", "search_figures_plotly", "write_search_figures"]

"""The benchmark's figures: test accuracy with intervals per contender, and training-loss curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from optsearch import stats
from optsearch.benchmark.results import BenchmarkResult


def _colors(result: BenchmarkResult) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {c.name: cmap(i % 10) for i, c in enumerate(result.contenders)}


def plot_bars(result: BenchmarkResult, path: Path) -> None:
    """Test accuracy per contender with 95 % t error bars: one panel per task, then each group's aggregate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Callable[[str], list[float]], Sequence[str]]] = []
    for group, ts in result.groups().items():
        panels += [(f"{t} ({group})", result.tasks[t].accuracy, [t]) for t in ts]
        if len(ts) > 1:
            panels.append((f"{group}: mean of {len(ts)} tasks", lambda c, ts=ts: result.aggregate(ts, c), ts))
    names = [c.name for c in result.contenders]
    colors = _colors(result)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 3.2 * len(panels)), 4.2), squeeze=False)
    for ax, (title, values_of, ts) in zip(axes[0], panels):
        ivs = [stats.t_interval(values_of(n)) for n in names]
        means = [100 * iv.mean for iv in ivs]
        errs = [100 * iv.half_width if math.isfinite(iv.half_width) else 0.0 for iv in ivs]
        bars = ax.bar(range(len(names)), means, yerr=errs, capsize=3, color=[colors[n] for n in names],
                      edgecolor=["black" if c.role == "evolved" else "none" for c in result.contenders],
                      linewidth=1.5)
        lows = [m - e for m, e in zip(means, errs) if math.isfinite(m)]
        highs = [m + e for m, e in zip(means, errs) if math.isfinite(m)]
        if lows:
            span = max(highs) - min(lows) or 1.0
            ax.set_ylim(max(0.0, min(lows) - 0.5 * span), min(100.0, max(highs) + 0.2 * span))
        # A diverged seed is scored at chance: say so on its bar, or it reads as a trained accuracy.
        runs = len(ts) * result.config.seeds
        for i, n in enumerate(names):
            k = sum(u.diverged for t in ts for u in result.tasks[t].scores[n])
            if k:
                bars[i].set_hatch("//")
                ax.annotate(f"{k}/{runs} diverged", (i, means[i] + errs[i]), xytext=(0, 3),
                            textcoords="offset points", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{'validation' if result.config.split == 'val' else 'test'} accuracy % (mean, 95 % t CI)")
    fig.suptitle(f"{result.name}: tuned contenders, {result.config.seeds} seeds (y axis zoomed; "
                 f"hatched: diverged runs, scored at chance)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(result: BenchmarkResult, path: Path) -> None:
    """Training loss (mean over seeds) against steps, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(result)
    # Contenders with the same curve (e.g. AdamW with a tiny tuned wd over Adam) must both stay visible:
    # each is drawn thinner than the ones before it, with its own dash pattern; the evolved genome on top.
    styles = {c.name: "-" if c.role == "evolved" else ("--", "-.", ":")[i % 3]
              for i, c in enumerate(result.contenders)}
    widths = {c.name: 2.2 if c.role == "evolved" else max(0.6, 2.4 - 0.25 * i) for i, c in enumerate(result.contenders)}
    tasks = [t for ts in result.groups().values() for t in ts]
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.5, 4.2 * len(tasks)), 3.8), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        r = result.tasks[t]
        gone = []
        for c in result.contenders:
            k = sum(s.diverged for s in r.scores[c.name])
            if k:
                gone.append(f"{c.name} {k}/{len(r.scores[c.name])}")
            curves = [s.curve for s in r.scores[c.name] if s.curve and not s.diverged]
            if not curves:
                continue
            n = min(len(cv) for cv in curves)
            steps = [cv[0] for cv in curves[0][:n]]
            mean = [sum(cv[k][1] for cv in curves) / len(curves) for k in range(n)]
            ax.plot(steps, mean, label=c.name, color=colors[c.name], ls=styles[c.name], lw=widths[c.name],
                    zorder=3 if c.role == "evolved" else 2)
        ax.set_yscale("log")
        ax.set_title(f"{t} ({r.group})", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if gone:  # their curves are missing or averaged over fewer seeds
            ax.text(0.98, 0.98, "diverged seeds (not plotted):\n" + "\n".join(gone), transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    axes[0][0].set_ylabel("training loss (mean over non-diverged seeds)")
    # The legend lists every contender, also one with no curve in the first panel (all its seeds diverged there).
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[c.name], ls=styles[c.name], lw=widths[c.name])
               for c in result.contenders]
    labels = [c.name for c in result.contenders]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Figures of a study: evolution history (best/median per generation), term frequencies per
generation, importances, principles, partial dependences, and the Pareto front of per-task studies.

    python analysis/figures.py NAME [--storage URL] [--objective TASK] [-o DIR]

Writes the PNGs to DIR (default reports/NAME). Each figure is one function in optsearch.analysis.figures
(history_figure, terms_figure, pareto_figure, …) returning a matplotlib Figure to restyle or extend.
"""

from __future__ import annotations

import argparse

from optsearch.analysis.data import load_study_data
from optsearch.analysis.report import output_dir, script_main
from optsearch.analysis.result import analyze
from optsearch.analysis.figures import write_figures


def run(a: argparse.Namespace) -> str:
    result = analyze(load_study_data(a.name, a.storage, a.objective), seed=a.seed)
    paths = write_figures(result, output_dir(a.name, a.output))
    return "\n".join(f"wrote {p}" for p in paths)


if __name__ == "__main__":
    raise SystemExit(script_main(__doc__.splitlines()[0], run))

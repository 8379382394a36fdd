"""Importance of a study's genome units: PED-ANOVA, fANOVA (3 seeds, mean ± sd) and a random-forest surrogate.

    python analysis/importance.py NAME [--storage URL] [--objective TASK] [-o DIR]

Prints the table and writes importance.json and importance.png to DIR (default reports/NAME).
A thin wrapper over optsearch.analysis.importance: copy it and change what you need.
"""

from __future__ import annotations

import argparse

from optsearch.analysis.data import load_study_data
from optsearch.analysis.report import importance_table, output_dir, script_main, write_json
from optsearch.analysis.figures import importance_figure
from optsearch.analysis.importance import compute_importance


def run(a: argparse.Namespace) -> str:
    data = load_study_data(a.name, a.storage, a.objective)
    imp = compute_importance(data.genomes, data.y, seed=a.seed)
    out = output_dir(a.name, a.output)
    write_json(imp.to_dict(), out / "importance.json")
    importance_figure(imp, f"Importance of genome units for {data.label} ({a.name})").savefig(out / "importance.png", dpi=100)
    s = imp.surrogate
    return "\n".join([f"{len(data.y):,} trials, objective {data.label}", *importance_table(imp),
                      f"forest surrogate: CV R² {s.r2:.2f}, out-of-bag R² {s.oob_r2:.2f}: it {s.verdict()}",
                      f"wrote {out / 'importance.json'} and {out / 'importance.png'}"])


if __name__ == "__main__":
    raise SystemExit(script_main(__doc__.splitlines()[0], run))

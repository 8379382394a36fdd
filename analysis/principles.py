"""Design principles of a study: effects of switches and primitives with bootstrap 95 % intervals,
and where the top trials put each continuous gene.

    python analysis/principles.py NAME [--storage URL] [--objective TASK] [-o DIR]

Prints one sentence per principle (established ones first) and writes principles.json and
principles.png to DIR (default reports/NAME). A thin wrapper over optsearch.analysis.principles.
"""

from __future__ import annotations

import argparse

from optsearch.analysis.data import load_study_data
from optsearch.analysis.report import output_dir, script_main, write_json
from optsearch.analysis.result import analyze
from optsearch.analysis.figures import principles_figure


def run(a: argparse.Namespace) -> str:
    result = analyze(load_study_data(a.name, a.storage, a.objective), seed=a.seed)
    out = output_dir(a.name, a.output)
    write_json(result.to_dict(), out / "principles.json")
    principles_figure(result.principles, result.data.label).savefig(out / "principles.png", dpi=100)
    ps = sorted(result.principles, key=lambda p: not p.established)
    return "\n".join([p.sentence for p in ps] + [f"wrote {out / 'principles.json'} and {out / 'principles.png'}"])


if __name__ == "__main__":
    raise SystemExit(script_main(__doc__.splitlines()[0], run))

"""How long `optsearch analyze` takes on a large study: 2,500 trials × the 20 genome parameters.

    python benchmarks/analysis_speed.py [--trials 2500] [--random] [--storage URL]

Builds a synthetic study (known fitness, see tests/synthetic.py) in a temporary SQLite file — bred by
the GeneticSampler in generations of 50, so it has parent links, elites and a lineage to draw
(``--random``: i.i.d. random genomes instead); the build is not timed. Then runs the same steps as
``analyze_study`` and prints the wall time of each and the total, and what one dashboard refresh of the
search figures costs on the whole study (the server redraws them once per finished generation, so this
is the per-generation cost at the end of such a run), and the load average, since the development
machine is shared and a loaded run says little about a quiet one. Target: at most 20 s for 2,500 trials
on a quiet 2-core CPU (issue 27).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.synthetic, the synthetic study builder the analysis tests use

from optsearch.analysis import report as analysis  # noqa: E402
from optsearch.analysis.adjusted import adjusted_principles  # noqa: E402
from optsearch.analysis.importance import fanova, ped_anova, surrogate, unit_view  # noqa: E402
from optsearch.analysis.result import analyze  # noqa: E402
from optsearch.analysis.evolution import read_members  # noqa: E402
from optsearch.analysis.evolution_figures import save_search_figures, search_figures_plotly, write_search_figures  # noqa: E402
from tests.synthetic import bred_study, synthetic_study  # noqa: E402

TARGET_S = 20.0


def _cpu() -> float:
    """CPU seconds of this process (all threads) and its finished children (the report draws PNGs in one)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2500)
    p.add_argument("--random", action="store_true", help="i.i.d. random genomes instead of a GA-bred study")
    p.add_argument("--storage", help="an existing storage holding a study named 'speed' (skips the build)")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage
        if url is None:
            url = f"sqlite:///{Path(tmp) / 'speed.db'}"
            t0 = time.perf_counter()
            if args.random:
                synthetic_study("speed", url, n_trials=args.trials, seed=0)
            else:
                bred = bred_study("speed", population=50, generations=max(1, args.trials // 50), seed=0)
                optuna.copy_study(from_study_name="speed", from_storage=bred._storage, to_storage=url)
            print(f"built {args.trials:,} trials in {time.perf_counter() - t0:.1f} s (not part of the timing)")

        times: dict[str, float] = {}
        start, cpu_start = time.perf_counter(), _cpu()

        def lap(name: str, t: float) -> None:
            times[name] = time.perf_counter() - t

        t = time.perf_counter()
        data = analysis.load_study_data("speed", url)
        lap("load study", t)
        t = time.perf_counter()
        result = analyze(data)  # what `optsearch analyze` computes: distinct genomes, importances, principles
        lap("importances + principles", t)
        features = result.features
        times["report, figures + dashboard"] = 0.0  # (its line first; set below)
        t = time.perf_counter()

        def dashboard() -> None:  # as analyze_study runs it: while the report's child draws the analysis's PNGs
            t = time.perf_counter()
            analysis.save_to_dashboard(result)
            lap("  of which dashboard note + figures", t)
        analysis.write_outputs(result, Path(tmp) / "report", meanwhile=dashboard)
        lap("report, figures + dashboard", t)
        total, cpu = time.perf_counter() - start, _cpu() - cpu_start

        # The search figures alone (included above), step by step; the dashboard server's refresh is
        # the read plus the plotly build plus the save.
        t = time.perf_counter()
        members = read_members(data.study)
        lap("  search: read trials", t)
        t = time.perf_counter()
        search_figures_plotly(data.study, members)
        lap("  search: plotly figures", t)
        t = time.perf_counter()
        write_search_figures(data.study, Path(tmp) / "search", members)
        lap("  search: PNG figures", t)
        t = time.perf_counter()
        save_search_figures(data.study)
        lap("  search: one dashboard refresh", t)

        # The importance step again, method by method, to show where its time goes.
        # (analyze runs fANOVA and the adjusted effects in a forked child while it does the rest itself.)
        view, d = unit_view(features, result.distinct.y), result.distinct
        for name, fn in (("  PED-ANOVA", lambda: ped_anova(view)), ("  fANOVA × 3 seeds (child)", lambda: fanova(view)),
                         ("  forest, 5-fold CV + permutation", lambda: surrogate(features, d.y)),
                         ("  adjusted effects, bootstrap (child)", lambda: adjusted_principles(d.genomes, d.y, d.generation))):
            t = time.perf_counter()
            fn()
            lap(name, t)

    print(f"{len(data.y):,} analysed trials ({data.counts['diverged']} diverged) × {len(data.genomes[0].to_params())} params")
    for name, s in times.items():
        print(f"{name:38s} {s:6.1f} s")
    verdict = "within" if total <= TARGET_S else "OVER"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())  # 1, 5 and 15 min: the machine is shared
    print(f"analysis wall time: {total:.1f} s ({verdict} the {TARGET_S:.0f} s target; load average {load} "
          f"on {os.cpu_count()} CPUs); CPU time {cpu:.1f} s, all threads and the drawing child (comparable across loads)")


if __name__ == "__main__":
    main()

"""Quality: does the evolved optimizer beat tuned Adam / AdamW on tasks it was NOT searched on?

End to end: run the ``quick`` study (search on digits + mnist1d), then benchmark its best genome
against every baseline with the same tuning budget on held-out ``mnist`` and ``fashion_mnist``
subsets, and print the evolved − Adam and evolved − AdamW test-accuracy differences, paired over
seeds, with their 95 % t intervals. Whatever the sign, the numbers are the result: nothing here is
adjusted to make the evolved optimizer win.

    OPTSEARCH_DATA_DIR=../shared/data python benchmarks/quality.py   # full: an hour or more on 2 CPU cores, minutes on a GPU
    python benchmarks/quality.py --generations 3 --steps 200 --trials 4 --contenders adam,adamw
    python benchmarks/quality.py --study demo --storage sqlite:///studies/optsearch.db   # reuse a finished study

Not run by the test suite (it trains for real).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optsearch import stats  # noqa: E402
from optsearch.benchmark.config import BenchmarkConfig  # noqa: E402
from optsearch.benchmark.contenders import BASELINE_NAMES, MUON, PAPER, default_contenders  # noqa: E402
from optsearch.benchmark.results import HELD_OUT, SEARCHED  # noqa: E402
from optsearch.benchmark.runner import run_benchmark  # noqa: E402
from optsearch.search import study  # noqa: E402
from optsearch.genome import Genome  # noqa: E402


def _data_dir(explicit: str | None) -> str | None:
    """--data-dir, else $OPTSEARCH_DATA_DIR, else ../shared/data next to the checkout (as .ci/run finds it)."""
    for d in (explicit, os.environ.get("OPTSEARCH_DATA_DIR"), str(ROOT.parent / "shared" / "data")):
        if d and (Path(d) / "mnist").is_dir():
            return d
    return explicit or os.environ.get("OPTSEARCH_DATA_DIR")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", help="benchmark this finished study instead of running the quick one")
    p.add_argument("--storage", help="storage of --study, and where tuning studies are kept (default: a temp file)")
    p.add_argument("--generations", type=int, help="run at most this many generations of the quick study")
    p.add_argument("--tasks", default="mnist,fashion_mnist", help="held-out tasks (default mnist,fashion_mnist)")
    p.add_argument("--with-searched", action="store_true", help="also benchmark on the searched tasks")
    p.add_argument("--contenders", help="comma-separated baselines to keep (default: all; e.g. adam,adamw)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=6, help="tuning trials per contender and task (default 6)")
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    p.add_argument("--subsample", type=int, default=5000, help="training examples per task (default 5000)")
    p.add_argument("--batch-size", type=int, help="default: each task's (128)")
    p.add_argument("--baseline-recipe", choices=("evolved", "named", "constant"), default="evolved",
                   help="baselines' schedule and clipping (default: the evolved genome's, as the benchmark command's)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--data-dir", help="datasets folder (default $OPTSEARCH_DATA_DIR)")
    p.add_argument("-o", "--output", default="reports/quality", help="report folder (default reports/quality)")
    a = p.parse_args(argv)
    # As the CLI does: Optuna flags the heartbeat/metric-name APIs we rely on as experimental; that is noise here.
    warnings.filterwarnings("ignore", message=r".*(experimental|Heartbeat of storage).*")
    known = (*BASELINE_NAMES, PAPER, MUON)
    wanted = [c.strip() for c in (a.contenders or "").split(",") if c.strip()]
    if set(wanted) - set(known):  # before the study runs, not after minutes of it
        p.error(f"unknown contender(s) {', '.join(sorted(set(wanted) - set(known)))}; choose from {', '.join(known)}")

    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="optsearch-quality-")
    storage = a.storage or f"sqlite:///{tmp.name}/quality.db"
    name = a.study
    if name is None:
        name = "quality"
        log(study.create(name, preset="quick", storage=storage))
        log("running the quick study (search on its tasks' validation splits)")
        log(study.run(name, storage=storage, generations=a.generations, device=a.device, progress=False))
    st, cfg = study.open_study(name, storage)
    best = study.best_trials(st, 1)[0]
    evolved = Genome.from_params(best.params)
    label = f"{name}#{best.number}"
    log(f"evolved genome {label}: {evolved.formula()}")

    held_out = [t for t in a.tasks.split(",") if t and t not in cfg.tasks]
    tasks = tuple(held_out + (list(cfg.tasks) if a.with_searched else []))
    bcfg = BenchmarkConfig(tasks=tasks, searched=frozenset(cfg.tasks), seeds=a.seeds,
                                     trials=a.trials, steps=a.steps, batch_size=a.batch_size, subsample=a.subsample,
                                     device=a.device, data_dir=_data_dir(a.data_dir))
    contenders = default_contenders([(label, evolved)], baseline_recipe=a.baseline_recipe)
    if a.contenders:
        keep = set(wanted) | {label}
        contenders = [c for c in contenders if c.name in keep]
    result = run_benchmark(label, [(label, evolved)], bcfg, storage=storage, out_dir=a.output,
                                     contenders=contenders, log=log)

    print(f"\nevolved genome {label} (searched on {', '.join(cfg.tasks)}): {evolved.formula()}")
    print(f"budget: {a.trials} tuning trials per contender and task (validation split), then {a.seeds} paired seeds "
          f"on the test split; {a.steps} steps, {a.subsample} training examples; baselines: {result.baseline_recipe}\n")
    groups = result.groups()
    rows = []
    for t in groups.get(HELD_OUT, []) + groups.get(SEARCHED, []):
        rows.append((f"{t} ({result.tasks[t].group})", result.tasks[t].accuracy))
    if len(groups.get(HELD_OUT, [])) > 1:
        ts = groups[HELD_OUT]
        rows.append(("held-out mean", lambda c, ts=ts: result.aggregate(ts, c)))
    others = [c.name for c in result.contenders if c.name != label]
    print(f"{'task':28s} {'evolved acc %':>15s}  " + "  ".join(f"{'Δ vs ' + o + ' (pp)':>22s}" for o in others))
    for title, values_of in rows:
        ref = stats.t_interval(values_of(label))
        cells = []
        for o in others:
            d = stats.paired_difference(values_of(label), values_of(o))
            mark = {1: "+", -1: "-", 0: "~"}[d.sign]
            cells.append(f"{d.fmt(100, signed=True):>20s} {mark}")
        print(f"{title:28s} {ref.fmt(100):>15s}  " + "  ".join(cells))
    print("\n+ / - : the 95 % paired interval lies above / below 0 (evolved better / worse); ~ : not established")
    print(f"report: {a.output}/report.md ({time.perf_counter() - t0:.0f} s)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

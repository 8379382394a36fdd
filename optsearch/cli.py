"""Command-line front end: parses arguments, calls the library, prints. No logic of its own.

Every user-caused problem surfaces as an :class:`OptsearchError` and becomes one line on stderr and
exit status 2. Library modules are imported inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable, Sequence

from optsearch.errors import OptsearchError

EXIT_USAGE = 2


def _cmd_genome_show(a: argparse.Namespace) -> int:
    from optsearch.genome import resolve

    g = resolve(a.genome)
    print(g.describe())
    return 0


def _cmd_genome_list(a: argparse.Namespace) -> int:
    from optsearch.genome import NAMED
    from optsearch.genome.primitives import PRIMITIVES

    print("primitives:")
    for p in PRIMITIVES.values():
        print(f"  {p.name:14s} {p.symbol}")
    print("named genomes:")
    for name, g in NAMED.items():
        print(f"  {name:14s} {g.formula()}")
    return 0


def _cmd_study_create(a: argparse.Namespace) -> int:
    from optsearch.search import study

    print(study.create(a.name, preset=a.preset, config_path=a.config, storage=a.storage))
    return 0


def _cmd_study_run(a: argparse.Namespace) -> int:
    from optsearch.search import study

    print(
        study.run(
            a.name,
            storage=a.storage,
            generations=a.generations,
            device=a.device,
            workers=a.workers,
            data_dir=a.data_dir,
            progress=not a.quiet,
        )
    )
    return 0


def _cmd_study_list(a: argparse.Namespace) -> int:
    from optsearch.search import study

    print(study.list_text(storage=a.storage))
    return 0


def _cmd_study_show(a: argparse.Namespace) -> int:
    from optsearch.analysis.evolution import generation_summary_text
    from optsearch.search import study
    from optsearch.search.storage import open_existing_study

    print(study.show_text(a.name, storage=a.storage, top=a.top))
    print()  # the search at a glance, for a terminal without a browser
    print(generation_summary_text(open_existing_study(a.name, a.storage)))
    return 0


def _cmd_study_delete(a: argparse.Namespace) -> int:
    from optsearch.search import study

    study.delete(a.name, storage=a.storage)
    print(f"deleted study {a.name!r}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from optsearch.search import study

    g = study.export(a.name, a.output, storage=a.storage, trial=a.trial, simplified=not a.unsimplified)
    print(f"wrote {a.output}: {g.formula()}")
    return 0


def _cmd_analyze(a: argparse.Namespace) -> int:
    from optsearch.analysis import report as analysis

    print(analysis.analyze_study(a.name, storage=a.storage, objective=a.objective, out_dir=a.output))
    return 0


def _cmd_benchmark(a: argparse.Namespace) -> int:
    from optsearch.benchmark.runner import run_cli

    print(
        run_cli(
            study_name=a.name,
            genome_files=a.genome or [],
            tasks=a.tasks,
            seeds=a.seeds,
            steps=a.steps,
            trials=a.trials,
            subsample=a.subsample,
            batch_size=a.batch_size,
            out_dir=a.output,
            storage=a.storage,
            device=a.device,
            data_dir=a.data_dir,
            baseline_recipe=a.baseline_recipe,
            split=a.split,
            seed_base=a.seed_base,
            contenders=a.contenders,
            tune_seeds=a.tune_seeds,
        )
    )
    return 0


def _cmd_dashboard(a: argparse.Namespace) -> int:
    from optsearch import dashboard

    return dashboard.serve(a.name, storage=a.storage, host=a.host, port=a.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="optsearch",
        description="Discover deep-learning optimizers by evolutionary search (Optuna + PyTorch).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def storage(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/optsearch.db)")

    def data(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", help="dataset directory (default: $OPTSEARCH_DATA_DIR, else ~/.cache/optsearch/data)")

    def device(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", help="cpu, cuda or cuda:K (default: the study's, else cuda when available)")

    def leaf(parent, name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    # genome
    g = sub.add_parser("genome", help="show the primitive catalogue and genomes")
    gs = g.add_subparsers(dest="genome_command", required=True, metavar="ACTION")
    sp = leaf(gs, "show", _cmd_genome_show, "print a genome's formula and parameters")
    sp.add_argument("genome", help="a named genome (adam, paper_evolved, …) or a genome JSON file")
    leaf(gs, "list", _cmd_genome_list, "list the primitives and the named genomes")

    # study
    s = sub.add_parser("study", help="create, run, list, show and delete studies")
    ss = s.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    sp = leaf(ss, "create", _cmd_study_create, "create a study from a preset or a TOML config")
    sp.add_argument("name")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="quick, cpu, paper or paper-nsga (see studies/)")
    src.add_argument("--config", help="a study TOML file")
    storage(sp)
    sp = leaf(ss, "run", _cmd_study_run, "evolve a study (resumes where it stopped)")
    sp.add_argument("name")
    sp.add_argument("--generations", type=int, help="run at most this many more generations")
    sp.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    storage(sp)
    device(sp)
    data(sp)
    sp = leaf(ss, "list", _cmd_study_list, "list the studies in a storage")
    storage(sp)
    sp = leaf(ss, "show", _cmd_study_show, "generation table, best genomes, per-task scores")
    sp.add_argument("name")
    sp.add_argument("--top", type=int, default=5, help="how many best genomes to show")
    storage(sp)
    sp = leaf(ss, "delete", _cmd_study_delete, "delete a study from its storage")
    sp.add_argument("name")
    storage(sp)

    sp = leaf(sub, "export", _cmd_export, "write a study's best (or a given) trial as a genome JSON")
    sp.add_argument("name")
    sp.add_argument("--trial", type=int, help="trial number (default: the study's answer: the funnel winner, simplified)")
    sp.add_argument("--unsimplified", action="store_true", help="the funnel winner before its ablation")
    sp.add_argument("-o", "--output", required=True, help="output JSON file")
    storage(sp)

    sp = leaf(sub, "analyze", _cmd_analyze, "importances and design principles of a study")
    sp.add_argument("name")
    sp.add_argument("--objective", help="a task name for per-task objectives (default: the aggregate)")
    sp.add_argument("-o", "--output", help="output folder (default: reports/NAME)")
    storage(sp)

    sp = leaf(sub, "benchmark", _cmd_benchmark, "evolved genome(s) vs tuned baselines on searched and held-out tasks")
    sp.add_argument("name", nargs="?", help="study whose best genome is benchmarked")
    sp.add_argument("--genome", action="append", help="a genome JSON file or name (repeatable)")
    sp.add_argument("--tasks", help="comma-separated tasks (default: the study's plus mnist, fashion_mnist)")
    sp.add_argument("--seeds", type=int, default=5, help="seeds per contender and task (default 5)")
    sp.add_argument("--steps", type=int, help="training steps (default: each task's)")
    sp.add_argument("--trials", type=int, default=8, help="tuning trials per contender and task (default 8)")
    sp.add_argument("--tune-seeds", type=int, default=2,
                    help="seeds each tuning trial is scored on, by mean fitness (default 2, at least 2)")
    sp.add_argument("--contenders", help="comma-separated baselines to run (default all: sgd_momentum, adam, adamw, "
                                         "rmsprop, lion, paper_evolved, muon); the evolved genome is always run")
    sp.add_argument("--subsample", type=int, help="training examples per task (default: the task's)")
    sp.add_argument("--batch-size", type=int, help="batch size (default: each task's)")
    sp.add_argument("--baseline-recipe", choices=("evolved", "named", "constant"), default="evolved",
                    help="schedule and clipping of the baselines and Muon: the evolved genome's warmup, cosine decay "
                         "and clipping (default), named (cosine decay only) or constant (the named optimizers as defined)")
    sp.add_argument("--split", choices=("val", "test"), default="test",
                    help="split the final runs are scored on (default test, for the record; val for decisions)")
    sp.add_argument("--seed-base", type=int, default=1000, help="first final seed (default 1000)")
    sp.add_argument("-o", "--output", help="output folder (default: reports/benchmark-NAME)")
    storage(sp)
    device(sp)
    data(sp)

    sp = leaf(sub, "dashboard", _cmd_dashboard, "optuna-dashboard on a study's storage")
    sp.add_argument("name")
    sp.add_argument("--host", default=None, help="bind address (default 127.0.0.1; a non-loopback address only when given here explicitly)")
    sp.add_argument("--port", type=int, default=8080)
    storage(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # Optuna flags the heartbeat/metric-name APIs we rely on as experimental; users need not see that on every run.
    warnings.filterwarnings("ignore", message=r".*(experimental|Heartbeat of storage).*")
    args = build_parser().parse_args(argv)
    try:
        rc = args.fn(args)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not in the interpreter's exit
        return rc
    except OptsearchError as e:
        print(f"optsearch: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("optsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`… | head`): not an error of ours. Point stdout at devnull so the interpreter's
        # final flush does not raise again (the recipe in Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1

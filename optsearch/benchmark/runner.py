"""Evolved optimizer(s) against tuned baselines, on searched and held-out tasks, with confidence intervals.

The protocol a reviewer would accept, and what the reference paper did not do:

1. **Equal tuning budget.** Every contender — the evolved genome included — gets its learning rate
   (and its weight decay, when it has one) tuned by its own Optuna study with exactly ``trials``
   trials on the **validation** split, the same sampler and seed, the same search window relative to
   its own default lr (from 2.5 decades below to 1.5 above) and the same start: the window cut into
   equal log-lr cells, the default standing in for its nearest cell, the others tried at their
   centres, then TPE. The studies live in the storage
   (``bench:<contender>:<task>:<key>``) so a rerun reuses them; only the first ``trials`` complete
   trials ever count, so a study tuned with a larger budget earlier cannot favour one contender.
2. **Paired seeds on the test split.** Each contender then runs with its tuned setting on N final
   seeds (disjoint from the tuning seed; ``--seed-base`` moves them) and is scored on the **test** split
   (``--split val`` scores them on the validation split instead: for decisions, leaving the test split unread). In one (task, seed) unit
   every contender starts from the same initial weights and sees the same batches, so differences are
   paired per seed and reported with a paired t interval.
3. **Held-out tasks.** The tasks the study searched on are reported apart from the others.

The parts: ``contenders`` (who competes), ``config`` (the budget), ``tuning`` (step 1), ``runs`` (training:
genome contenders batched by the evaluator, Muon one model at a time), ``results`` (scores, paired summaries,
JSON), ``report`` (Markdown) and ``plots``; this module ties them together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from optsearch.benchmark.config import DEFAULT_HELD_OUT, FINAL_SEED_BASE, TUNE_SEEDS, BenchmarkConfig
from optsearch.benchmark.contenders import Contender, default_contenders, parse_contenders
from optsearch.benchmark.plots import plot_bars, plot_curves
from optsearch.benchmark.report import markdown
from optsearch.benchmark.results import HELD_OUT, SEARCHED, BenchmarkResult, TaskResult, jsonable, scored
from optsearch.benchmark.runs import evaluate_settings
from optsearch.benchmark.tuning import quiet_optuna, tune
from optsearch.errors import ConfigError, StudyError
from optsearch.genome import Genome, resolve


def write_outputs(result: BenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """``report.md``, ``results.json``, ``bars.png`` and ``curves.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "json": out / "results.json", "bars": out / "bars.png",
             "curves": out / "curves.png"}
    paths["report"].write_text(markdown(result), encoding="utf-8")
    text = json.dumps(jsonable(result.to_json()), indent=1, ensure_ascii=False)
    paths["json"].write_text(text + "\n", encoding="utf-8")
    plot_bars(result, paths["bars"])
    plot_curves(result, paths["curves"])
    return paths


def run_benchmark(name: str, evolved: Sequence[tuple[str, Genome]], cfg: BenchmarkConfig, *,
                  storage: str | None = None, out_dir: str | Path | None = None,
                  contenders: Sequence[Contender] | None = None, muon: bool = True,
                  baseline_recipe: str = "evolved", only: Sequence[str] | None = None,
                  log: Callable[[str], None] = lambda s: None) -> BenchmarkResult:
    """Tune every contender on every task (reusing stored tuning studies), score them on the test split.

    Args:
        name: the benchmark's label (report title, default output folder).
        evolved: (name, genome) of the genome(s) under test; the first is the reference of the paired
            differences.
        cfg: tasks, which of them were searched, seeds, trials, budget.
        storage: where the tuning studies live (default: the project's default storage).
        contenders: the full list (default: :func:`default_contenders`).
        muon, baseline_recipe, only: passed to :func:`default_contenders` (unused when ``contenders`` is
            given: the report reads each contender's recipe from the contender itself).
        log: progress lines.
    """
    from optsearch.search.storage import open_storage
    from optsearch.train.tasks import data_dir as resolve_data_dir, get_task

    cfg.validate()
    for t in cfg.tasks:  # a missing dataset fails before any tuning trial is created
        get_task(t).read(resolve_data_dir(cfg.data_dir))
    cs = list(contenders) if contenders is not None else default_contenders(evolved, muon=muon, only=only,
                                                                             baseline_recipe=baseline_recipe)
    names = [c.name for c in cs]
    if len(set(names)) != len(names):
        raise ConfigError(f"contender names must be distinct, got {names}")
    with quiet_optuna():
        st = open_storage(storage)
    tasks: dict[str, TaskResult] = {}
    for task in cfg.tasks:
        tuned = tune(cs, task, cfg, st, log=log)
        log(f"scoring {len(cs)} contenders on {task} ({cfg.seeds} seeds, {cfg.split} split)")
        scores = evaluate_settings(task, [(c, tuned[c.name].params) for c in cs], cfg.final_seeds, cfg, split=cfg.split)
        tasks[task] = TaskResult(task=task, group=SEARCHED if cfg.searched_through(task) else HELD_OUT,
                                 seeds=cfg.final_seeds, tuned=tuned,
                                 scores={c.name: scored(s, task) for c, s in zip(cs, scores)})
    result = BenchmarkResult(name=name, config=cfg, contenders=cs, tasks=tasks)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def _genome_label(spec: str) -> str:
    from optsearch.genome import NAMED

    return spec if spec in NAMED else Path(spec).stem


def run_cli(study_name: str | None = None, genome_files: Sequence[str] = (), tasks: str | None = None,
            seeds: int = 5, steps: int | None = None, trials: int = 8, subsample: int | None = None,
            batch_size: int | None = None, out_dir: str | None = None, storage: str | None = None, device: str | None = None,
            data_dir: str | None = None, baseline_recipe: str = "evolved", contenders: str | None = None,
            tune_seeds: int = len(TUNE_SEEDS), split: str = "test", seed_base: int = FINAL_SEED_BASE) -> str:
    """``python -m optsearch benchmark``: returns the report text (the files are in the output folder)."""
    import sys
    import time

    if not study_name and not genome_files:
        raise ConfigError("give a study NAME or at least one --genome FILE|NAME to benchmark")
    only = parse_contenders(contenders)
    evolved: list[tuple[str, Genome]] = []
    searched: frozenset[str] = frozenset()
    study_tasks: tuple[str, ...] = ()
    if study_name:
        from optsearch.search.study import open_study, study_winner

        study, scfg = open_study(study_name, storage)
        winner = study_winner(study)  # the simplified funnel winner, else the best trial
        if winner is None:
            raise StudyError(f"study {study_name!r} has no completed trials to benchmark")
        evolved.append((winner[0], winner[1]))
        searched = frozenset(scfg.tasks) | (frozenset(scfg.funnel.tasks) if scfg.funnel.enabled else frozenset())
        study_tasks = tuple(scfg.tasks)
    for spec in genome_files:
        evolved.append((_genome_label(spec), resolve(spec)))
    if tasks:
        task_list = tuple(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
    else:
        task_list = tuple(dict.fromkeys((*study_tasks, *DEFAULT_HELD_OUT)))
    if device is not None and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    cfg = BenchmarkConfig(tasks=task_list, searched=searched, seeds=seeds, trials=trials,
                          steps=steps, batch_size=batch_size, subsample=subsample, device=device, data_dir=data_dir,
                          tune_seeds=tuple(range(tune_seeds)), split=split, seed_base=seed_base)
    name = study_name or evolved[0][0]
    out = Path(out_dir) if out_dir else Path("reports") / f"benchmark-{name.replace('/', '_').replace('#', '-')}"
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    result = run_benchmark(name, evolved, cfg, storage=storage, out_dir=out, baseline_recipe=baseline_recipe,
                           only=only, log=log)
    text = markdown(result)
    return f"{text}\nwrote {out}/report.md, results.json, bars.png, curves.png ({time.perf_counter() - t0:.0f} s)"


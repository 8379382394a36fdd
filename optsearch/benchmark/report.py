"""The benchmark's Markdown report: protocol, one table per task, one aggregate table per group."""

from __future__ import annotations

from typing import Any

from optsearch import stats
from optsearch.benchmark.contenders import LR_ABOVE, LR_BELOW, PAPER, Contender, recipe_text
from optsearch.benchmark.results import AT_CHANCE, BenchmarkResult, TaskResult, at_chance
from optsearch.benchmark.tuning import EXTEND, EXTEND_TRIALS, Tuned, rounds


def _verdict(diff: stats.Interval | None, ref: str, at_edge: bool) -> str:
    """:func:`optsearch.stats.verdict` in a cell: the test seeds never tuned or picked anything, so only an
    interval that includes 0, too few seeds or a best lr at an end of a tuning window withholds the word."""
    if diff is None:
        return "(reference)"
    v = stats.verdict(diff, selected_on_these_runs=False, reference_at_edge=at_edge)
    return f"{ref} {v.word}" if v.established else v.text()


def at_window_edge(contender: Contender, tuned: Tuned, trials: int) -> bool:
    """Is the tuned lr in an outermost cell of the contender's start grid (its optimum may lie beyond the window)?

    The grid cuts the window into the first tuning round's number of equal log-lr cells
    (:func:`optsearch.benchmark.tuning.rounds`); with one cell only the default was tried, so the
    optimum is unknown and counts as at the edge."""
    if tuned.window is not None:  # tuned with edge extensions: still at an edge only where the lr range ended
        return tuned.edge is not None
    lo, hi = contender.lr_range
    cell = (hi - lo) / rounds(trials)[0]
    x = tuned.params["lr_log10"]
    return bool(x < lo + cell or x > hi - cell)


def _acc(result: BenchmarkResult) -> str:
    """Which accuracy the final runs report: ``test`` or ``validation`` (``--split``)."""
    return "validation" if result.config.split == "val" else "test"


def _recipe_sentence(result: BenchmarkResult) -> str:
    r = result.baseline_recipe
    if r == "mixed":
        return "their own recipes (listed below)"
    src = {c.recipe_source for c in result.contenders if c.role == "baseline"}
    return f"{r}" + (f" (the recipe of {src.pop()})" if len(src) == 1 and next(iter(src)).startswith("evolved") else "")


def _headline(result: BenchmarkResult) -> list[str]:
    """Evolved − the best recipe-matched baseline (by mean accuracy over all tasks): the rule, not the recipe."""
    matched = result.recipe_matched
    ref = result.reference
    if not matched:
        return [f"**Headline:** no baseline ran with {ref}'s recipe, so no difference here isolates the update rule "
                f"(rerun with `--baseline-recipe evolved`)."]
    ts = list(result.tasks)
    summ = result.summary(lambda c: result.aggregate(ts, c))
    best = max(matched, key=lambda n: summ[n]["interval"].mean)
    d = summ[best]["diff"]
    by_name = {c.name: c for c in result.contenders}
    edge = any(at_window_edge(by_name[n], result.tasks[t].tuned[n], result.config.trials) for n in (ref, best) for t in ts)
    return [f"**Headline:** {ref} − the best recipe-matched baseline ({best}), mean {_acc(result)} accuracy over "
            f"{', '.join(ts)}: {d.fmt(100, signed=True)} pp (95 % paired t interval over {d.n} seeds; "
            f"{_verdict(d, ref, edge)})."]


def _fmt_params(tuned: Tuned) -> tuple[str, str]:
    lr = f"{10 ** tuned.params['lr_log10']:.2g}"
    wd = f"{10 ** tuned.params['wd_log10']:.2g}" if "wd_log10" in tuned.params else "—"
    return lr, wd


def markdown(result: BenchmarkResult) -> str:
    """The report: protocol, one table per task, one aggregate table per group (held-out first)."""
    from optsearch.train.tasks import FITNESS_TEXT, WORST_FITNESS

    cfg, ref = result.config, result.reference
    ref_c = next(c for c in result.contenders if c.name == ref)
    lines = [f"# Benchmark: {result.name}", ""]
    lines.append(f"Reference (evolved): **{ref}** — `{ref_c.formula()}`")
    lines.append("")
    lines.append(
        f"Protocol: every contender's learning rate (and weight decay, where it has one) was tuned with "
        f"**{cfg.trials} trials** each (Optuna TPE, seed {cfg.sampler_seed}; the contender's default is one of them; "
        f"lr from {LR_BELOW:g} decades below its default to {LR_ABOVE:g} above, default in place of its nearest of equal log-lr cells, the other cells' centres, then TPE) on the validation split with tuning seed(s) "
        f"{', '.join(map(str, cfg.tune_seeds))}; then each ran with its tuned setting on **{cfg.seeds} seeds** "
        f"({cfg.final_seeds[0]}…{cfg.final_seeds[-1]}), scored on the **{cfg.split}** split{' (validation: test split unread)' if cfg.split == 'val' else ''}. Steps: "
        f"{cfg.steps or 'task default'}; batch: {cfg.batch_size or 'task default'}; training examples: "
        f"{cfg.subsample or 'task default'}. Every contender sees the same initial weights and batches per seed. "
        f"Baselines (genomes and Muon) run with {_recipe_sentence(result)}; evolved genomes and {PAPER} keep their "
        f"own. A diverged seed scores chance-level accuracy; a seed that did not diverge but ended within "
        f"{100 * AT_CHANCE:g} points of chance is counted as *at chance* (a collapsed run).")
    lines.append("")
    lines.append(f"{_acc(result).capitalize()} accuracy in %, mean ± half-width of the 95 % t interval over seeds. "
                 f"Δ = {ref} − contender in accuracy points, paired per seed, with its 95 % paired t interval; "
                 f"the verdict is *better*/*worse* only when that interval excludes 0 and neither side's tuned lr "
                 f"lies in an outermost cell of its tuning window (it may be under-tuned), else *not established* "
                 f"with the reason. Val fitness: {FITNESS_TEXT}.")
    if cfg.seeds < 5:
        lines += ["", f"**Warning:** only {cfg.seeds} seeds; intervals are wide and fragile (use ≥ 5)."]
    lines += ["", "Recipes (schedule and clipping):", ""]
    lines += [f"- {c.name}: {recipe_text(c.recipe)}" + (f" (from {c.recipe_source})" if c.recipe_source != "own" else "")
              for c in result.contenders]
    extended = [f"{name} on {t} ({', '.join(tu.extensions)}; window 10^{tu.window[0]:.2f}…10^{tu.window[1]:.2f}"
                f"{'; still at its ' + tu.edge + ' edge: the lr range ends there' if tu.edge else ''})"
                for t, r in result.tasks.items() for name, tu in r.tuned.items() if tu.extensions]
    if extended:
        lines += ["", f"Tuning windows extended (the best lr lay at an edge; {EXTEND:g} decade and {EXTEND_TRIALS} more "
                      f"trials per extension): {'; '.join(extended)}."]
    lines += ["", *_headline(result)]
    lines.append("")
    through = {t: cfg.searched_through(t) for t in cfg.tasks}
    searched = [t if s == t else f"{t} (its training data, through {s})" for t, s in through.items() if s]
    lines.append(f"{ref} was searched on: {', '.join(sorted(cfg.searched)) or 'unknown (no study given, so every task counts as held-out)'}. Here, searched tasks: "
                 f"{', '.join(searched) or 'none'}; held-out tasks: "
                 f"{', '.join(t for t, s in through.items() if not s) or 'none'}.")
    if any(c.name == PAPER for c in result.contenders):
        lines.append(f"`{PAPER}` was selected by its authors on mnist, fashion_mnist and cifar10 (their test splits).")
    for group, ts in result.groups().items():
        lines += ["", f"## {group.capitalize()} tasks", ""]
        for t in ts:
            r = result.tasks[t]
            lines += [f"### {t} ({group})", ""]
            lines += _table(result, result.summary(r.accuracy), r, [t])
            lines.append("")
        lines += [f"### Aggregate over {group} tasks ({', '.join(ts)})", "",
                  f"Per seed, the mean {_acc(result)} accuracy over these tasks; then the interval over seeds.", ""]
        lines += _table(result, result.summary(lambda c, ts=ts: result.aggregate(ts, c)), None, ts)
    if any(tu.value <= WORST_FITNESS for r in result.tasks.values() for tu in r.tuned.values()):
        lines += ["", f"val fitness *all diverged*: every tuning trial of that contender diverged on that task, so "
                      f"no setting was better than another and the one shown is its first trial (its default)."]
    lines.append("")
    return "\n".join(lines)


def _table(result: BenchmarkResult, summ: dict[str, dict[str, Any]], r: TaskResult | None,
           tasks: list[str]) -> list[str]:
    from optsearch.train.tasks import WORST_FITNESS

    ref = result.reference
    by_name = {c.name: c for c in result.contenders}

    def edge(name: str) -> bool:  # on any of the table's tasks
        return any(at_window_edge(by_name[name], result.tasks[t].tuned[name], result.config.trials) for t in tasks)

    head = "| contender | " + ("tuned lr | tuned wd | val fitness | " if r else "") + \
           f"{_acc(result)} acc % | Δ vs {ref} (pp) | verdict |" + (" diverged / at chance |" if r else "")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in result.contenders:
        s = summ[c.name]
        diff = s["diff"]
        cells = [f"{c.name}{' *' if c.role == 'evolved' else ''}"]
        if r:
            lr, wd = _fmt_params(r.tuned[c.name])
            v = r.tuned[c.name].value
            cells += [lr, wd, "*all diverged*" if v <= WORST_FITNESS else f"{v:.4f}"]
        cells += [s["interval"].fmt(100), "—" if diff is None else diff.fmt(100, signed=True), _verdict(diff, ref, edge(c.name) or edge(ref))]
        if r:
            units = r.scores[c.name]
            cells.append(f"{sum(u.diverged for u in units)} / {sum(at_chance(u, r.task) for u in units)}")
        out.append("| " + " | ".join(cells) + " |")
    return out

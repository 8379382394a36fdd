"""Analysis of a study: importances, design principles with uncertainty, figures, and a report.

``analyze_study`` reads a (finished or running) study, picks one objective (the aggregate fitness,
a task's fitness, or the mean of a per-task study's values), and writes ``report.md``,
``principles.json`` and PNG figures to an output folder. The same note and interactive figures go
into the study itself for optuna-dashboard, replacing those of an earlier run.

The pieces are public so the scripts in ``analysis/`` (and a researcher) can run them one by one:
:func:`load_study_data` → :func:`optsearch.analysis.importance.compute_importance` →
:func:`optsearch.analysis.principles.compute_principles` → :func:`optsearch.analysis.figures.write_figures` / :func:`report_markdown`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.errors import GenomeError, OptsearchError, StudyError
from optsearch.genome import Genome, search_space
from optsearch.analysis.figures import plotly_figures, write_figures
from optsearch.analysis.importance import Features, Importance, compute_importance, genome_features, unit_label
from optsearch.analysis.principles import N_BOOT, Principle, compute_principles
from optsearch.search.storage import open_existing_study, open_storage
from optsearch.train.tasks import WORST_FITNESS

MIN_TRIALS = 10
"""Fewer analysable trials than this cannot support any of the estimates."""
AGGREGATE = "aggregate"
DASHBOARD_FIGURES = ("importance", "history", "terms", "principles")


# ----------------------------------------------------------------------------- reading a study
@dataclass
class StudyData:
    """The trials of one study, reduced to what the analysis needs.

    Attributes:
        study: the Optuna study (for saving the dashboard note and figures).
        objective: ``fitness``, a task name, or ``aggregate`` (mean of a per-task study's values).
        label: how the objective is named in sentences ("fitness", "digits fitness", …).
        objective_names: the study's metric names (one per value).
        genomes, y, numbers, generation: the analysed trials — complete and not diverged.
        values: (n, m) the analysed trials' raw objective values (for the Pareto front).
        diverged, diverged_generation: trials that diverged (excluded from fitness effects).
        population: (generation, genome) of every trial that has a genome, for term frequencies.
        counts: trial counts by outcome.
    """

    study: optuna.Study
    objective: str
    label: str
    objective_names: list[str]
    genomes: list[Genome]
    y: np.ndarray
    numbers: np.ndarray
    generation: np.ndarray
    values: np.ndarray
    diverged: list[Genome] = field(default_factory=list)
    diverged_generation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    population: list[tuple[int, Genome]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def per_task(self) -> bool:
        return len(self.objective_names) > 1


def _generation(t: FrozenTrial) -> int | None:
    g = t.user_attrs.get("generation")
    if g is None:  # the GA sampler's own record, "<Sampler>:generation"
        g = next((v for k, v in t.system_attrs.items() if k.endswith(":generation")), None)
    return int(g) if isinstance(g, (int, float)) else None


def _objective(study: optuna.Study, objective: str | None) -> tuple[str, str, Any]:
    """(key, label, value-of-trial function) for the chosen objective."""
    names = list(study.user_attrs.get("objectives") or study.metric_names or ["fitness"])
    if len(names) != len(study.directions):
        names = [f"objective_{i}" for i in range(len(study.directions))]
    tasks = list(study.user_attrs.get("tasks") or [])
    if any(d != optuna.study.StudyDirection.MAXIMIZE for d in study.directions):
        raise StudyError(f"study {study.study_name!r} minimizes an objective; optsearch analyses maximized fitness")
    if objective in (None, AGGREGATE, "fitness", "mean"):
        if len(names) == 1:
            return names[0], names[0], lambda t: t.values[0]
        return AGGREGATE, "mean task fitness", lambda t: float(np.mean(t.values))
    if objective in names:
        i = names.index(objective)
        return objective, f"{objective} fitness", lambda t: t.values[i]
    if objective in tasks:  # single-objective study: the task's fitness is a user attr
        return objective, f"{objective} fitness", lambda t: t.user_attrs.get(f"{objective}_fitness", math.nan)
    known = ", ".join(dict.fromkeys([*([AGGREGATE] if len(names) > 1 else []), *names, *tasks]))
    raise StudyError(f"study {study.study_name!r} has no objective {objective!r}; choose one of: {known}")


def load_study_data(name: str, storage: str | None = None, objective: str | None = None) -> StudyData:
    """Read a study's trials for the chosen objective (see :class:`StudyData`)."""
    study = open_existing_study(name, storage)
    key, label, value_of = _objective(study, objective)
    cfg = study.user_attrs.get("config") or {}
    pop = cfg.get("population") or (cfg.get("search") or {}).get("population")
    counts = {"complete": 0, "diverged": 0, "pruned": 0, "failed": 0, "running": 0}
    genomes, y, numbers, gens, values, div, div_gen, population = [], [], [], [], [], [], [], []
    names = set(search_space())
    for i, t in enumerate(study.get_trials(deepcopy=False)):
        if t.state == TrialState.FAIL:
            counts["failed"] += 1
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            counts["running"] += 1
            continue
        if not names <= set(t.params):
            if t.state == TrialState.COMPLETE:
                raise StudyError(f"study {name!r}: trial {t.number} has no genome parameters (not an optsearch study?)")
            continue
        try:
            g = Genome.from_params(t.params)
        except GenomeError as e:
            raise StudyError(f"study {name!r}: trial {t.number}: {e}") from None
        gen = _generation(t)
        gen = gen if gen is not None else (t.number // int(pop) if pop else 0)
        population.append((gen, g))
        diverged = bool(t.user_attrs.get("diverged")) or (
            t.state == TrialState.COMPLETE and any(v <= WORST_FITNESS for v in t.values))
        if diverged:
            counts["diverged"] += 1
            div.append(g)
            div_gen.append(gen)
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        else:
            v = value_of(t)
            if v is None or not math.isfinite(v):
                continue
            counts["complete"] += 1
            genomes.append(g)
            y.append(float(v))
            numbers.append(t.number)
            gens.append(gen)
            values.append(list(t.values))
    if len(genomes) < MIN_TRIALS:
        raise StudyError(f"study {name!r} has {len(genomes)} completed, non-diverged trials with a {label}; "
                         f"the analysis needs at least {MIN_TRIALS} (run more generations)")
    return StudyData(study, key, label, list(study.user_attrs.get("objectives") or study.metric_names or ["fitness"]),
                     genomes, np.array(y), np.array(numbers), np.array(gens, dtype=int),
                     np.array(values, dtype=float), div, np.array(div_gen, dtype=int), population, counts)


# ----------------------------------------------------------------------------- the whole analysis
@dataclass
class Analysis:
    data: StudyData
    features: Features
    importance: Importance
    principles: list[Principle]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = self.data
        return {
            "study": d.name,
            "objective": d.objective,
            "objective_label": d.label,
            "counts": d.counts,
            "excluded": ("diverged trials carry a sentinel fitness, not a measurement: they are excluded from the "
                         "fitness effects and reported separately as divergence-rate effects; pruned trials have "
                         "no final value and are excluded"),
            "best": {"trial": int(d.numbers[np.argmax(d.y)]), "value": float(d.y.max()),
                     "formula": d.genomes[int(np.argmax(d.y))].formula()},
            "importance": self.importance.to_dict(),
            "principles": [p.to_dict() for p in self.principles],
        }


def analyze(data: StudyData, *, seed: int = 0) -> Analysis:
    """Importances and principles of the loaded trials (nothing is written)."""
    t0 = time.perf_counter()
    features = genome_features(data.genomes)
    imp = compute_importance(data.genomes, data.y, seed=seed, features=features)
    principles = compute_principles(data.genomes, data.y, diverged=data.diverged, surrogate=imp.surrogate,
                                    features=features, unit=data.label, seed=seed)
    return Analysis(data, features, imp, principles, time.perf_counter() - t0)


def analyze_study(name: str, storage: str | None = None, objective: str | None = None,
                  out_dir: str | Path | None = None, *, dashboard: bool = True, seed: int = 0) -> str:
    """Analyse a study, write report.md, principles.json and figures, save them for the dashboard.

    Args:
        name: the study.
        storage: storage URL (default ``$OPTSEARCH_STORAGE``, else ``sqlite:///studies/optsearch.db``).
        objective: a task name for per-task objectives (default: the aggregate fitness).
        out_dir: output folder (default ``reports/NAME``).
        dashboard: also save the note and figures into the study for optuna-dashboard.
        seed: seeds fANOVA, the forest, the folds and every bootstrap.

    Returns:
        A few lines to print, naming the output folder.
    """
    data = load_study_data(name, storage, objective)
    result = analyze(data, seed=seed)
    out = output_dir(name, out_dir)
    files = write_outputs(result, out)
    lines = [summary_text(result), f"wrote {out}: {', '.join(p.name for p in files)}"]
    if dashboard:
        ids = save_to_dashboard(result)
        lines.append(f"saved the analysis note and {len(ids)} figures into the study for optuna-dashboard "
                     f"(python -m optsearch dashboard {name})")
    return "\n".join(lines)


def write_outputs(result: Analysis, out: Path) -> list[Path]:
    """report.md, principles.json and the PNG figures in ``out``; returns the files written."""
    pngs = write_figures(result, out)
    js = write_json(result.to_dict(), out / "principles.json")
    (out / "report.md").write_text(report_markdown(result, [p.name for p in pngs]), encoding="utf-8")
    return [out / "report.md", js, *pngs]


def write_json(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=_jsonable) + "\n", encoding="utf-8")
    return path


def output_dir(name: str, out_dir: str | Path | None) -> Path:
    """The output folder: the given one, else ``reports/NAME``."""
    return Path(out_dir) if out_dir else Path("reports") / name


def script_main(description: str, body: Callable[[argparse.Namespace], str], argv: Sequence[str] | None = None) -> int:
    """The shared front of the scripts in ``analysis/``: ``NAME [--storage URL] [--objective T] [-o DIR]``.

    Errors a user can cause print one line and exit 2, as in the CLI.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("name", help="the study")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/optsearch.db)")
    p.add_argument("--objective", help="a task name for per-task objectives (default: the aggregate)")
    p.add_argument("-o", "--output", help="output folder (default: reports/NAME)")
    p.add_argument("--seed", type=int, default=0, help="seed of fANOVA, the forest and the bootstraps (default 0)")
    args = p.parse_args(argv)
    try:
        print(body(args))
    except OptsearchError as e:
        print(f"optsearch: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x).__name__)


# ----------------------------------------------------------------------------- text
def _counts_line(d: StudyData) -> str:
    c = d.counts
    return (f"{c['complete']:,} completed trials analysed; {c['diverged']:,} diverged (excluded from fitness effects, "
            f"their rates reported separately); {c['pruned']:,} pruned and {c['failed']:,} failed (no final value); "
            f"{c['running']:,} running")


def top_importances(result: Analysis, k: int = 5) -> str:
    imp = result.importance.ped_anova
    return ", ".join(f"{u} {imp[u]:.2f}" for u in result.importance.ranking()[:k])


def summary_text(result: Analysis) -> str:
    d, s = result.data, result.importance.surrogate
    est = [p for p in result.principles if p.established and p.kind != "divergence"]
    tested = [p for p in result.principles if p.kind != "divergence"]
    lines = [f"study {d.name!r} ({d.label}): {_counts_line(d)}",
             f"importance (PED-ANOVA): {top_importances(result)}; surrogate CV R² {s.r2:.2f} ({s.verdict()})",
             f"{len(est)} of {len(tested)} principles established in {result.seconds:.1f} s"]
    for p in sorted(est, key=lambda p: -abs(p.effect or 0))[:3]:
        lines.append(f"  {p.sentence}")
    return "\n".join(lines)


def importance_table(imp: Importance) -> list[str]:
    """The importance of every unit by the three methods, as Markdown table rows."""
    fa, sp = imp.fanova, imp.surrogate.importance
    rows = ["| unit | PED-ANOVA | fANOVA (mean ± sd, 3 seeds) | forest: R² lost when permuted (± sd) |",
            "|---|---:|---:|---:|"]
    for u in imp.ranking():
        f = f"{fa[u][0]:.3f} ± {fa[u][1]:.3f}" if u in fa else "–"
        p = f"{sp[u][0]:.3f} ± {sp[u][1]:.3f}" if u in sp else "–"
        rows.append(f"| {unit_label(u)} | {imp.ped_anova[u]:.3f} | {f} | {p} |")
    return rows


def principles_markdown(result: Analysis, *, images: Sequence[str] = ()) -> str:
    """The body shared by report.md and the dashboard note."""
    d, imp = result.data, result.importance
    s = imp.surrogate
    best = int(np.argmax(d.y))
    ps = result.principles
    sec = lambda kind: [p for p in ps if p.kind == kind]  # noqa: E731
    n_ci = sum(p.ci is not None for p in ps)
    lines = [
        f"Objective: **{d.label}**. {_counts_line(d)}.",
        "",
        f"Best analysed trial: #{d.numbers[best]} (generation {d.generation[best]}), {d.label} {d.y[best]:.4f}: "
        f"`{d.genomes[best].formula()}`",
        "",
        "## Importance",
        "",
        "Units are genes, switches and primitives (for the Optuna evaluators, whether a primitive is present in any "
        "slot; for the forest, its presence and total weight Σα over the slots together, since slot order is "
        f"arbitrary). The forest surrogate has cross-validated R² = {s.r2:.2f} ± {np.std(s.cv_r2):.2f} "
        f"({len(s.cv_r2)} folds) and out-of-bag R² = {s.oob_r2:.2f}: it {s.verdict()}.",
        "",
        *importance_table(imp),
        "",
        "PED-ANOVA over the raw Optuna parameters (what the dashboard's own importance view shows): "
        + ", ".join(f"{k} {v:.3f}" for k, v in list(imp.raw_ped_anova.items())[:8]) + ".",
        "",
    ]
    for img in images:
        if img.startswith("importance"):
            lines += [f"![importance]({img})", ""]
    for title, kind in (("Switches", "switch"), ("Primitives", "primitive"), ("Continuous genes", "continuous"),
                        ("Divergence (reported separately)", "divergence")):
        group = sec(kind)
        if not group:
            continue
        lines += [f"## {title}", ""]
        est = [p for p in group if p.established]
        rest = [p for p in group if not p.established]
        lines += [f"- **{p.sentence}**" for p in est] + [f"- {p.sentence}" for p in rest] + [""]
    lines += [
        "## Method",
        "",
        "Effects are mean differences between trials that depart from the hand-crafted choice (Adam's setting of a "
        "switch; having a primitive) and those that keep it, with seeded bootstrap 95 % percentile intervals "
        f"({N_BOOT:,} resamples); an interval that crosses zero is *not established*. Top-quantile effects condition on "
        "the best 25 % of trials. A continuous gene's top-10 % range is found on one random half of the trials and "
        "tested on the other half. Diverged trials are excluded from fitness effects (their fitness is a sentinel) "
        f"and compared by divergence rate instead. {n_ci} intervals are computed, so at 95 % about {0.05 * n_ci:.0f} may "
        "exclude zero by chance: trust effects that are large, hold among the top trials too, and agree with the importances. "
        "Trials of an evolutionary search are not a randomised experiment: an effect is an association within what "
        "the search sampled.",
        "",
    ]
    return "\n".join(lines)


def report_markdown(result: Analysis, images: Sequence[str] = ()) -> str:
    d = result.data
    figs = [f"![{Path(i).stem}]({i})" for i in images if not i.startswith("importance")]
    return (f"# Analysis of study `{d.name}` — {d.label}\n\n" + principles_markdown(result, images=images)
            + ("\n## Figures\n\n" + "\n\n".join(figs) + "\n" if figs else ""))


# ----------------------------------------------------------------------------- dashboard
def _marker(objective: str, end: bool) -> str:
    # A link reference definition: valid Markdown that renders as nothing, so the markers stay invisible.
    return f"[//]: # (optsearch-analysis-{objective}-{'end' if end else 'begin'})"


def replace_section(note: str, objective: str, body: str) -> str:
    """``note`` with this objective's analysis section replaced (or appended); other text is kept."""
    begin, end = _marker(objective, False), _marker(objective, True)
    section = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(note):
        return pattern.sub(lambda _: section, note, count=1)
    return (note.rstrip() + "\n\n" if note.strip() else "") + section + "\n"


def graph_id(objective: str, figure: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]", "-", objective)
    return f"optsearch-{slug}-{figure}"


def save_to_dashboard(result: Analysis) -> list[str]:
    """Save the note and the interactive figures into the study, replacing an earlier analysis's.

    The study note is shared (the creation note holds the config), so only this objective's section
    is replaced; figures have fixed ids per objective, so re-running overwrites them.
    """
    from optuna_dashboard import get_note, save_note, save_plotly_graph_object

    d = result.data
    body = f"## optsearch analysis — {d.label}\n\n" + principles_markdown(result)
    save_note(d.study, replace_section(get_note(d.study), d.objective, body))
    ids = []
    for name, fig in plotly_figures(result).items():
        ids.append(save_plotly_graph_object(d.study, fig, graph_object_id=graph_id(d.objective, name)))
    return ids


# ----------------------------------------------------------------------------- ground truth
SYNTHETIC_TASKS = ("digits", "mnist1d")


def synthetic_fitness(g: Genome, rng: np.random.Generator, *, per_task: bool, noise: float = 0.01) -> dict[str, float] | None:
    """Known per-task fitness of a genome, or None when it "diverges".

    Both tasks: +0.10 at lr_log10 = −2.5 (Gaussian bump, width 0.6), +0.02 with an adam term, nothing
    from ε. digits: +0.05 without bias correction. mnist1d: +0.05 without bias correction in the
    aggregate variant; −0.03 in the per-task variant (a trade-off, so there is a Pareto front), and a
    bump at β1 = 0.86. Genomes with lr_log10 > −1 and no clipping diverge.
    """
    if g.lr_log10 > -1.0 and g.clip == "none":
        return None
    common = 0.10 * math.exp(-(((g.lr_log10 + 2.5) / 0.6) ** 2)) + 0.02 * ("adam" in g.merged_terms())
    off = not g.bias_correction
    digits = 0.60 + common + 0.05 * off + rng.normal(0, noise)
    mnist1d = (0.50 + common + 0.05 * math.exp(-(((g.beta1 - 0.86) / 0.1) ** 2)) + (-0.03 if per_task else 0.05) * off
               + rng.normal(0, noise))
    return {"digits": digits, "mnist1d": mnist1d}


def synthetic_study(name: str, storage: str, *, n_trials: int = 400, seed: int = 0, per_task: bool = False,
                    population: int = 50) -> optuna.Study:
    """A study in ``storage`` whose fitness is :func:`synthetic_fitness` of randomly sampled genomes.

    Trials look like the study layer's (params, values, "generation"/"formula"/"diverged"/"seeds" and
    per-task user attrs; diverged members PRUNED), so the analysis can be checked against known truth.
    """
    from optsearch.genome import define_search_space

    rng = np.random.default_rng(seed)
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    objectives = list(SYNTHETIC_TASKS) if per_task else ["fitness"]
    trials = []
    dists = search_space()
    for i in range(n_trials):
        g = define_search_space(sampler_study.ask())
        fit = synthetic_fitness(g, rng, per_task=per_task)
        attrs: dict[str, Any] = {"formula": g.formula(), "generation": i // population, "diverged": fit is None}
        for task in SYNTHETIC_TASKS:  # accuracy/loss attrs are left out: the analysis does not read them
            attrs[f"{task}_fitness"] = WORST_FITNESS if fit is None else fit[task]
        if fit is None:
            trials.append(optuna.trial.create_trial(params=g.to_params(), distributions=dists, user_attrs=attrs,
                                                    state=TrialState.PRUNED))
        else:
            vals = [fit[t] for t in SYNTHETIC_TASKS] if per_task else [float(np.mean(list(fit.values())))]
            trials.append(optuna.trial.create_trial(params=g.to_params(), distributions=dists, user_attrs=attrs,
                                                    values=vals))
    study = optuna.create_study(study_name=name, storage=open_storage(storage), directions=["maximize"] * len(objectives))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("tasks", list(SYNTHETIC_TASKS))
    study.set_user_attr("synthetic", synthetic_fitness.__doc__.split("\n\n")[1].strip())
    study.add_trials(trials)
    return study


__all__ = [
    "Analysis",
    "StudyData",
    "analyze",
    "analyze_study",
    "load_study_data",
    "save_to_dashboard",
    "synthetic_study",
    "write_outputs",
]

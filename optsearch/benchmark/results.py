"""A benchmark's results: per-task tuning and per-seed scores, paired summaries and the raw JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from optsearch import stats
from optsearch.benchmark.config import BenchmarkConfig, TUNING_PROTOCOL
from optsearch.benchmark.contenders import LR_ABOVE, LR_BELOW, MUON, WD_RANGE, Contender, recipe_text
from optsearch.benchmark.runs import UnitScore
from optsearch.benchmark.tuning import Tuned

SEARCHED, HELD_OUT = "searched", "held-out"
AT_CHANCE = 0.02
"""A seed that did not diverge but ends within this much test accuracy of chance collapsed (e.g. dead units at
an edge-of-stability lr); the report counts such seeds, since they, not noise, are what widens an interval."""


def scored(scores: list[UnitScore], task: str) -> list[UnitScore]:
    """A diverged seed scores chance-level accuracy (it learned nothing usable), so it stays in the pairing."""
    level = chance(task)
    return [replace(s, accuracy=level) if s.diverged or not math.isfinite(s.accuracy) else s for s in scores]


def chance(task: str) -> float:
    from optsearch.train.tasks import get_task

    return 1.0 / get_task(task).num_classes


def at_chance(s: UnitScore, task: str) -> bool:
    return not s.diverged and s.accuracy <= chance(task) + AT_CHANCE


def jsonable(x: Any) -> Any:
    """NaN/inf become null (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


@dataclass
class TaskResult:
    """All contenders on one task: tuning results and per-seed test scores (aligned with ``seeds``)."""

    task: str
    group: str
    seeds: tuple[int, ...]
    tuned: dict[str, Tuned]
    scores: dict[str, list[UnitScore]]

    def accuracy(self, contender: str) -> list[float]:
        return [s.accuracy for s in self.scores[contender]]


@dataclass
class BenchmarkResult:
    """The whole benchmark; :meth:`to_json` holds every raw per-seed number."""

    name: str
    config: BenchmarkConfig
    contenders: list[Contender]
    tasks: dict[str, TaskResult]

    @property
    def baseline_recipe(self) -> str:
        """The baselines' recipe in words, read from the baselines themselves (so a report cannot name a recipe
        other than the one they ran with, e.g. when a caller passes its own contenders); ``mixed`` if they differ."""
        texts = {recipe_text(c.recipe) for c in self.contenders if c.role == "baseline"}
        return texts.pop() if len(texts) == 1 else "mixed"

    @property
    def recipe_matched(self) -> list[str]:
        """The baselines that ran with the reference's recipe: the fair comparisons for the headline."""
        ref = next(c for c in self.contenders if c.name == self.reference)
        return [c.name for c in self.contenders if c.role == "baseline" and c.recipe == ref.recipe]

    @property
    def reference(self) -> str:
        """The contender paired differences are taken against: the first evolved one."""
        for c in self.contenders:
            if c.role == "evolved":
                return c.name
        return self.contenders[0].name

    def groups(self) -> dict[str, list[str]]:
        out = {HELD_OUT: [t for t, r in self.tasks.items() if r.group == HELD_OUT],
               SEARCHED: [t for t, r in self.tasks.items() if r.group == SEARCHED]}
        return {g: ts for g, ts in out.items() if ts}

    def aggregate(self, tasks: Sequence[str], contender: str) -> list[float]:
        """Per seed, the mean test accuracy over ``tasks`` (seeds are aligned across tasks by index)."""
        cols = [self.tasks[t].accuracy(contender) for t in tasks]
        return [sum(v) / len(v) for v in zip(*cols)]

    def summary(self, values_of: Callable[[str], list[float]]) -> dict[str, dict[str, Any]]:
        """Per contender: the mean's t interval, and the paired difference reference − contender."""
        ref = values_of(self.reference)
        out = {}
        for c in self.contenders:
            v = values_of(c.name)
            out[c.name] = {"values": v, "interval": stats.t_interval(v),
                           "diff": None if c.name == self.reference else stats.paired_difference(ref, v)}
        return out

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        tasks = {}
        for t, r in self.tasks.items():
            summ = self.summary(r.accuracy)
            tasks[t] = {
                "group": r.group,
                "seeds": list(r.seeds),
                "contenders": {
                    c.name: {
                        "tuned": {"params": r.tuned[c.name].params, "val_fitness": r.tuned[c.name].value,
                                  "study": r.tuned[c.name].study_name, "trials": r.tuned[c.name].complete_trials,
                                  "lr_window_log10": r.tuned[c.name].window,
                                  "extensions": list(r.tuned[c.name].extensions), "at_edge": r.tuned[c.name].edge},
                        "test_accuracy": [s.accuracy for s in r.scores[c.name]],
                        "train_loss": [s.loss for s in r.scores[c.name]],
                        "test_fitness": [s.fitness for s in r.scores[c.name]],
                        "diverged": [s.diverged for s in r.scores[c.name]],
                        "at_chance": [at_chance(s, t) for s in r.scores[c.name]],
                        "curves": [s.curve for s in r.scores[c.name]],
                        "accuracy_ci": summ[c.name]["interval"].to_dict(),
                        "diff_vs_reference": None if summ[c.name]["diff"] is None else summ[c.name]["diff"].to_dict(),
                    }
                    for c in self.contenders
                },
            }
        aggregate = {}
        for g, ts in self.groups().items():
            summ = self.summary(lambda c, ts=ts: self.aggregate(ts, c))
            aggregate[g] = {"tasks": ts, "contenders": {
                n: {"mean_test_accuracy": s["values"], "accuracy_ci": s["interval"].to_dict(),
                    "diff_vs_reference": None if s["diff"] is None else s["diff"].to_dict()} for n, s in summ.items()}}
        return {
            "name": self.name,
            "reference": self.reference,
            "config": {"tasks": list(cfg.tasks), "searched": sorted(cfg.searched), "seeds": list(cfg.final_seeds),
                       "tune_seeds": list(cfg.tune_seeds), "trials": cfg.trials, "steps": cfg.steps,
                       "batch_size": cfg.batch_size, "subsample": cfg.subsample, "lr_window_decades": [-LR_BELOW, LR_ABOVE], "tuning": TUNING_PROTOCOL,
                       "wd_range_log10": list(WD_RANGE), "sampler": f"TPESampler(seed={cfg.sampler_seed})",
                       "confidence": stats.LEVEL, "split": cfg.split, "baseline_recipe": self.baseline_recipe,
                       "recipe_matched_baselines": self.recipe_matched},
            "contenders": [{"name": c.name, "role": c.role, "kind": "genome" if c.is_genome else MUON,
                            "formula": c.formula(), "recipe": c.recipe, "recipe_text": recipe_text(c.recipe),
                            "recipe_source": c.recipe_source,
                            "genome": c.genome.to_params() if c.genome else None,
                            "lr_range_log10": list(c.lr_range), "tunes_wd": c.wd_log10 is not None}
                           for c in self.contenders],
            "tasks": tasks,
            "aggregate": aggregate,
        }

"""Reading a study for people and files: the run summary, ``study show``, and ``export``."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.errors import StudyError
from optsearch.genome import Genome
from optsearch.search.config import StudyConfig
from optsearch.search.generations import best_trials, completed_generations, generations, scalar_fitness as _scalar
from optsearch.search.storage import open_study


def summary_text(study: optuna.Study, cfg: StudyConfig) -> str:
    best = best_trials(study, 1)
    if not best:
        return f"study {study.study_name!r}: no completed trials yet"
    b = best[0]
    lines = [f"study {study.study_name!r}: {completed_generations(study, cfg.population)}/{cfg.generations} generations",
             f"best genome (trial {b.number}, generation {b.user_attrs.get('generation')}): fitness {_scalar(b):.4f}",
             f"  {b.user_attrs.get('formula') or Genome.from_params(b.params).formula()}"]
    adam = seed_trial(study, "adam")
    if adam is not None:
        diff = _scalar(b) - _scalar(adam)
        lines.append(f"Adam seed (trial {adam.number}): fitness {_scalar(adam):.4f}; best − Adam = {diff:+.4f} "
                     f"({100 * diff / abs(_scalar(adam)):+.1f} %) on the validation fitness")
    return "\n".join(lines)


def seed_trial(study: optuna.Study, genome_name: str) -> FrozenTrial | None:
    """The first completed trial whose genome is exactly the named one (e.g. the Adam seed of generation 0)."""
    target = Genome.named(genome_name).to_params()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.params == target:
            return t
    return None


def show_text(name: str, *, storage: str | None = None, top: int = 5) -> str:
    study, cfg = open_study(name, storage)
    rows = ["gen  complete  pruned  failed  best      median    best formula"]
    for g, ts in generations(study).items():
        done = [t for t in ts if t.state == TrialState.COMPLETE]
        vals = sorted((_scalar(t) for t in done), reverse=True)
        best = max(done, key=_scalar) if done else None
        med = vals[len(vals) // 2] if vals else float("nan")
        rows.append(f"{g:>3}  {len(done):>8}  {sum(t.state == TrialState.PRUNED for t in ts):>6}  "
                    f"{sum(t.state == TrialState.FAIL for t in ts):>6}  "
                    f"{(_scalar(best) if best else float('nan')):<8.4f}  {med:<8.4f}  "
                    f"{best.user_attrs.get('formula', '') if best else ''}")
    out = [summary_text(study, cfg), "", *rows, "", f"top {top} genomes:"]
    for t in best_trials(study, top):
        scores = "  ".join(
            f"{task}: acc {t.user_attrs.get(f'{task}_accuracy', float('nan')):.4f} "
            f"loss {t.user_attrs.get(f'{task}_loss') or float('nan'):.3f}"
            for task in cfg.tasks
        )
        out.append(f"#{t.number} (gen {t.user_attrs.get('generation')}) fitness {_scalar(t):.4f}   {scores}")
        out.append("   " + Genome.from_params(t.params).describe().replace("\n", "\n   "))
    return "\n".join(out)


def export(name: str, output: str, *, storage: str | None = None, trial: int | None = None) -> Genome:
    """Write the best (or the given) trial's genome as JSON for GenomeOptimizer."""
    study, _ = open_study(name, storage)
    if trial is None:
        best = best_trials(study, 1)
        if not best:
            raise StudyError(f"study {name!r} has no completed trials to export")
        chosen = best[0]
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not matches or not matches[0].params:
            raise StudyError(f"study {name!r} has no trial {trial} with a genome")
        chosen = matches[0]
    genome = Genome.from_params(chosen.params)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    genome.save(output)
    return genome

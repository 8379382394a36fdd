"""Reading a study for people and files: the run summary, ``study show``, and ``export``.

The study's answer is :func:`optsearch.search.funnel.study_winner` everywhere: the funnel winner
simplified by its ablation when they ran, else the best trial (studies without a ``[funnel]``)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.errors import GenomeError, StudyError
from optsearch.genome import Genome, upgrade_params
from optsearch.search import ablation
from optsearch.search.config import StudyConfig
from optsearch.search.funnel import final_round, funnel_table, headline, study_winner
from optsearch.search.control import Controls
from optsearch.search.generations import (
    best_trials, completed_generations, generations, outcome, ranking_fitness, scalar_fitness as _scalar,
)
from optsearch.search.storage import open_study
from optsearch.search.worker import trained_share
from optsearch.train.tasks import FITNESS_TEXT


def summary_text(study: optuna.Study, cfg: StudyConfig) -> str:
    """The run summary (``study run``'s last lines, ``study show``'s first): the study's answer first, then
    the evidence behind it, the fitness definition once, and the proxy figures only with their caveats."""
    best = best_trials(study, 1)
    if not best:
        return f"study {study.study_name!r}: no completed trials yet"
    b = best[0]
    lines = [f"study {study.study_name!r}: {completed_generations(study, cfg.population)}/{cfg.generations} generations; "
             f"{FITNESS_TEXT}"]
    winner = study_winner(study)
    if winner is not None:
        what = {"simplified": "funnel winner, simplified by ablation", "funnel": "funnel winner"}.get(winner[2], winner[2])
        lines.append(f"the study's answer ({what}, {winner[0]}): {winner[1].formula()}")
    lines += headline(study)
    if winner is None or winner[2] != "best trial":
        what = ("best on the proxies relative to its generation's control" if _relative(study)
                else "highest told fitness on the proxies")
        lines.append(f"{what}: trial {b.number} (generation "
                     f"{b.user_attrs.get('generation')}), {_scalar(b):.4f}, the maximum of many noisy scores: "
                     f"{_formula(b)}")
    else:
        lines.append(f"trial {b.number} (generation {b.user_attrs.get('generation')}): fitness {_scalar(b):.4f} "
                     "on the proxies")
    adam = seed_trial(study, "adam")
    if adam is not None:
        lines.append(f"Adam seed, untuned (default lr 10^{Genome.named('adam').lr_log10:g}; trial {adam.number}): "
                     f"fitness {_scalar(adam):.4f} on the proxies — its lr was never tuned, so this is no comparison")
    return "\n".join(lines)


def _relative(study: optuna.Study) -> bool:
    """Whether the study ranks by fitness relative to each generation's control (:mod:`.control`)."""
    return Controls(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))).present


def seed_trial(study: optuna.Study, genome_name: str) -> FrozenTrial | None:
    """The first completed trial whose genome is exactly the named one (e.g. the Adam seed of generation 0)."""
    target = Genome.named(genome_name).to_params()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if upgrade_params(t.params) == target:  # an old trial lacks genes added later, or stores β itself
            return t
    return None


def show_text(name: str, *, storage: str | None = None, top: int = 5) -> str:
    study, cfg = open_study(name, storage)
    rows = ["gen  complete  pruned  diverged  failed  trained  best      median    best formula"]
    for g, ts in generations(study).items():
        states = [outcome(t) for t in ts]
        done = [t for t, st in zip(ts, states) if st == "complete"]
        vals = sorted((_scalar(t) for t in done), reverse=True)
        best = max(done, key=_scalar) if done else None
        med = vals[len(vals) // 2] if vals else float("nan")
        rows.append(f"{g:>3}  {len(done):>8}  {states.count('pruned'):>6}  {states.count('diverged'):>8}  "
                    f"{states.count('failed'):>6}  {_share(trained_share(ts)):>7}  "
                    f"{(_scalar(best) if best else float('nan')):<8.4f}  {med:<8.4f}  "
                    f"{_formula(best) if best else ''}")
    out = [summary_text(study, cfg), "", *rows]
    last = final_round(study)
    if last is not None:
        out += ["", *funnel_table(last)]
    done = ablation.read(study)
    if done is not None:
        out += ["", *ablation.summary(done)]
    controls = Controls(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    out += ["", f"top {top} genomes by " + ("fitness less their generation's control (Adam-like member trained on "
                                            "the same seeds: seed-fair across generations):" if controls.present
                                            else "told value:")]
    for t in best_trials(study, top):
        vs = f" ({ranking_fitness(t, controls):+.4f} vs control)" if controls.present else ""
        scores = "  ".join(
            f"{task}: acc {t.user_attrs.get(f'{task}_accuracy', float('nan')):.4f} "
            f"loss {_loss(t.user_attrs.get(f'{task}_loss'))}"
            for task in cfg.tasks
        )
        out.append(f"#{t.number} (gen {t.user_attrs.get('generation')}) fitness {_scalar(t):.4f}{vs}   {scores}")
        out.append("   " + Genome.from_params(t.params).describe().replace("\n", "\n   "))
    return "\n".join(out)


def _formula(t: FrozenTrial) -> str:
    """The trial's rule in today's notation (its stored ``formula`` attr may predate a notation change)."""
    try:
        return Genome.from_params(t.params).formula()
    except GenomeError:
        return str(t.user_attrs.get("formula", ""))


def _share(value: float | None) -> str:
    """The generation's share of member-steps trained (pruning's saving); '-' before it was stored."""
    return "-" if value is None else f"{value:.0%}"


def _loss(value: float | None) -> str:
    """A training loss with 3 significant digits: 2.3e-05 is small, not the "0.000" of a fixed format."""
    return "—" if value is None else f"{value:.3g}"


def export(name: str, output: str, *, storage: str | None = None, trial: int | None = None,
           simplified: bool = True) -> Genome:
    """Write the study's answer (or the given trial's genome) as JSON for GenomeOptimizer.

    The answer is :func:`study_winner`'s: the simplified funnel winner unless ``simplified`` is False
    (then the funnel winner as it was found), or the best trial when no funnel ran. The file also says
    where the genome came from (``provenance``: the funnel's figures and the ablation table), which
    :meth:`Genome.load` ignores."""
    study, _ = open_study(name, storage)
    extra: dict = {}
    if trial is None:
        winner = study_winner(study, simplified=simplified)
        if winner is None:
            raise StudyError(f"study {name!r} has no completed trials to export")
        genome = winner[1]
        extra = {"provenance": provenance(study, winner[0], winner[2])}
    else:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not matches or not matches[0].params:
            raise StudyError(f"study {name!r} has no trial {trial} with a genome")
        genome = Genome.from_params(matches[0].params)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    genome.save(output)
    if extra:
        data = json.loads(Path(output).read_text(encoding="utf-8"))
        Path(output).write_text(json.dumps({**data, **extra}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return genome


def provenance(study: optuna.Study, label: str, source: str) -> dict:
    """Where the study's answer came from, as JSON: the funnel round and the ablation (when they ran)."""
    out: dict = {"study": study.study_name, "label": label, "source": source}
    last = final_round(study)
    if last is not None:
        w = last.winner
        out["funnel"] = {"generation": last.generation, "trial": w.number, "runs": [list(u) for u in last.units],
                         "mean_fitness": w.mean, "told_fitness": w.told, "lr_offset": w.offset,
                         "genome": w.tuned.to_params()}
        done = ablation.read(study)
        if done is not None and done.start == w.tuned:
            out["ablation"] = [{"component": r.component, "dropped": r.dropped, "step": r.step, **r.effect.to_dict()}
                               for r in done.rows]
            diff = done.vs_reference()
            if diff is not None:
                out["simplified_minus_adam"] = diff.to_dict()
    return out

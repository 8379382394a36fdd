"""Studies: create, list and delete; the study layer's front door for the CLI and other callers.

The rest of the study layer lives beside it — :mod:`.run` (``study run``), :mod:`.worker` (one
process's ask/evaluate/tell loop), :mod:`.pruning`, :mod:`.generations` (reading generations and
the best genomes), :mod:`.funnel` and :mod:`.ablation` (confirming and simplifying the winner) and
:mod:`.show` (``study show``, ``export``) — and is re-exported here, so
``from optsearch.search import study; study.run(...)`` keeps working.
"""

from __future__ import annotations

import optuna

from optsearch.errors import StudyError
from optsearch.search import config as configs
from optsearch.search.config import StudyConfig
from optsearch.search.funnel import study_winner
from optsearch.search.generations import (
    FINISHED, GenerationState, best_trials, completed_generations, free_slots, generation_key, generations,
    latest_state, unclaimed_trials,
)
from optsearch.search.pruning import Pruning, pruner_for
from optsearch.search.run import run, worker_devices
from optsearch.search.show import export, seed_trial, show_text, summary_text
from optsearch.search.storage import CONFIG_ATTR, open_existing_study, open_storage, open_study, resolve_url
from optsearch.search.worker import SURPLUS_ATTR, Worker, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


def create(name: str, *, preset: str | None = None, config_path: str | None = None, storage: str | None = None) -> str:
    """Validate the config, create the study and store the config with it. Returns a one-line summary."""
    cfg = configs.preset(preset) if preset else configs.load(config_path)  # type: ignore[arg-type]
    st = open_storage(storage)
    try:
        study = optuna.create_study(
            study_name=name, storage=st, directions=cfg.directions, load_if_exists=False
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(f"a study named {name!r} already exists in {resolve_url(storage)}; "
                         "use `study run` to continue it or `study delete` first") from None
    study.set_metric_names(cfg.objective_names)
    study.set_user_attr(CONFIG_ATTR, cfg.to_dict())
    study.set_user_attr("objectives", cfg.objective_names)
    study.set_user_attr("tasks", list(cfg.tasks))
    _write_dashboard_note(study, cfg)
    mode = "per-task objectives (NSGA-II)" if cfg.per_task else "aggregate fitness"
    if cfg.memory:
        mode += " and optimizer state (minimised; NSGA-II)"
    return (f"created study {name!r} in {resolve_url(storage)}: {', '.join(cfg.tasks)}; population {cfg.population} × "
            f"{cfg.generations} generations; {mode}")


def _write_dashboard_note(study: optuna.Study, cfg: StudyConfig) -> None:
    from optsearch.search.note import write_study_note

    try:
        write_study_note(study, cfg.to_dict())
    except ImportError:  # optuna-dashboard is optional at creation time
        return


def list_text(*, storage: str | None = None) -> str:
    st = open_storage(storage, create=False)
    summaries = optuna.get_all_study_summaries(st, include_best_trial=False)
    if not summaries:
        return f"no studies in {resolve_url(storage)}"
    lines = []
    for s in summaries:
        cfg = s.user_attrs.get(CONFIG_ATTR, {})
        lines.append(f"{s.study_name:20s} {s.n_trials:>6} trials   tasks: {', '.join(cfg.get('tasks', []))}   "
                     f"objective: {cfg.get('objective', '?')}")
    return "\n".join(lines)


def delete(name: str, *, storage: str | None = None) -> None:
    st = open_existing_study(name, storage)._storage  # a clear error when it does not exist
    optuna.delete_study(study_name=name, storage=st)




__all__ = [
    "CONFIG_ATTR", "FINISHED", "SURPLUS_ATTR", "GenerationState", "Pruning", "Worker", "best_trials",
    "completed_generations", "create", "delete", "export", "free_slots", "generation_key", "generations",
    "latest_state", "list_text", "make_sampler", "open_study", "pruner_for", "run", "seed_trial", "show_text",
    "study_winner", "summary_text", "unclaimed_trials", "worker_devices",
]

"""The study-level note optuna-dashboard shows: what is searched and every config setting, in Markdown.

It lives in ``search`` because ``study create`` writes it; the dashboard only displays it."""

from __future__ import annotations

from typing import Any, Mapping

import optuna

def config_markdown(name: str, config: Mapping[str, Any]) -> str:
    """The study config as Markdown: a sentence saying what is searched, then every setting in a table."""
    tasks = list(config.get("tasks") or [])
    per_task = str(config.get("objective")).startswith("per_task")
    lines = [f"# optsearch study `{name}`", ""]
    if tasks:
        mode = ("one objective per task (NSGA-II; see the Pareto front)" if per_task
                else "one objective: fitness, the mean over tasks and seeds")
        if str(config.get("objective")).endswith("+memory"):
            mode += ("; plus the optimizer state in floats per parameter, minimised (NSGA-II: the "
                     "accuracy–memory Pareto front)")
        seeds = config.get("seeds")
        lines += [
            f"Evolves optimizers on **{', '.join(tasks)}**: population {config.get('population')} × "
            f"{config.get('generations')} generations, {mode}; "
            f"{len(seeds) if isinstance(seeds, list) else seeds} seed(s) per member.",
            "",
            "Fitness per task = validation accuracy + 0.05·max(0, 1 − mean train loss of the last 50 steps); "
            "diverged members get −1. Each trial's user attributes hold its formula, generation, "
            "per-task accuracy/loss/fitness and whether it diverged.",
            "",
        ]
        funnel = config.get("funnel") or {}
        if funnel.get("enabled"):
            lines += [
                f"Then the funnel: the {funnel.get('k')} best genomes and Adam, each at its lr × 10^"
                f"({', '.join(f'{o:+g}' for o in funnel.get('lr_sweep') or [])})"
                + (", with and without cosine decay," if funnel.get("cosine_sweep") else ",") + " are trained again on "
                f"**{', '.join(funnel.get('tasks') or tasks)}** with {funnel.get('seeds')} fresh seeds; the best is "
                "the study's answer" + (", simplified by ablation" if funnel.get("ablation") else "")
                + " (its section below appears when the run ends).",
                "",
            ]
    lines += ["## Config", "", "| setting | value |", "|---|---|"]
    for key, value in _flatten(config):
        lines.append(f"| {key} | {_cell(value)} |")
    return "\n".join(lines) + "\n"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "default"
    if isinstance(v, Mapping):
        return "defaults" if not v else str(dict(v))
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v).replace("|", "\\|")


def write_study_note(study: optuna.Study, config: Mapping[str, Any]) -> None:
    """Save the study-level dashboard note (Markdown) describing the config, so the dashboard explains itself."""
    from optuna_dashboard import save_note

    save_note(study, config_markdown(study.study_name, config))


def section_markers(tag: str) -> tuple[str, str]:
    """Invisible Markdown markers (link reference definitions) around a section others may rewrite."""
    return f"[//]: # (optsearch-{tag}-begin)", f"[//]: # (optsearch-{tag}-end)"


def with_section(note: str, tag: str, body: str) -> str:
    """``note`` with the ``tag`` section replaced by ``body`` (or appended); the rest of the note is kept."""
    begin, end = section_markers(tag)
    section = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in note and end in note:
        head, _, rest = note.partition(begin)
        return head + section + rest.partition(end)[2]
    return (note.rstrip() + "\n\n" if note.strip() else "") + section + "\n"


def write_note_section(study: optuna.Study, tag: str, body: str) -> bool:
    """Put a section into the study note the dashboard shows; False when optuna-dashboard is not installed."""
    try:
        from optuna_dashboard import get_note, save_note
    except ImportError:
        return False
    save_note(study, with_section(get_note(study), tag, body))
    return True

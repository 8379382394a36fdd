"""``study run``: evolve a study to its configured end with one or several worker processes.

Killing a run loses only the unfinished generation: its trials are failed and the sampler refills
their slots on the next ``study run``. With a ``[funnel]`` the first process also runs the funnel
rounds due (every ``every`` generations and at the end) and the winner's ablation; they resume too.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

from optsearch.errors import ConfigError, StudyError
from optsearch.search.config import StudyConfig
from optsearch.search.funnel import run_funnels
from optsearch.search.generations import completed_generations
from optsearch.search.show import summary_text
from optsearch.search.storage import open_study, resolve_url
from optsearch.search.worker import Worker


def run(
    name: str,
    *,
    storage: str | None = None,
    generations: int | None = None,
    device: str | None = None,
    workers: int = 1,
    data_dir: str | None = None,
    progress: bool = True,
) -> str:
    """Evolve the study until its configured generations are done (or ``generations`` more).

    With ``workers > 1``, ``workers − 1`` more processes run the same loop on the same storage; they
    split each generation's members. The same command on other machines with one ``--storage`` URL
    joins the same study.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be ≥ 1, got {workers}")
    if generations is not None and generations < 1:
        raise ConfigError(f"--generations must be ≥ 1, got {generations}")
    study, cfg = open_study(name, storage)
    dev = _device(device or cfg.device)
    cfg.run_spec(device=dev, data_dir=data_dir).validate()  # every setting checked before any trial is asked
    _check_data(cfg, data_dir)
    start = completed_generations(study, cfg.population)
    stop = cfg.generations if generations is None else min(cfg.generations, start + generations)
    devices = worker_devices(dev, workers, _cuda_count())
    children = [_spawn_worker(name, storage, stop - start, d, data_dir) for d in devices[1:]]
    lead = os.environ.get("OPTSEARCH_WORKER") != "1"  # spawned workers leave the funnel to the first process
    try:
        for chunk_stop in funnel_stops(cfg, start, stop) if lead else [stop]:
            if lead:  # rounds due before this point (e.g. a killed run stopped inside one) come first
                run_funnels(study, cfg, device=devices[0], data_dir=data_dir, progress=progress)
            worker = Worker(study, cfg, device=devices[0], data_dir=data_dir, stop_generation=chunk_stop,
                            chunk=math.ceil(cfg.population / workers), progress=progress)
            worker.loop()
        if lead:
            run_funnels(study, cfg, device=devices[0], data_dir=data_dir, progress=progress)
    finally:
        for c in children:
            c.wait()
    bad = [c.returncode for c in children if c.returncode != 0]
    if bad and completed_generations(study, cfg.population) < stop:
        raise StudyError(f"{len(bad)} worker process(es) failed (exit codes {bad}); run `study run {name}` again to resume")
    if bad:  # the surviving workers failed the dead one's trials and evaluated them again
        print(f"optsearch: warning: {len(bad)} worker process(es) died (exit codes {bad}); "
              "their trials were evaluated again by the others", file=sys.stderr)
    return summary_text(study, cfg)


def funnel_stops(cfg: StudyConfig, start: int, stop: int) -> list[int]:
    """Where the lead worker pauses evolving to run a funnel round (every ``every`` generations), then ``stop``."""
    every = cfg.funnel.every if cfg.funnel.enabled else 0
    return [g for g in range(every, stop, every) if g > start] + [stop] if every else [stop]


def _check_data(cfg: StudyConfig, data_dir: str | None) -> None:
    """Read every task's data before any trial is asked, so a missing dataset changes nothing in the study."""
    from optsearch.train.tasks import data_dir as resolve_data_dir, get_task

    tasks = [*cfg.tasks, *cfg.funnel.tasks] if cfg.funnel.enabled else cfg.tasks
    for name in dict.fromkeys(tasks):
        get_task(name).read(resolve_data_dir(data_dir))


def _spawn_worker(name: str, storage: str | None, generations: int, device: str, data_dir: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "optsearch", "study", "run", name, "--quiet", "--device", device,
           "--storage", resolve_url(storage), "--generations", str(max(1, generations))]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return subprocess.Popen(cmd, env={**os.environ, "OPTSEARCH_WORKER": "1"})


def worker_devices(device: str, workers: int, cuda_count: int) -> list[str]:
    """One device per worker process: plain ``cuda`` spreads the workers over the visible GPUs
    round-robin (worker i on ``cuda:i mod count``); an explicit ``cuda:K`` or ``cpu`` is used by all."""
    if device == "cuda" and cuda_count > 1:
        return [f"cuda:{i % cuda_count}" for i in range(workers)]
    return [device] * workers


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _device(spec: str) -> str:
    """The device all workers use, checked before any trial is asked (a typo must not fail a generation)."""
    from optsearch.train.spec import resolve_device

    return resolve_device(spec)

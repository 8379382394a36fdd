"""A benchmark's settings: tasks, seeds, tuning budget, training budget; what a tuning study's key depends on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optsearch.errors import ConfigError

if TYPE_CHECKING:
    from optsearch.train.spec import RunSpec

DEFAULT_HELD_OUT: tuple[str, ...] = ("mnist", "fashion_mnist")
TUNE_SEEDS: tuple[int, ...] = (0, 1)
"""Tuning scores the mean fitness over these seeds, so an lr at the edge of stability is not picked on one lucky seed."""
FINAL_SEED_BASE = 1000
"""Final seeds are FINAL_SEED_BASE, FINAL_SEED_BASE + 1, … (``--seed-base`` moves them): disjoint from tuning
and search seeds."""
SPLITS: tuple[str, ...] = ("val", "test")
"""Where the final runs are scored: ``val`` for decisions (blind: the test split stays unread), ``test`` for the record."""
TUNING_PROTOCOL = "default in place of its nearest of n equal log-lr cells, other cell centres, then TPE; window -2.5..+1.5 decades"
"""Part of every tuning study's key: studies tuned under an older protocol are not reused."""


@dataclass(frozen=True)
class BenchmarkConfig:
    """The budget every contender gets, per task."""

    tasks: tuple[str, ...]
    searched: frozenset[str] = frozenset()
    """Every task the evolved genome was searched on, benchmarked here or not (the report names them all,
    so a held-out-only benchmark does not read as if the genome had been selected on nothing)."""
    seeds: int = 5
    trials: int = 8
    steps: int | None = None
    batch_size: int | None = None
    subsample: int | None = None
    tune_seeds: tuple[int, ...] = TUNE_SEEDS
    device: str | None = None
    data_dir: str | None = None
    sampler_seed: int = 0
    curve_points: int = 25
    """Points per learning curve (the evaluator's checkpoint spacing; no pruning callback is used)."""
    split: str = "test"
    """The split the final runs are scored on (:data:`SPLITS`); tuning always uses the validation split."""
    seed_base: int = FINAL_SEED_BASE

    def run_spec(self, task: str, *, split: str) -> "RunSpec":
        """How every contender trains on ``task``: one budget for all; every seed scored (no early stop)."""
        from optsearch.train.spec import RunSpec

        return RunSpec(steps=self.steps, batch_size=self.batch_size, subsample=self.subsample, device=self.device,
                       data_dir=self.data_dir, split=split, checkpoint_every=self.checkpoint_every(task),
                       stop_diverged=False)

    def checkpoint_every(self, task: str) -> int:
        from optsearch.train.tasks import get_task

        return max(1, (self.steps or get_task(task).steps) // self.curve_points)

    def searched_through(self, task: str) -> str | None:
        """The searched task that trained on ``task``'s data (``task`` itself when searched), or None: held-out.

        A task whose training examples the search saw through another model (``cifar10`` after a search on
        ``cifar10_small``) is not held-out, though its test split never was used.
        """
        from optsearch.train.tasks import same_data

        if task in self.searched:
            return task
        return next((s for s in sorted(self.searched) if same_data(s, task)), None)

    @property
    def final_seeds(self) -> tuple[int, ...]:
        return tuple(range(self.seed_base, self.seed_base + self.seeds))

    def validate(self) -> None:
        from optsearch.train.tasks import get_task

        if not self.tasks:
            raise ConfigError("the benchmark needs at least one task")
        for t in self.tasks:
            get_task(t)
        if self.seeds < 2:
            raise ConfigError(f"--seeds must be ≥ 2 for a confidence interval (≥ 5 recommended), got {self.seeds}")
        if self.trials < 1:
            raise ConfigError(f"--trials must be ≥ 1, got {self.trials}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be ≥ 1, got {self.steps}")
        if self.subsample is not None and self.subsample < 1:
            raise ConfigError(f"--subsample must be ≥ 1, got {self.subsample}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if len(set(self.tune_seeds)) < 2:
            raise ConfigError(f"--tune-seeds must be ≥ 2 (one seed lets a lucky edge-of-stability lr win), "
                              f"got {len(set(self.tune_seeds))}")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.seed_base < 0:
            raise ConfigError(f"--seed-base must be ≥ 0, got {self.seed_base}")
        if set(self.final_seeds) & set(self.tune_seeds):
            raise ConfigError("final seeds must differ from the tuning seeds")
        for task in self.tasks:  # device, split-independent budget: checked before any tuning trial is asked
            self.run_spec(task, split="val").validate()

    def unit_settings(self, task: str) -> dict[str, Any]:
        """What a tuning result depends on besides the contender (part of the study key)."""
        return {"task": task, "steps": self.steps, "batch_size": self.batch_size, "subsample": self.subsample,
                "tune_seeds": list(self.tune_seeds), "sampler_seed": self.sampler_seed, "protocol": TUNING_PROTOCOL}

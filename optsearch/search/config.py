"""Study configuration: one frozen dataclass built from a TOML file (or a preset) and validated up front.

A config is validated when the study is created and stored with it (study user attr ``config``), so
``study run NAME`` needs nothing but the name, and a bad config never reaches a half-made study.
"""

from __future__ import annotations

import tomllib
from dataclasses import MISSING, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from optsearch.errors import ConfigError
from optsearch.search.control import parse_control
from optsearch.search.recipe import RECIPES, RecipeConfig, parse_recipe
from optsearch.train.spec import PRECISIONS, RunSpec, check_device_string

PRESET_DIR = Path(__file__).resolve().parents[2] / "studies"
OBJECTIVES = ("aggregate", "per_task", "aggregate+memory", "per_task+memory")
MEMORY_OBJECTIVE = "state_floats"
"""The last objective of a ``+memory`` study: the genome's optimizer state in floats per parameter, minimised."""
OPTUNA_PRUNERS = ("median", "percentile", "successive_halving", "wilcoxon")
PRUNERS = ("none", "chance", *OPTUNA_PRUNERS)
MULTI_OBJECTIVE_PRUNERS = ("percentile",)
"""Curve pruners that also run with several objectives (our own rule: :mod:`optsearch.search.pruning`)."""
PER_TASK_PRUNER = "chance"
"""The default pruner of per-task studies (Optuna's pruners need intermediate values, which they lack)."""
ABLATION_MARGIN = 0.003
"""Default equivalence margin of the ablation (fitness units, about a third of a point of accuracy: below the gains
the search claims, so a part worth them is never dropped as "harmless")."""


@dataclass(frozen=True)
class PruningConfig:
    """How hopeless members are stopped mid-evaluation (``pruner``; diverged members are always pruned).

    * ``median``, ``percentile``, ``successive_halving``, ``wilcoxon`` (single-objective studies only:
      Optuna forbids ``report`` with several objectives): the Optuna pruner over the intermediate
      values, one per checkpoint after ``warmup_checkpoints``, compared with earlier generations only.
      ``percentile`` prunes only below that percentile of them (default 25): gentler than the median,
      which with fresh seeds per generation can prune a whole generation drawn on hard seeds.
      With several objectives (per-task and ``+memory`` studies) ``percentile`` is our own rule over
      each fitness objective's curve instead (:class:`optsearch.search.pruning.Pruning`).
    * ``chance`` (the default with several objectives): once a member has finished the first seed of
      every task, it is pruned if its accuracy was within ``chance_margin`` of chance on *every*
      task — a genome good on one task but weak on another is kept, as it may be Pareto-optimal.
    * ``none``: no pruning (intermediate values are still reported in single-objective studies).

    A setting the chosen pruner would ignore is a config error.
    """

    pruner: str = "median"
    warmup_checkpoints: int = 2
    chance_margin: float = 0.05
    percentile: float = 25.0


@dataclass(frozen=True)
class FunnelConfig:
    """Meta-validation of the best genomes (``[funnel]``; see :mod:`optsearch.search.funnel`).

    Absent from a config, the funnel is off (studies made before it keep their behaviour); a ``[funnel]``
    table turns it on unless it says ``enabled = false``. ``tasks`` default to the search's tasks,
    ``steps`` to each task's own; ``lr_sweep`` holds log10 offsets of each genome's learning rate, and
    ``cosine_sweep`` also measures each genome with cosine decay switched the other way (a winner
    found on short proxies may lack the schedule the longer task wants);
    ``every`` runs an extra round every that many generations (0: at the end only); ``ablation``
    simplifies the winner afterwards (:mod:`optsearch.search.ablation`) on ``ablation_seeds`` fresh
    seeds (default: ``seeds``, at least 8), dropping a part only when removing it costs less than
    ``ablation_margin`` fitness with 95 % confidence.
    """

    enabled: bool = False
    tasks: tuple[str, ...] = ()
    steps: int | None = None
    seeds: int = 3
    k: int = 8
    lr_sweep: tuple[float, ...] = (-0.5, 0.0, 0.5)
    cosine_sweep: bool = False
    every: int = 0
    batch_size: int | None = None
    subsample: int | None = None
    ablation: bool = True
    ablation_seeds: int | None = None
    ablation_margin: float = ABLATION_MARGIN


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs to run; stored with the study."""

    tasks: tuple[str, ...]
    population: int
    generations: int
    seeds: tuple[int, ...] = (0,)
    steps: int | None = None
    batch_size: int | None = None
    subsample: int | None = None
    objective: str = "aggregate"
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = RunSpec.checkpoint_every
    precision: str = RunSpec.precision  # fp32 | tf32 | bf16: see optsearch.train.device
    backend: str | None = RunSpec.backend  # the population engine (None: chosen per model and device)
    compile_model: bool = RunSpec.compile_model
    pruning: PruningConfig = field(default_factory=PruningConfig)
    sampler: Mapping[str, Any] = field(default_factory=dict)
    funnel: FunnelConfig = field(default_factory=FunnelConfig)
    recipe: str = "evolve"
    shared_recipe: RecipeConfig = field(default_factory=RecipeConfig)
    control: str = "none"  # the control member's named genome or "none" (see optsearch.search.control)

    @property
    def fixed_genes(self) -> dict[str, Any]:
        """Genes the sampler holds fixed in every member: the shared recipe's, or none."""
        return self.shared_recipe.genes() if self.recipe == "shared" else {}

    @property
    def per_task(self) -> bool:
        return self.objective.startswith("per_task")

    @property
    def memory(self) -> bool:
        """The study also minimises the optimizer state (:data:`MEMORY_OBJECTIVE`, its last objective)."""
        return self.objective.endswith("+memory")

    @property
    def fitness_names(self) -> list[str]:
        """The measured objectives: one per task, or the aggregate fitness."""
        return list(self.tasks) if self.per_task else ["fitness"]

    @property
    def objective_names(self) -> list[str]:
        return self.fitness_names + ([MEMORY_OBJECTIVE] if self.memory else [])

    @property
    def directions(self) -> list[str]:
        return ["maximize"] * len(self.fitness_names) + (["minimize"] if self.memory else [])

    def run_spec(self, *, device: str | None, data_dir: str | None) -> RunSpec:
        """How the search trains a generation: the study's budget and precision on this worker's device.

        ``compile_update`` is decided once for the whole generation (not per worker's share), since the
        compiled and the eager update round differently.
        """
        from optsearch.train.evaluate import auto_compile

        return RunSpec(steps=self.steps, batch_size=self.batch_size, subsample=self.subsample, device=device,
                       data_dir=data_dir, checkpoint_every=self.checkpoint_every, precision=self.precision,
                       backend=self.backend, compile_model=self.compile_model, compile_update=auto_compile(self.population, list(self.tasks), len(self.seeds), self.steps))

    def funnel_spec(self, *, device: str | None, data_dir: str | None) -> RunSpec:
        """How the funnel and the ablation train: the funnel's budget, the study's precision, validation splits."""
        f = self.funnel
        return RunSpec(steps=f.steps, batch_size=f.batch_size, subsample=f.subsample, device=device,
                       data_dir=data_dir, checkpoint_every=0, precision=self.precision, split="val")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["seeds"] = list(self.seeds)
        d["sampler"] = dict(self.sampler)
        d["funnel"] = {**d["funnel"], "tasks": list(self.funnel.tasks), "lr_sweep": list(self.funnel.lr_sweep)}
        if self.recipe != "shared":  # the table only means something with a shared recipe
            del d["shared_recipe"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "config", stored: bool = False) -> "StudyConfig":
        """Build and validate; every problem is a one-line :class:`ConfigError` naming the key.

        ``stored``: the config is read back from a study (see ``_pruning`` for what that relaxes).
        """
        d = dict(d)
        table = d.pop("shared_recipe", None)  # stored form
        if isinstance(d.get("recipe"), dict):  # the TOML layout's [recipe] table (its mode is [search] recipe)
            table = d.pop("recipe")
        if "search" in d:  # the TOML layout: [search], [pruning], [sampler]
            search = d.pop("search")
            if not isinstance(search, dict):
                raise ConfigError(f"{where}: [search] must be a table")
            d = {**search, **d}
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for req in ("tasks", "population", "generations"):
            if req not in d:
                raise ConfigError(f"{where}: missing required key {req!r}")
        tasks = _str_list(d["tasks"], "tasks", where)
        _check_tasks(tasks, where)
        seeds = d.get("seeds", [0])
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = list(range(seeds)) if seeds > 0 else seeds
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
            raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers (or a positive count), got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{where}: 'seeds' has duplicates: {seeds!r}")
        pruning = d.get("pruning", {})
        if not isinstance(pruning, dict):
            raise ConfigError(f"{where}: [pruning] must be a table")
        sampler = d.get("sampler", {})
        if not isinstance(sampler, dict):
            raise ConfigError(f"{where}: [sampler] must be a table")
        if str(d.get("objective", "")).endswith("+memory"):  # the front's zero-state end (see GAConfig.seed_sgd)
            sampler = {"seed_sgd": True, **sampler}
        cfg = cls(
            tasks=tuple(tasks),
            population=_int(d, "population", where, lo=2),
            generations=_int(d, "generations", where, lo=1),
            seeds=tuple(seeds),
            steps=_opt_int(d, "steps", where, lo=1),
            batch_size=_opt_int(d, "batch_size", where, lo=1),
            subsample=_opt_int(d, "subsample", where, lo=1),
            objective=_choice(d, "objective", OBJECTIVES, "aggregate", where),
            seed=_int(d, "seed", where, default=_default(cls, "seed")),
            device=_device(d.get("device", _default(cls, "device")), where),
            checkpoint_every=_int(d, "checkpoint_every", where, lo=1, default=_default(cls, "checkpoint_every")),
            precision=_choice(d, "precision", PRECISIONS, _default(cls, "precision"), where),
            backend=_engine(d.get("backend", _default(cls, "backend")), where),
            compile_model=_bool(d, "compile_model", _default(cls, "compile_model"), where),
            pruning=_pruning(pruning, where, objective=d.get("objective", "aggregate"), stored=stored),
            sampler=dict(sampler),
            funnel=_funnel(d.get("funnel"), tasks, where),
            recipe=_choice(d, "recipe", RECIPES, _default(cls, "recipe"), where),
            shared_recipe=parse_recipe(table, d.get("recipe", _default(cls, "recipe")), where, stored=stored),
            control=parse_control(d.get("control"), where),
        )
        if cfg.recipe == "shared" and cfg.funnel.cosine_sweep:
            raise ConfigError(f"{where}: [funnel] cosine_sweep changes the schedule, which a shared recipe holds fixed")
        _check_sampler(cfg, where)
        if not stored:  # a study made before the rule still opens
            _check_funnel_tasks(cfg, where)
        return cfg


def load(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    return StudyConfig.from_dict(data, where=str(path))


def preset(name: str) -> StudyConfig:
    """A preset from ``studies/NAME.toml``."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(known)}")
    return load(path)


# ----------------------------------------------------------------------------- validation helpers
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int(d: Mapping[str, Any], key: str, where: str, *, lo: int | None = None, default: int | None = None) -> int:
    x = d.get(key, default)
    if not _is_int(x):
        raise ConfigError(f"{where}: {key!r} must be an integer, got {x!r}")
    if lo is not None and x < lo:
        raise ConfigError(f"{where}: {key!r} must be ≥ {lo}, got {x}")
    return x


def _opt_int(d: Mapping[str, Any], key: str, where: str, *, lo: int) -> int | None:
    return None if d.get(key) is None else _int(d, key, where, lo=lo)


def _number(d: Mapping[str, Any], key: str, where: str, default: float, interval: str) -> float:
    """``d[key]`` (or ``default``) as a float inside ``interval``, written as in maths: "[0, 1)", "(0, 100)"."""
    x = d.get(key, default)
    lo, hi = (float(v) for v in interval[1:-1].split(","))
    inside = (isinstance(x, (int, float)) and not isinstance(x, bool)
              and (lo <= x if interval[0] == "[" else lo < x) and (x <= hi if interval[-1] == "]" else x < hi))
    if not inside:
        raise ConfigError(f"{where} {key!r} must be a number in {interval}, got {x!r}")
    return float(x)


def _default(cls: type, key: str) -> Any:
    """A dataclass field's declared default: parsers take defaults from the fields, never restate them."""
    f = cls.__dataclass_fields__[key]
    return f.default if f.default is not MISSING else f.default_factory()


def _choice(d: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str, where: str) -> str:
    x = d.get(key, default)
    if x not in choices:
        raise ConfigError(f"{where}: {key!r} must be one of {', '.join(choices)}, got {x!r}")
    return x


def _str_list(x: Any, key: str, where: str) -> list[str]:
    if not isinstance(x, list) or not x or not all(isinstance(s, str) for s in x):
        raise ConfigError(f"{where}: {key!r} must be a non-empty list of names, got {x!r}")
    if len(set(x)) != len(x):
        raise ConfigError(f"{where}: {key!r} has duplicates: {x!r}")
    return x


def _check_tasks(tasks: list[str], where: str) -> None:
    from optsearch.train.tasks import TASKS

    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"{where}: unknown task {t!r}; known: {', '.join(TASKS)}")


def _engine(x: Any, where: str) -> str | None:
    from optsearch.train.engines import BACKENDS

    if x is not None and x not in BACKENDS:
        raise ConfigError(f"{where}: 'backend' must be one of {', '.join(BACKENDS)}, got {x!r}")
    return x


def _bool(d: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    x = d.get(key, default)
    if not isinstance(x, bool):
        raise ConfigError(f"{where}: {key!r} must be true or false, got {x!r}")
    return x


def _device(x: Any, where: str) -> str:
    try:
        return check_device_string(x)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _pruning(p: Mapping[str, Any], where: str, *, objective: Any = "aggregate", stored: bool = False) -> PruningConfig:
    """Validate ``[pruning]``: a pruner the objective cannot run, or a setting the pruner ignores
    (set to other than its default), is a one-line error. ``stored``: a config read back from a study,
    where a per-task study made before the ``chance`` pruner had a name for it says ``median``."""
    unknown = sorted(set(p) - set(PruningConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{where}: unknown [pruning] key(s) {', '.join(unknown)}")
    default = {k: _default(PruningConfig, k) for k in PruningConfig.__dataclass_fields__}
    margin = _number(p, "chance_margin", f"{where}: pruning", default["chance_margin"], "[0, 1)")
    several = objective in OBJECTIVES and objective != "aggregate"  # no trial.report with several objectives
    pruner = _choice(p, "pruner", PRUNERS, PER_TASK_PRUNER if several else default["pruner"], where + " [pruning]")
    pct = _number(p, "percentile", f"{where}: pruning", default["percentile"], "(0, 100)")
    cfg = PruningConfig(pruner=pruner, chance_margin=margin, percentile=pct,
                        warmup_checkpoints=_int(p, "warmup_checkpoints", where, lo=0, default=default["warmup_checkpoints"]))
    single_only = several and pruner in OPTUNA_PRUNERS and pruner not in MULTI_OBJECTIVE_PRUNERS
    if stored:
        return replace(cfg, pruner=PER_TASK_PRUNER) if single_only else cfg
    if single_only:
        raise ConfigError(f"{where}: pruner {pruner!r} cannot run in a {objective} study (Optuna allows no "
                          "intermediate values with several objectives); use 'percentile', 'chance' or 'none'")
    used = {"warmup_checkpoints": pruner in OPTUNA_PRUNERS, "chance_margin": pruner == "chance",
            "percentile": pruner == "percentile"}
    for key in used:
        if not used[key] and getattr(cfg, key) != default[key]:
            raise ConfigError(f"{where}: pruning {key!r} = {getattr(cfg, key)!r} would be ignored by pruner {pruner!r}")
    return cfg


def _funnel(f: Any, search_tasks: list[str], where: str) -> FunnelConfig:
    if f is None:
        return FunnelConfig(tasks=tuple(search_tasks))
    if not isinstance(f, dict):
        raise ConfigError(f"{where}: [funnel] must be a table")
    unknown = sorted(set(f) - set(FunnelConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{where}: unknown [funnel] key(s) {', '.join(unknown)}")
    w = f"{where} [funnel]"
    for key in ("enabled", "ablation", "cosine_sweep"):
        _bool(f, key, True, w)
    tasks = _str_list(f["tasks"], "tasks", w) if f.get("tasks") not in (None, []) else list(search_tasks)
    _check_tasks(tasks, w)
    sweep = f.get("lr_sweep", list(_default(FunnelConfig, "lr_sweep")))
    if (not isinstance(sweep, list) or not sweep or len(set(sweep)) != len(sweep)
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= 2 for x in sweep)):
        raise ConfigError(f"{w}: 'lr_sweep' must be a non-empty list of distinct log10 offsets in [-2, 2], got {sweep!r}")

    def default(key: str) -> Any:
        return _default(FunnelConfig, key)

    return FunnelConfig(
        enabled=f.get("enabled", True), tasks=tuple(tasks), steps=_opt_int(f, "steps", w, lo=1),
        seeds=_int(f, "seeds", w, lo=3, default=default("seeds")), k=_int(f, "k", w, lo=1, default=default("k")),
        lr_sweep=tuple(float(x) for x in sweep), cosine_sweep=f.get("cosine_sweep", default("cosine_sweep")),
        every=_int(f, "every", w, lo=0, default=default("every")),
        batch_size=_opt_int(f, "batch_size", w, lo=1), subsample=_opt_int(f, "subsample", w, lo=1),
        ablation=f.get("ablation", default("ablation")), ablation_seeds=_opt_int(f, "ablation_seeds", w, lo=3),
        ablation_margin=_number(f, "ablation_margin", f"{w}:", default("ablation_margin"), "[0, 1]"),
    )


def _check_funnel_tasks(cfg: StudyConfig, where: str) -> None:
    """A funnel task that is a search task (same reader, same model, no longer horizon) is no meta-validation."""
    from optsearch.train.tasks import get_task, same_data

    for f in cfg.funnel.tasks if cfg.funnel.enabled else ():
        for s in cfg.tasks:
            tf, ts = get_task(f), get_task(s)
            if same_data(f, s) and tf.build_model is ts.build_model and (
                    (cfg.funnel.steps or tf.steps) <= (cfg.steps or ts.steps)):
                raise ConfigError(f"{where}: [funnel] task {f!r} is the search task {s!r} (same data and model, "
                                  "no longer horizon): give the funnel a larger model, more steps or other data")


def _check_sampler(cfg: StudyConfig, where: str) -> None:
    from optsearch.search.sampler import GAConfig

    try:
        GAConfig.from_dict(cfg.sampler).check_population(cfg.population)
    except ConfigError as e:
        raise ConfigError(f"{where}: [sampler] {e}") from None

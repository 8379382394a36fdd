"""The genetic algorithm's settings: the study TOML's ``[sampler]`` table, validated up front."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from optsearch.errors import ConfigError
from optsearch.genome import BASELINES, NAMED, Genome

@dataclass(frozen=True)
class GAConfig:
    """The genetic algorithm's settings (the study TOML's ``[sampler]`` table).

    Mutation rates anneal: a gene mutates with probability
    ``max(mutation_floor, mutation_prob · mutation_decay**generation)`` — broad exploration first,
    fine-tuning of the survivors later. Step sizes stay fixed; the rate sets how much changes.
    """

    tournament_size: int = 3
    """Entrants per tournament (1 = parents drawn uniformly from the generation's COMPLETE trials)."""
    elites: int = 2
    """Best members of a generation carried over unchanged into the next, where they are trained again."""
    crossover_prob: float = 0.9
    """Probability a child is a crossover of two parents (else a mutated copy of one)."""
    swap_prob: float = 0.5
    """Per-gene probability that a scalar or switch comes from the second parent."""
    mutation_prob: float = 0.15
    """Per-gene mutation probability in generation 0."""
    mutation_decay: float = 0.97
    """Factor applied to the mutation probability per generation."""
    mutation_floor: float = 0.03
    """The mutation probability never anneals below this."""
    log_sigma: float = 0.3
    """Gaussian step, in decades, for lr_log10, eps_log10, wd_log10, clip_threshold and each 1 − β."""
    alpha_sigma: float = 0.25
    """Gaussian step for a term's weight α."""
    beta_step: float = 0.1
    """Largest step for warmup_frac, as a fraction of its range (β genes step in log10(1 − β), by log_sigma)."""
    seed_baselines: bool = True
    """Generation 0 starts with the named baselines (SGD-momentum, Adam, AdamW, RMSProp)."""
    seed_paper_evolved: bool = False
    """Generation 0 also contains the paper's published evolved genome."""
    seed_sgd: bool = False
    """Generation 0 also contains plain SGD (no optimizer state; on by default in ``+memory`` studies, whose
    front needs that end: the baselines hold 1 or 2 floats per parameter)."""
    seed_modern: bool = False
    """Generation 0 also contains Muon and LAMB (``NAMED["muon"]``, ``NAMED["lamb"]``)."""
    slot_retries: int = 2
    """Times a member slot whose trial FAILs is asked again with the same genome; after that many
    retries the slot is filled with a fresh child from a new random stream (the reason is stored)."""

    def mutation_rate(self, generation: int) -> float:
        """The per-gene mutation probability in ``generation`` (annealed, floored)."""
        return max(self.mutation_floor, self.mutation_prob * self.mutation_decay**generation)

    def seed_genomes(self) -> list[tuple[str, Genome]]:
        """The named genomes that open generation 0, in order."""
        names = list(BASELINES) if self.seed_baselines else []
        if self.seed_paper_evolved:
            names.append("paper_evolved")
        if self.seed_sgd:
            names.append("sgd")
        if self.seed_modern:
            names += ["muon", "lamb"]
        return [(n, NAMED[n]) for n in names]

    def check_population(self, population: int) -> None:
        """Raise :class:`ConfigError` when the settings cannot work with this population size."""
        if self.elites >= population:
            raise ConfigError(f"'elites' must be less than the population ({population}), got {self.elites}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "GAConfig":
        """Validate a ``[sampler]`` table; a bad key or value is a one-line :class:`ConfigError` naming it."""
        d = dict(d or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        for key, value in d.items():
            _check_value(key, value)
        cfg = cls(**{k: float(v) if _RULES[k][0] == "float" else v for k, v in d.items()})
        if cfg.mutation_floor > cfg.mutation_prob:
            raise ConfigError(f"'mutation_floor' ({cfg.mutation_floor}) must not exceed 'mutation_prob' "
                              f"({cfg.mutation_prob})")
        return cfg


# key -> (kind, low, high, low inclusive)
_RULES: dict[str, tuple[str, float, float, bool]] = {
    "tournament_size": ("int", 1, math.inf, True),
    "elites": ("int", 0, math.inf, True),
    "crossover_prob": ("float", 0.0, 1.0, True),
    "swap_prob": ("float", 0.0, 1.0, True),
    "mutation_prob": ("float", 0.0, 1.0, True),
    "mutation_decay": ("float", 0.0, 1.0, False),
    "mutation_floor": ("float", 0.0, 1.0, True),
    "log_sigma": ("float", 0.0, math.inf, True),
    "alpha_sigma": ("float", 0.0, math.inf, True),
    "beta_step": ("float", 0.0, 1.0, True),
    "seed_baselines": ("bool", 0, 0, True),
    "seed_paper_evolved": ("bool", 0, 0, True),
    "seed_sgd": ("bool", 0, 0, True),
    "seed_modern": ("bool", 0, 0, True),
    "slot_retries": ("int", 0, math.inf, True),
}


def _check_value(key: str, value: Any) -> None:
    kind, lo, hi, lo_incl = _RULES[key]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key!r} must be true or false, got {value!r}")
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int" and not is_int:
        raise ConfigError(f"{key!r} must be an integer, got {value!r}")
    if kind == "float" and not (is_int or isinstance(value, float)):
        raise ConfigError(f"{key!r} must be a number, got {value!r}")
    ok = math.isfinite(value) and (lo <= value if lo_incl else lo < value) and value <= hi
    if not ok:
        bounds = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}]" if hi < math.inf else f"≥ {lo:g}"
        raise ConfigError(f"{key!r} must be {'in ' if hi < math.inf else ''}{bounds}, got {value!r}")

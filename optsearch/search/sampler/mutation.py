"""Mutation: each gene changes with an (annealed) probability, always staying inside the search space."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from optsearch.genome import ALPHA_RANGE, CLIP_CHOICES, EXTRA_CHOICES, FLOAT_RANGES, K, SIGN_CHOICES
from optsearch.genome.primitives import NONE
from optsearch.search.sampler.config import GAConfig
from optsearch.search.sampler.space import BOUNDED_GENES, LOG_GENES, SPACE, SWITCHES, TERMS, Params, clip, other


def mutate(params: Params, rng: np.random.Generator, *, rate: float, cfg: GAConfig) -> Params:
    """Each gene mutates with probability ``rate`` (α only while its slot holds a term)."""
    p = dict(params)
    for name in SPACE:
        if name.startswith("alpha_") and p[f"term_{name[6:]}"] == NONE:
            continue
        if name == "sign_alpha" and p["sign_term"] == NONE:
            continue
        if name == "extra_alpha" and p["extra_term"] == NONE:
            continue
        if rng.random() < rate:
            mutate_gene(p, name, rng, cfg)
    return p


@dataclass(frozen=True, kw_only=True)
class AnnealedMutation:
    """Mutation strategy: ``(params, rng, generation) -> params``.

    Each gene mutates with probability ``config.mutation_rate(generation)`` (annealed, floored), with
    the step sizes of ``config``; :meth:`change_one` makes one visible change (used when a child
    would otherwise copy a parent).
    """

    config: GAConfig = field(default_factory=GAConfig)

    def __call__(self, params: Params, rng: np.random.Generator, generation: int) -> Params:
        return mutate(params, rng, rate=self.config.mutation_rate(generation), cfg=self.config)

    def change_one(self, params: Params, gene: str, rng: np.random.Generator) -> None:
        mutate_gene(params, gene, rng, self.config)


def mutate_gene(p: Params, name: str, rng: np.random.Generator, cfg: GAConfig) -> None:
    """Mutate one gene of ``p`` in place, staying inside the search space."""
    if name.startswith("term_"):
        _mutate_term(p, int(name[5:]), rng)
    elif name in ("sign_term", "extra_term"):  # like a slot: a fresh α when the term appears
        if p[name] == NONE:
            p[name.replace("_term", "_alpha")] = float(rng.uniform(*ALPHA_RANGE))
        p[name] = other(SIGN_CHOICES if name == "sign_term" else EXTRA_CHOICES, p[name], rng)
    elif name.startswith("alpha_") or name in ("sign_alpha", "extra_alpha"):
        p[name] = clip(p[name] + rng.normal(0.0, cfg.alpha_sigma), *ALPHA_RANGE)
    elif name in LOG_GENES:
        lo, hi, _ = FLOAT_RANGES[name]
        p[name] = clip(p[name] + rng.normal(0.0, cfg.log_sigma), lo, hi)
    elif name == "clip_threshold":  # log-distributed: the same step in decades
        lo, hi, _ = FLOAT_RANGES[name]
        p[name] = clip(10.0 ** (math.log10(p[name]) + rng.normal(0.0, cfg.log_sigma)), lo, hi)
    elif name in BOUNDED_GENES:
        lo, hi, _ = FLOAT_RANGES[name]
        p[name] = clip(p[name] + rng.uniform(-1.0, 1.0) * cfg.beta_step * (hi - lo), lo, hi)
    elif name in SWITCHES:
        p[name] = not p[name]
    elif name == "clip":
        p[name] = other(CLIP_CHOICES, p[name], rng)
    else:
        raise KeyError(f"no mutation for gene {name!r}")


def _mutate_term(p: Params, i: int, rng: np.random.Generator) -> None:
    """Add a term to an empty slot (with a fresh α), or remove or change the slot's term.

    The last term is changed, never removed: an empty genome does not train.
    """
    key = f"term_{i}"
    if p[key] == NONE:
        p[key] = TERMS[int(rng.integers(len(TERMS)))]
        p[f"alpha_{i}"] = float(rng.uniform(*ALPHA_RANGE))
        return
    others = sum(p[f"term_{j}"] != NONE for j in range(K) if j != i)
    if others and rng.random() < 0.5:
        p[key] = NONE
    else:
        p[key] = other(TERMS, p[key], rng)

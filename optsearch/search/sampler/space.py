"""The genome space as the sampler sees it: gene groups, uniform draws, and which genes are expressed."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution

from optsearch.genome import K, search_space, upgrade_params
from optsearch.genome.primitives import NONE, TERM_CHOICES

Params = dict[str, Any]

SPACE: dict[str, BaseDistribution] = search_space()
SLOT_GENES: tuple[str, ...] = tuple(f"{kind}_{i}" for i in range(K) for kind in ("term", "alpha"))
SCALAR_GENES: tuple[str, ...] = tuple(n for n in SPACE if n not in SLOT_GENES)
# already log10 values (β as log10(1 − β)): Gaussian steps, clipped
LOG_GENES: tuple[str, ...] = ("lr_log10", "eps_log10", "wd_log10", "beta1_log1m", "beta2_log1m", "beta3_log1m")
BOUNDED_GENES: tuple[str, ...] = ("warmup_frac",)  # bounded uniform steps, clipped
SWITCHES: tuple[str, ...] = ("weight_decay", "bias_correction", "warmup", "cosine_decay", "trust_ratio")
TERMS: tuple[str, ...] = tuple(t for t in TERM_CHOICES if t != NONE)


def random_params(rng: np.random.Generator) -> Params:
    """A genome drawn uniformly over the search space (log-uniform where the distribution is log)."""
    p: Params = {}
    for name, dist in SPACE.items():
        if isinstance(dist, CategoricalDistribution):
            p[name] = dist.choices[int(rng.integers(len(dist.choices)))]
        elif dist.log:
            p[name] = clip(10.0 ** rng.uniform(math.log10(dist.low), math.log10(dist.high)), dist.low, dist.high)
        else:
            p[name] = float(rng.uniform(dist.low, dist.high))
    return p


def expressed_genes(p: Params) -> list[str]:
    """Genes that change the update rule (an α of an empty slot, or λ with weight decay off, do not)."""
    silent = {f"alpha_{i}" for i in range(K) if p[f"term_{i}"] == NONE}
    if not p["weight_decay"]:
        silent.add("wd_log10")
    if p["clip"] == "none":
        silent.add("clip_threshold")
    if p["sign_term"] == NONE:
        silent.add("sign_alpha")
    if p["extra_term"] == NONE:
        silent.add("extra_alpha")
    if p["extra_term"] not in ("ademamix", "adan_diff"):
        silent.add("beta3_log1m")
    if not p["warmup"]:
        silent.add("warmup_frac")
    return [n for n in SPACE if n not in silent]


def genes(params: Any) -> Params:
    """Only the genome's genes of a trial's params (a trial may hold other parameters too).

    A trial from before a later gene existed gets that gene's "absent" value, and one that stored β
    itself its log gene (see ``upgrade_params``).
    """
    params = upgrade_params(params)
    return {n: params[n] for n in SPACE}


def has_genome(params: Any) -> bool:
    """Whether a trial's params hold a whole genome (later genes may be missing)."""
    params = upgrade_params(params)
    return all(n in params for n in SPACE)


def clip(x: float, lo: float, hi: float) -> float:
    return float(min(hi, max(lo, x)))


def other(choices: Sequence[Any], current: Any, rng: np.random.Generator) -> Any:
    """A uniformly drawn choice different from ``current``."""
    rest = [c for c in choices if c != current]
    return rest[int(rng.integers(len(rest)))]

"""Crossover that respects the genome's structure: a term slot travels with its weight."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optsearch.genome import K
from optsearch.search.sampler.space import SCALAR_GENES, Params


def one_point_crossover(a: Params, b: Params, rng: np.random.Generator, *, swap_prob: float = 0.5) -> Params:
    """Slots ``[0, cut)`` from ``a`` and ``[cut, K)`` from ``b``, each term with its own α; scalars uniform.

    A term's α is only meaningful next to that term, so (term_i, alpha_i) travel together.
    """
    cut = int(rng.integers(1, K))
    child: Params = {}
    for i in range(K):
        src = a if i < cut else b
        child[f"term_{i}"] = src[f"term_{i}"]
        child[f"alpha_{i}"] = src[f"alpha_{i}"]
    for name in SCALAR_GENES:
        if name in ("sign_alpha", "extra_alpha"):  # travels with its term, like a slot's α
            continue
        src = b if rng.random() < swap_prob else a
        child[name] = src[name]
        if name in ("sign_term", "extra_term"):
            child[name.replace("_term", "_alpha")] = src[name.replace("_term", "_alpha")]
    return child


@dataclass(frozen=True, kw_only=True)
class OnePointCrossover:
    """Crossover strategy: ``(a, b, rng) -> child params`` (see :func:`one_point_crossover`)."""

    swap_prob: float = 0.5
    """Per-gene probability that a scalar or switch comes from the second parent."""

    def __call__(self, a: Params, b: Params, rng: np.random.Generator) -> Params:
        return one_point_crossover(a, b, rng, swap_prob=self.swap_prob)

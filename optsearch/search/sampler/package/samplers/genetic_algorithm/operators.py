"""Generic operators over any static space of float/int/categorical distributions.

Strategies are plain callables passed to the sampler by keyword (as ``NSGAIISampler(crossover=…)`` takes them):

* selection ``(n, rng, exclude) -> position`` in a ranked pool of ``n`` (0 = best);
* crossover ``(a, b, rng) -> child params``;
* mutation ``(params, rng, generation) -> params``, optionally with ``change_one(params, name, rng)``, the
  one visible change the sampler makes to a child that would copy a parent.

Every draw stays inside its distribution: on its grid (``step``, integers), inside ``[low, high]``, and
returned as a Python ``float``/``int`` or one of the categorical choices, never a NumPy scalar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

Params = dict[str, Any]


# ----------------------------------------------------------------------------- draws inside a distribution
def clip(x: float, lo: float, hi: float) -> float:
    return float(min(hi, max(lo, x)))


def other(choices: Sequence[Any], current: Any, rng: np.random.Generator) -> Any:
    """A uniformly drawn choice different from ``current`` (``current`` itself when it is the only one)."""
    rest = [c for c in choices if c != current]
    return rest[int(rng.integers(len(rest)))] if rest else current


def snap(dist: BaseDistribution, x: float) -> float | int:
    """``x`` clipped into a numeric distribution and put on its grid, as the distribution's Python type."""
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    x = clip(x, dist.low, dist.high)
    step = dist.step  # 1 for a log IntDistribution, None for a continuous FloatDistribution
    if isinstance(dist, IntDistribution):
        k = round((x - dist.low) / step)
        return int(min(dist.low + k * step, dist.low + (dist.high - dist.low) // step * step))
    if step is not None:
        n = round((dist.high - dist.low) / step)
        return float(min(dist.low + min(n, max(0, round((x - dist.low) / step))) * step, dist.high))
    return x


def sample_value(dist: BaseDistribution, rng: np.random.Generator) -> Any:
    """One value drawn uniformly over the distribution (log-uniformly where it is log)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    if dist.log:
        lo, hi = (dist.low, dist.high) if isinstance(dist, FloatDistribution) else (dist.low - 0.5, dist.high + 0.5)
        return snap(dist, 10.0 ** rng.uniform(math.log10(lo), math.log10(hi)))
    if isinstance(dist, IntDistribution):
        return int(dist.low + dist.step * int(rng.integers((dist.high - dist.low) // dist.step + 1)))
    if dist.step is not None:
        return snap(dist, dist.low + dist.step * int(rng.integers(round((dist.high - dist.low) / dist.step) + 1)))
    return float(rng.uniform(dist.low, dist.high))


def random_params(space: Mapping[str, BaseDistribution], rng: np.random.Generator) -> Params:
    """A point drawn uniformly over the space, parameter by parameter in the space's order."""
    return {name: sample_value(dist, rng) for name, dist in space.items()}


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist`` (a fixed parameter must be)."""
    if isinstance(dist, CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in dist.choices)
    try:
        return dist.low <= float(value) <= dist.high  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- selection
def tournament_select(n: int, rng: np.random.Generator, exclude: int | None = None, *, k: int) -> int:
    """Position of the winner of a size-``k`` tournament over a ranked pool of ``n`` (0 = best).

    ``exclude`` (the other parent) does not enter, unless it is the only candidate.
    """
    candidates = [i for i in range(n) if i != exclude] or list(range(n))
    entrants = rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
    return candidates[int(entrants.min())]


@dataclass(frozen=True, kw_only=True)
class TournamentSelection:
    """Selection strategy: ``(n, rng, exclude) -> position`` of a parent in a ranked pool of ``n``.

    On a pool ranked by NSGA-II's crowded comparison this is NSGA-II's crowded tournament.
    """

    size: int = 3
    """Entrants per tournament (1 = uniform over the pool)."""

    def __call__(self, n: int, rng: np.random.Generator, exclude: int | None = None) -> int:
        return tournament_select(n, rng, exclude, k=self.size)


# ----------------------------------------------------------------------------- crossover and mutation
@dataclass(frozen=True, kw_only=True)
class UniformCrossover:
    """Crossover strategy: each parameter from the second parent with probability ``swapping_prob``."""

    swapping_prob: float = 0.5

    def __call__(self, a: Params, b: Params, rng: np.random.Generator) -> Params:
        return {name: b[name] if rng.random() < self.swapping_prob else a[name] for name in a}


@dataclass(frozen=True, kw_only=True)
class GaussianMutation:
    """Mutation strategy: each parameter changes with probability ``max(floor, prob · decay**generation)``.

    A numeric parameter takes a Gaussian step of ``sigma`` × its range (in log space for log
    distributions), clipped and put back on its grid; a categorical one takes another choice.
    ``prob`` None means one parameter in ``len(search_space)``.
    """

    search_space: Mapping[str, BaseDistribution] = field(default_factory=dict)
    prob: float | None = None
    sigma: float = 0.1
    decay: float = 1.0
    floor: float = 0.0

    def rate(self, generation: int) -> float:
        prob = 1.0 / max(1, len(self.search_space)) if self.prob is None else self.prob
        return max(self.floor, prob * self.decay**generation)

    def __call__(self, params: Params, rng: np.random.Generator, generation: int) -> Params:
        p = dict(params)
        rate = self.rate(generation)
        for name in self.search_space:
            if name in p and rng.random() < rate:
                self.change_one(p, name, rng)
        return p

    def change_one(self, params: Params, name: str, rng: np.random.Generator) -> None:
        """Change parameter ``name`` of ``params`` in place, staying inside its distribution."""
        dist = self.search_space[name]
        x = params[name]
        if isinstance(dist, CategoricalDistribution):
            params[name] = other(dist.choices, x, rng)
            return
        assert isinstance(dist, (FloatDistribution, IntDistribution))
        if dist.log:
            lo, hi = math.log10(dist.low), math.log10(dist.high)
            y = 10.0 ** (math.log10(x) + rng.normal(0.0, self.sigma * (hi - lo)))
        else:
            y = x + rng.normal(0.0, self.sigma * (dist.high - dist.low))
        y = snap(dist, y)
        unit = dist.step  # the grid, if any
        if y == x and unit and dist.high > dist.low:  # a step below the grid's resolution: one grid step instead
            up = x + unit <= dist.high and (x - unit < dist.low or rng.random() < 0.5)
            y = snap(dist, x + unit if up else x - unit)
        params[name] = y

"""Effects of switches and primitives with the other genes held fixed, with intervals that respect generations.

The plain principles compare trials that depart from Adam's choice with those that keep it. On an
evolutionary search's trials that is an association, and a biased one: parents are selected on
fitness, so among the survivors a genome that lacks one good gene tends to carry another (selection
makes independent causes correlated), and a difference of means absorbs the other genes' effects.
Here each effect is instead the coefficient of the departure in one additive regression over the
whole genome: every switch and primitive as an indicator, each continuous gene as a piecewise-linear
spline (hinges at its quantiles, multiplied by its switch when it is conditional), so a bump such as
the learning rate's optimum is absorbed by its own columns and not by the switches.

The intervals come from a bootstrap stratified by generation: genomes are resampled with replacement
within each generation, so every replicate keeps the search's generation structure (early random
generations, late converged ones) instead of mixing them as i.i.d. draws would. Repeated genomes (elites
carried over and re-measured) must be merged before (:meth:`~optsearch.analysis.data.StudyData.distinct`),
so one genome never counts as several independent observations.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from optsearch.analysis.importance import CONDITIONAL, CONTINUOUS, PRIMS, SWITCHES, switch_on
from optsearch.analysis.principles import MIN_GROUP, N_BOOT, Principle, boot_p, departure_label, departures, fmt, rng_for
from optsearch.genome import Genome

SCOPE = "other genes held fixed"
KNOTS = (0.25, 0.5, 0.75)
"""Quantiles where each continuous gene's spline bends."""
RIDGE = 1e-6
"""A whisper of ridge penalty, so collinear spline columns (a gene that barely varies) do not blow up."""


def design(genomes: Sequence[Genome], knots_from: Sequence[Genome] | None = None) -> tuple[np.ndarray, list[str]]:
    """(X, column names): intercept, departure indicators, and a hinge spline per continuous gene.

    Knots are placed at quantiles of ``knots_from`` (default: ``genomes``), so bootstrap replicates can
    share the full sample's basis.
    """
    ref = list(knots_from) if knots_from is not None else list(genomes)
    cols: dict[str, np.ndarray] = {"intercept": np.ones(len(genomes))}
    for key, mask in departures(genomes).items():  # every switch and primitive
        cols[key] = mask.astype(float)
    for gene in CONTINUOUS:
        x = np.array([float(getattr(g, gene)) for g in genomes])
        xr = np.array([float(getattr(g, gene)) for g in ref])
        on = np.ones(len(genomes))
        if gene in CONDITIONAL:
            on = np.array([switch_on(g, CONDITIONAL[gene]) for g in genomes], dtype=float)
            ref_on = np.array([switch_on(g, CONDITIONAL[gene]) for g in ref], dtype=bool)
            xr = xr[ref_on] if ref_on.any() else xr
        cols[f"{gene}:lin"] = x * on
        for q, k in zip(KNOTS, np.quantile(xr, KNOTS) if len(xr) else []):
            cols[f"{gene}:hinge{q}"] = np.maximum(0.0, x - k) * on
    names = list(cols)
    return np.column_stack([cols[c] for c in names]), names


def fit(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares coefficients of ``y`` on ``X``; with ``weights`` (k, n), one fit per row of weights.

    A bootstrap replicate is the same fit with each row weighted by how often it was drawn, so all
    replicates are solved in one batched call instead of one Python-level fit each. BLAS runs on one thread
    here: OpenBLAS on two threads sums the products in another order (coefficients differing at ~1e-8 between
    processes were seen), and the analysis prints the same numbers every run; it runs beside the forest anyway.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _fit(X, y, weights)


def _fit(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    Z = X / scale
    n, d = Z.shape
    W = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=float)
    pen = RIDGE * n * np.eye(d)
    pen[0, 0] = 0.0  # no penalty on the intercept
    # Σ_n w_kn z_ni z_nj as one matrix product over the per-row outer products (a single BLAS call; the
    # three-operand einsum took most of the analysis's time on 2,500 genomes).
    A = (W @ (Z[:, :, None] * Z[:, None, :]).reshape(n, d * d)).reshape(len(W), d, d) + pen
    b = (W * y) @ Z
    coef = np.linalg.solve(A, b[..., None])[..., 0] / scale
    return coef[0] if weights is None else coef


def bootstrap_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(k, n) how often each row appears in each of k resamples given as row indices."""
    k = len(idx)
    counts = np.zeros((k, n))
    np.add.at(counts, (np.repeat(np.arange(k), idx.shape[1]), idx.ravel()), 1.0)
    return counts


def stratified_indices(generation: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, n) row indices: each generation's rows resampled with replacement, sizes kept."""
    out = np.empty((n_boot, len(generation)), dtype=int)
    pos = 0
    for g in np.unique(generation):
        rows = np.flatnonzero(generation == g)
        out[:, pos:pos + len(rows)] = rows[rng.integers(0, len(rows), (n_boot, len(rows)))]
        pos += len(rows)
    return out


def adjusted_effects(genomes: Sequence[Genome], y: np.ndarray, generation: np.ndarray, *, seed: int = 0,
                     n_boot: int = N_BOOT) -> dict[str, tuple[float, float, float]]:
    """key -> (effect, 2.5 %, 97.5 %) for every switch and primitive that varies enough to be estimated."""
    return {k: v[:3] for k, v in adjusted_tests(genomes, y, generation, seed=seed, n_boot=n_boot).items()}


def adjusted_tests(genomes: Sequence[Genome], y: np.ndarray, generation: np.ndarray, *, seed: int = 0,
                   n_boot: int = N_BOOT) -> dict[str, tuple[float, float, float, float]]:
    """:func:`adjusted_effects` with each effect's two-sided p-value (for the multiple-testing correction)."""
    y = np.asarray(y, dtype=float)
    generation = np.asarray(generation)
    X, names = design(genomes)
    est = fit(X, y)
    idx = stratified_indices(generation, rng_for(seed, "adjusted"), n_boot)
    chunks = np.array_split(idx, max(1, n_boot // 250))  # 250 replicates per batched solve bounds its memory
    boots = np.concatenate([fit(X, y, bootstrap_counts(chunk, len(y))) for chunk in chunks])
    out = {}
    for key in (*SWITCHES, *PRIMS):
        j = names.index(key)
        n_with = int(X[:, j].sum())
        if n_with < MIN_GROUP or len(y) - n_with < MIN_GROUP:
            continue
        lo, hi = np.percentile(boots[:, j], [2.5, 97.5])
        out[key] = (float(est[j]), float(lo), float(hi), boot_p(float(est[j]), boots[:, j]))
    return out


def adjusted_principles(genomes: Sequence[Genome], y: np.ndarray, generation: np.ndarray, *, unit: str = "fitness",
                        seed: int = 0) -> list[Principle]:
    """One principle per switch and primitive: its effect with the other genes held fixed."""
    n = len(y)
    if n < 4 * MIN_GROUP:
        return []
    effects = adjusted_tests(genomes, y, generation, seed=seed)
    masks = departures(genomes)
    out = []
    for key, (d, lo, hi, pval) in effects.items():
        mask = masks[key]
        ok = lo > 0 or hi < 0
        label = departure_label(key)
        sentence = (f"{label} with the other genes held fixed: {fmt(d)} {unit} (95 % CI {fmt(lo)}…{fmt(hi)}, "
                    f"n = {n:,} genomes)" + ("" if ok else " — not established"))
        out.append(Principle("switch" if key in SWITCHES else "primitive", key, SCOPE, label, d, (lo, hi), n,
                             int(mask.sum()), int((~mask).sum()), ok, sentence, p=pval))
    return out


__all__ = ["SCOPE", "adjusted_effects", "adjusted_principles", "adjusted_tests", "bootstrap_counts", "design", "fit", "stratified_indices"]

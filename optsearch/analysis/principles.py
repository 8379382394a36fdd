"""Design principles as measured effects with bootstrap intervals, one plain sentence each.

A principle compares trials that depart from the hand-crafted choice (the Adam genome's value of a
switch, or the absence of a primitive) with those that keep it: the mean fitness difference and its
seeded bootstrap 95 % percentile interval, among all analysed trials and among the top quantile.
Continuous genes get the range the top 10 % occupy and the surrogate's partial dependence, plus an
honest test of that range: it is found on one random half of the trials and scored on the other,
so the selection does not grade itself. An interval that crosses zero is "not established".

Many effects are tested at once (about 75 on a typical study), so about 4 would exclude zero at 95 % by
chance alone. :func:`correct` therefore applies Holm's step-down correction over every test of one
analysis: a principle is established only when its 95 % interval excludes zero *and* its Holm-adjusted
p-value is below 5 % (family-wise error: the chance that *any* established principle is a fluke stays
under 5 %). Holm rather than Benjamini–Hochberg because a principle is read as a claim on its own,
not as one item of a screened list.

Diverged trials carry a sentinel fitness (−1), not a measurement, so they are excluded from the
fitness effects; how often each choice diverges is reported separately as its own effect.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from optsearch.genome import FLOAT_RANGES, Genome
from optsearch.analysis.importance import CONDITIONAL, CONTINUOUS, PRIMS, SWITCHES, Features, Surrogate, genome_features
from optsearch.analysis.importance import partial_dependence, switch_on
from optsearch.genome.primitives import PRIMITIVES

N_BOOT = 2000
MIN_GROUP = 5
"""A comparison needs at least this many trials on each side."""
TOP_QUANTILE = 0.25
"""Switch and primitive effects are also measured among the top 25 % of trials."""
TOP_RANGE = 0.10
"""Continuous genes: the range the top 10 % occupy."""
ALPHA = 0.05
"""Family-wise error rate of the established principles (Holm-corrected)."""
CORRECTION = "Holm"

_REFERENCE = Genome.named("adam")
_SWITCH_LABELS = {
    "bias_correction": "Disabling bias correction",
    "weight_decay": "Enabling decoupled weight decay",
    "warmup": "Adding learning-rate warmup",
    "cosine_decay": "Adding cosine decay",
    "clip": "Clipping gradients (value or norm)",
    "trust_ratio": "Scaling updates by a trust ratio (LAMB)",
}


@dataclass
class Principle:
    """One measured effect.

    Attributes:
        kind: "switch", "primitive", "continuous" or "divergence".
        key: the gene, switch or primitive.
        scope: which trials: "all", "top 25 %" or "held-out half".
        label: what is compared, e.g. "Disabling bias correction".
        effect: mean(departing) − mean(keeping) (fitness, or divergence rate); None when untestable.
        ci: bootstrap 95 % interval of ``effect``.
        n, n_with, n_without: trials compared, with and without the departure.
        established: the interval excludes zero and, after :func:`correct`, the Holm-adjusted p-value
            is below :data:`ALPHA`.
        sentence: the principle in one line.
        details: kind-specific numbers (ranges, partial dependence).
        p: two-sided p-value of "no effect" (normal approximation with the bootstrap's standard error;
            a percentile p-value cannot resolve the ~0.0007 the correction asks of the strongest effect).
        p_adjusted: ``p`` after Holm's correction over the analysis's tests (set by :func:`correct`).
    """

    kind: str
    key: str
    scope: str
    label: str
    effect: float | None
    ci: tuple[float, float] | None
    n: int
    n_with: int
    n_without: int
    established: bool
    sentence: str
    details: dict[str, Any] = field(default_factory=dict)
    p: float | None = None
    p_adjusted: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci else None
        return d


def fmt(x: float, signed: bool = True, digits: int = 3) -> str:
    """A number for a sentence: fixed decimals, a real minus sign."""
    s = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    if abs(x) < 10 ** -digits and x != 0:
        s = f"{x:+.2g}" if signed else f"{x:.2g}"
    return s.replace("-", "−")


def pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _gene(x: float) -> str:
    return f"{x:.3g}".replace("-", "−")


def rng_for(seed: int, key: str) -> np.random.Generator:
    """A generator per comparison, so each interval is reproducible whatever else is computed."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def bootstrap_samples(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT) -> np.ndarray:
    """``n_boot`` bootstrap replicates of mean(a) − mean(b) (each group resampled on its own)."""
    ma = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(axis=1)
    mb = b[rng.integers(0, len(b), (n_boot, len(b)))].mean(axis=1)
    return ma - mb


def bootstrap_diff(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its bootstrap 95 % percentile interval (each group resampled on its own)."""
    lo, hi = np.percentile(bootstrap_samples(a, b, rng, n_boot), [2.5, 97.5])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def boot_p(estimate: float, samples: np.ndarray) -> float:
    """Two-sided p-value of a zero effect: the estimate over the bootstrap standard error, normal tails."""
    se = float(np.std(samples, ddof=1))
    if se == 0.0:
        return 1.0 if estimate == 0 else 0.0
    return math.erfc(abs(estimate) / se / math.sqrt(2))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (reject where ≤ α controls the family-wise error at α)."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order])) if m else p
    out = np.empty(m)
    out[order] = adj
    return out


def correct(principles: Sequence[Principle], alpha: float = ALPHA) -> int:
    """Holm-correct the decisions of every tested principle of one analysis, in place; returns the tests.

    A principle stays established only when its interval excludes zero and its adjusted p ≤ ``alpha``;
    one whose interval excludes zero but does not survive the correction says so in its sentence.
    """
    family = [p for p in principles if p.p is not None]
    for pr, adj in zip(family, holm([pr.p for pr in family])):
        pr.p_adjusted = float(adj)
        if pr.established and adj > alpha:
            pr.established = False
            pr.sentence += (f" — not established after {CORRECTION}'s correction for {len(family)} tests "
                            f"(p = {pr.p:.2g}, adjusted {adj:.2g})")
    return len(family)


def _compare(kind: str, key: str, scope: str, label: str, y: np.ndarray, mask: np.ndarray, *, unit: str, seed: int,
             percent: bool = False) -> Principle:
    a, b = y[mask], y[~mask]
    n = len(y)
    if len(a) < MIN_GROUP or len(b) < MIN_GROUP:
        sentence = (f"{label}: not established (too few trials to compare: {len(a):,} with, {len(b):,} without)")
        return Principle(kind, key, scope, label, None, None, n, len(a), len(b), False, sentence)
    boots = bootstrap_samples(a, b, rng_for(seed, f"{kind}/{key}/{scope}"))
    d = float(a.mean() - b.mean())
    lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    ok = lo > 0 or hi < 0
    if percent:
        body = f"{fmt(100 * d, digits=1)} points (95 % CI {fmt(100 * lo, digits=1)}…{fmt(100 * hi, digits=1)}"
    else:
        body = f"{fmt(d)} {unit} (95 % CI {fmt(lo)}…{fmt(hi)}"
    where = "" if scope == "all" else f" among the {scope}"
    sentence = f"{label}{where}: {body}, n = {n:,})" + ("" if ok else " — not established")
    return Principle(kind, key, scope, label, d, (lo, hi), n, len(a), len(b), ok, sentence, p=boot_p(d, boots))


def departs(genomes: Sequence[Genome], key: str) -> np.ndarray:
    """True where a genome departs from the hand-crafted choice (Adam's switch value, or has the primitive)."""
    if key in PRIMITIVES:
        return np.array([key in g.merged_terms() for g in genomes], dtype=bool)
    ref = switch_on(_REFERENCE, key)
    return np.array([switch_on(g, key) != ref for g in genomes], dtype=bool)


def departures(genomes: Sequence[Genome]) -> dict[str, np.ndarray]:
    """:func:`departs` for every switch and primitive, each genome's terms merged once (not once per key)."""
    terms = [g.merged_terms() for g in genomes]
    return {key: np.array([key in t for t in terms], dtype=bool) if key in PRIMITIVES else departs(genomes, key)
            for key in (*SWITCHES, *PRIMS)}


def departure_label(key: str) -> str:
    """What departing from the hand-crafted choice means, in words ("Disabling bias correction", …)."""
    if key in _SWITCH_LABELS:
        return _SWITCH_LABELS[key]
    if key in PRIMITIVES:
        return f"Including the {key} term [{PRIMITIVES[key].symbol}]"
    return f"{'Disabling' if switch_on(_REFERENCE, key) else 'Enabling'} {key.replace('_', ' ')}"  # a switch added later


def effect_principles(genomes: Sequence[Genome], y: np.ndarray, *, unit: str = "fitness", seed: int = 0,
                      top_quantile: float = TOP_QUANTILE) -> list[Principle]:
    """Switch and primitive effects among all trials and among the top quantile."""
    y = np.asarray(y, dtype=float)
    top = y >= np.quantile(y, 1 - top_quantile) if len(y) else np.zeros(0, dtype=bool)
    scope_top = f"top {pct(top_quantile)}"
    out: list[Principle] = []
    for key, mask in departures(genomes).items():
        kind = "switch" if key in SWITCHES else "primitive"
        out.append(_compare(kind, key, "all", departure_label(key), y, mask, unit=unit, seed=seed))
        out.append(_compare(kind, key, scope_top, departure_label(key), y[top], mask[top], unit=unit, seed=seed))
    return out


def divergence_principles(finished: Sequence[Genome], diverged: np.ndarray, *, seed: int = 0) -> list[Principle]:
    """How each departure changes the divergence rate, among all finished (complete or diverged) trials."""
    rate = np.asarray(diverged, dtype=float)
    return [_compare("divergence", key, "all", f"{departure_label(key)}, divergence rate", rate, mask,
                     unit="", seed=seed, percent=True) for key, mask in departures(finished).items()]


def _span(lo: float, hi: float, gene: str) -> float:
    """Fraction of the searched range that [lo, hi] covers (in log space for log-scaled genes)."""
    L, H, log = FLOAT_RANGES[gene]
    f = (lambda v: np.log10(v)) if log else (lambda v: v)
    return float((f(hi) - f(lo)) / (f(H) - f(L)))


def continuous_principles(genomes: Sequence[Genome], y: np.ndarray, *, surrogate: Surrogate | None = None,
                          features: Features | None = None, unit: str = "fitness", seed: int = 0,
                          top: float = TOP_RANGE) -> list[Principle]:
    """For each continuous gene: where the top trials sit, the partial dependence, and a held-out test."""
    y = np.asarray(y, dtype=float)
    features = features or genome_features(genomes)
    out: list[Principle] = []
    for gene in CONTINUOUS:
        switch = CONDITIONAL.get(gene)
        rows = np.array([switch is None or switch_on(g, switch) for g in genomes], dtype=bool)
        x, yy = features.column(gene)[rows], y[rows]
        L, H, _ = FLOAT_RANGES[gene]
        cond = f" (trials with {switch} on)" if switch else ""
        label = f"{gene}{cond}"
        n = len(yy)
        k = max(1, int(round(top * n)))
        if n < 4 * MIN_GROUP:
            out.append(Principle("continuous", gene, "held-out half", label, None, None, n, 0, 0, False,
                                 f"{label}: not established (only {n:,} trials)"))
            continue
        best = x[np.argsort(-yy)[:k]]
        lo, hi = (float(v) for v in np.percentile(best, [5, 95]))
        details: dict[str, Any] = {"top_n": k, "top_range": [lo, hi], "top_median": float(np.median(best)),
                                   "searched_range": [L, H], "fraction_of_range": _span(lo, hi, gene)}
        pd_text = ""
        if surrogate is not None:
            grid, pd = partial_dependence(surrogate, features, gene, rows=np.flatnonzero(rows), seed=seed)
            details["partial_dependence"] = {"grid": grid.tolist(), "mean_prediction": pd.tolist(),
                                             "argmax": float(grid[np.argmax(pd)]), "amplitude": float(pd.max() - pd.min())}
            pd_text = (f"; the surrogate's partial dependence peaks at {_gene(grid[np.argmax(pd)])} "
                       f"(swing {fmt(float(pd.max() - pd.min()), signed=False)})")
        # Held-out test: the top range is found on half A and scored on half B.
        perm = rng_for(seed, f"split/{gene}").permutation(n)
        a, b = perm[: n // 2], perm[n // 2:]
        ka = max(1, int(round(top * len(a))))
        best_a = x[a][np.argsort(-yy[a])[:ka]]
        alo, ahi = np.percentile(best_a, [5, 95])
        inside = (x[b] >= alo) & (x[b] <= ahi)
        details["held_out_range"] = [float(alo), float(ahi)]
        p = _compare("continuous", gene, "held-out half", label, yy[b], inside, unit=unit, seed=seed)
        desc = (f"{label}: the top {pct(top)} (n = {k:,}) lie in {_gene(lo)}…{_gene(hi)} "
                f"({pct(details['fraction_of_range'])} of the searched {_gene(L)}…{_gene(H)}){pd_text}; ")
        if p.effect is None:
            test = f"the range cannot be tested on the held-out half ({p.n_with:,} inside, {p.n_without:,} outside) — not established"
        else:
            test = (f"held-out trials inside the range found on the other half score {fmt(p.effect)} {unit} "
                    f"(95 % CI {fmt(p.ci[0])}…{fmt(p.ci[1])}, n = {p.n:,})" + ("" if p.established else " — not established"))
        p.sentence = desc + test
        p.details = details
        out.append(p)
    return out


def compute_principles(genomes: Sequence[Genome], y: np.ndarray, *, diverged: Sequence[Genome] = (),
                       surrogate: Surrogate | None = None, features: Features | None = None,
                       unit: str = "fitness", seed: int = 0) -> list[Principle]:
    """All principles: switch and primitive effects, continuous genes, and divergence rates.

    Args:
        genomes, y: the analysed (non-diverged) trials and their objective values (higher is better).
        diverged: genomes of trials that diverged; only used for the separate divergence-rate effects.
        surrogate, features: the fitted forest and features from :mod:`optsearch.analysis.importance`
            (partial dependence is skipped without them).
        unit: how the objective is named in sentences.
    """
    effects, rates = principles_without_surrogate(genomes, y, diverged=diverged, unit=unit, seed=seed)
    return effects + continuous_principles(genomes, y, surrogate=surrogate, features=features, unit=unit,
                                           seed=seed) + rates


def principles_without_surrogate(genomes: Sequence[Genome], y: np.ndarray, *, diverged: Sequence[Genome] = (),
                                 unit: str = "fitness", seed: int = 0) -> tuple[list[Principle], list[Principle]]:
    """The switch and primitive effects, and the divergence-rate effects (empty without ``diverged``): the
    principles that need no forest, which the analysis computes in its child while it fits the forest."""
    effects = effect_principles(genomes, y, unit=unit, seed=seed)
    if not len(diverged):
        return effects, []
    flags = np.r_[np.zeros(len(genomes)), np.ones(len(diverged))]
    return effects, divergence_principles([*genomes, *diverged], flags, seed=seed)

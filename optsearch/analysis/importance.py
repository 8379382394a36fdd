"""Which genes matter: genome features, Optuna's importance evaluators and a random-forest surrogate.

Raw slot parameters (``term_0``, ``alpha_2`` …) are a poor unit for importance: slot order is
arbitrary, so "adam in slot 2" means nothing. Importance is therefore computed over *genome units*:
each continuous gene, each switch, the clip mode, and each primitive's total weight Σα across slots
(0 when absent). Three estimators look at the same units so their rankings can be compared:

* PED-ANOVA (Optuna's default; fast, fine on thousands of trials): how differently the top 10 % of
  trials are distributed from all of them.
* fANOVA (Optuna's): variance decomposition of a random forest. It varies between calls, so it runs
  with fixed seeds several times and the spread is reported.
* A scikit-learn random forest on the genome features, scored by cross-validated R² (so a reader
  knows whether to believe it) with grouped permutation importance measured on held-out folds.

The three often disagree (PED-ANOVA looks at where the best trials sit, fANOVA and the forest at the
variance of the whole fitness surface), so :meth:`Importance.agreement` states how far they agree —
Spearman rank correlation over all units and overlap of their top 5 — and names the units all three
put in their top 5 and those only some do. A reader should trust what the methods agree on.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Container, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from optsearch.genome import BOOL_GENES, CLIP_CHOICES, FLOAT_RANGES, Genome, search_space
from optsearch.analysis.agreement import METHODS, TOP_K, Agreement, ranks, spearman
from optsearch.analysis.fanova_trees import TreeBoxes, importance as tree_importance
from optsearch.genome.primitives import PRIMITIVES

CONTINUOUS: tuple[str, ...] = tuple(FLOAT_RANGES)
"""Continuous genes, in genome order."""
SWITCHES: tuple[str, ...] = (*BOOL_GENES, "clip")
"""On/off genes (``clip`` counts as on when its mode is not ``none``)."""
CONDITIONAL: dict[str, str] = {"wd_log10": "weight_decay", "clip_threshold": "clip", "warmup_frac": "warmup"}
"""Continuous genes that only act when a switch is on (the space is static, so they always exist)."""
PRIMS: tuple[str, ...] = tuple(PRIMITIVES)
UNITS: tuple[str, ...] = (*CONTINUOUS, *SWITCHES, *PRIMS)
"""The units importance is reported over: genes, switches and primitives."""

optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" line per view

FANOVA_SEEDS: tuple[int, ...] = (0, 1, 2)
FANOVA_TREES = 16
FANOVA_DEPTH = 8
"""Optuna's fANOVA defaults (64 trees of depth 64) take minutes on 2,500 trials; 16×8 ranks the same here."""


def unit_label(unit: str) -> str:
    """How a unit is named in reports: primitives get their symbol."""
    if unit in PRIMITIVES:
        return f"{unit} term [{PRIMITIVES[unit].symbol}]"
    return unit


def switch_on(g: Genome, switch: str) -> bool:
    return g.clip != "none" if switch == "clip" else bool(getattr(g, switch))


@dataclass(frozen=True)
class Features:
    """Genome features of n trials.

    Attributes:
        X: (n, d) float matrix for scikit-learn: continuous genes, switches as 0/1, clip mode one-hot,
            and per primitive its presence (0/1) and total weight Σα.
        columns: the d column names.
        groups: unit -> the columns that carry it (permuted together, so correlated columns such as
            a primitive's presence and weight do not hide each other's importance).
        units: unit -> values for the Optuna view (float, bool or clip mode string). A primitive is its
            presence there: PED-ANOVA's Parzen estimates turn the point mass of Σα at 0 into spurious
            importance (measured: every primitive ranked above bias correction on a study where none mattered).
        distributions: unit -> Optuna distribution of those values.
    """

    X: np.ndarray
    columns: list[str]
    groups: dict[str, list[int]]
    units: dict[str, list[Any]]
    distributions: dict[str, BaseDistribution]

    def column(self, name: str) -> np.ndarray:
        return self.X[:, self.columns.index(name)]


def genome_features(genomes: Sequence[Genome]) -> Features:
    """Features that do not depend on slot order (a primitive's presence and Σα across slots)."""
    space = search_space()
    cols: dict[str, list[float]] = {}
    groups: dict[str, list[str]] = {}
    units: dict[str, list[Any]] = {}
    dists: dict[str, BaseDistribution] = {}
    for name in CONTINUOUS:
        cols[name] = [float(getattr(g, name)) for g in genomes]
        groups[name] = [name]
        units[name] = cols[name]
        dists[name] = space[name]
    for name in BOOL_GENES:
        cols[name] = [float(getattr(g, name)) for g in genomes]
        groups[name] = [name]
        units[name] = [bool(getattr(g, name)) for g in genomes]
        dists[name] = CategoricalDistribution((False, True))
    for mode in CLIP_CHOICES[1:]:
        cols[f"clip_{mode}"] = [float(g.clip == mode) for g in genomes]
    groups["clip"] = [f"clip_{m}" for m in CLIP_CHOICES[1:]]
    units["clip"] = [g.clip for g in genomes]
    dists["clip"] = CategoricalDistribution(CLIP_CHOICES)
    merged = [g.merged_terms() for g in genomes]
    for p in PRIMS:
        cols[f"has_{p}"] = [float(p in m) for m in merged]
        cols[f"w_{p}"] = [float(m.get(p, 0.0)) for m in merged]
        groups[p] = [f"has_{p}", f"w_{p}"]
        units[p] = [p in m for m in merged]
        dists[p] = CategoricalDistribution((False, True))
    columns = list(cols)
    X = np.array([cols[c] for c in columns], dtype=float).T.reshape(len(genomes), len(columns))
    return Features(X, columns, {u: [columns.index(c) for c in cs] for u, cs in groups.items()}, units, dists)


# ----------------------------------------------------------------------------- Optuna evaluators
class View:
    """The trials Optuna's importance evaluators read, without a study around them.

    The evaluators read only ``get_trials``, ``directions`` and ``_is_multi_objective`` of the study
    they are given. An in-memory study would deep-copy every trial on ``add_trials`` (two views of 2,500
    trials: most of the time PED-ANOVA took); this holds the trials as made. The tests compare its
    importances with those of a real study of the same trials.
    """

    directions = (optuna.study.StudyDirection.MAXIMIZE,)

    def __init__(self, trials: Sequence[FrozenTrial]) -> None:
        self.trials = list(trials)

    def get_trials(self, deepcopy: bool = False, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return [t for t in self.trials if states is None or t.state in states]

    def _is_multi_objective(self) -> bool:
        return False


def view_study(params: Sequence[dict[str, Any]], distributions: dict[str, BaseDistribution], y: np.ndarray) -> View:
    """A single-objective (maximize) view of the given params and values for Optuna's evaluators.

    Optuna's evaluators read trials from a study; a view lets them see exactly the trials and target
    the analysis chose (diverged ones excluded, a per-task or aggregate value), in any parameter space.
    """
    if not len(y):
        return View([])
    create_trial(params=params[0], distributions=distributions, value=float(y[0]))  # validates the encoding once
    # FrozenTrial as create_trial makes it, without converting and comparing every trial's distributions
    # (half of the importance step's main-thread time on 2,500 trials); numbered as a study would number them.
    return View([FrozenTrial(i, TrialState.COMPLETE, float(v), None, None, p, distributions, {}, {}, {}, i)
                 for i, (p, v) in enumerate(zip(params, y))])


def unit_view(features: Features, y: np.ndarray) -> View:
    n = len(y)
    params = [{u: features.units[u][i] for u in UNITS} for i in range(n)]
    return view_study(params, {u: features.distributions[u] for u in UNITS}, y)


def ped_anova(view: View) -> dict[str, float]:
    """PED-ANOVA importances (normalised to sum 1), Optuna's default evaluator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(optuna.importance.get_param_importances(view, evaluator=optuna.importance.PedAnovaImportanceEvaluator()))


def fanova(view: View, seeds: Sequence[int] = FANOVA_SEEDS) -> dict[str, tuple[float, float]]:
    """fANOVA importances over several fixed seeds: unit -> (mean, standard deviation).

    The numbers are those of ``get_param_importances(view, evaluator=FanovaImportanceEvaluator(...))``
    per seed (a test checks they are equal to 1e-12), but the view's search space and its encoding are
    worked out once for all seeds: Optuna's evaluator recomputes them on every call, and comparing every
    trial's distributions to find the space took a third of fANOVA's time on 2,500 trials. The space is
    static (every trial of the view has the same distributions), so the first trial's is the space. Each
    tree's marginal variances come from :mod:`~optsearch.analysis.fanova_trees` (all midpoints at once).
    """
    from optuna._transform import _SearchSpaceTransform
    from optuna.importance._fanova._fanova import _Fanova

    trials = [t for t in view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if np.isfinite(t.value)]
    if len(trials) <= 1:
        return {}
    space = dict(sorted(trials[0].distributions.items()))  # Optuna's intersection space is sorted by name
    varying = {k: d for k, d in space.items() if not d.single()}
    if not varying:
        return {k: (0.0, 0.0) for k in space}
    trans = _SearchSpaceTransform(varying, transform_log=False, transform_step=False)
    X = np.array([trans.transform(t.params) for t in trials])
    y = np.array([t.value for t in trials], dtype=float)
    runs: list[dict[str, float]] = []
    for s in seeds:
        ev = _Fanova(n_trees=FANOVA_TREES, max_depth=FANOVA_DEPTH, min_samples_split=2, min_samples_leaf=1, seed=s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ev.fit(X=X, y=y, search_spaces=trans.bounds, column_to_encoded_columns=trans.column_to_encoded_columns)
            except RuntimeError:  # zero variance in every tree: nothing to decompose
                return {}
        trees = [TreeBoxes(t) for t in ev._trees]  # Optuna's trees, their marginals at every midpoint at once
        raw = {k: tree_importance(trees, trans.column_to_encoded_columns[i]) for i, k in enumerate(varying)}
        total = sum(raw.values())
        runs.append({k: (raw.get(k, 0.0) / total if total > 0 else 1.0 / len(space)) for k in space})
    return {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in space}


# ----------------------------------------------------------------------------- surrogate
@dataclass
class Surrogate:
    """A random forest of fitness on genome features, with its own credibility.

    Attributes:
        model: the forest fit on all trials (used for partial dependence).
        cv_r2: held-out R² of each cross-validation fold.
        oob_r2: out-of-bag R² of ``model``.
        importance: unit -> (mean, std) drop in held-out R² when the unit's columns are permuted.
    """

    model: Any
    cv_r2: list[float]
    oob_r2: float
    importance: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def r2(self) -> float:
        return float(np.mean(self.cv_r2)) if self.cv_r2 else float("nan")

    def verdict(self) -> str:
        """One phrase on how far to trust the surrogate."""
        r2 = self.r2
        if not math.isfinite(r2) or r2 < 0.2:
            return "explains little of the fitness variance: do not trust its importances or partial dependences"
        if r2 < 0.5:
            return "explains part of the variance: read its importances as rough"
        return "explains most of the variance: its importances and partial dependences are usable"


def _forest(seed: int, oob: bool = False):
    """100 trees built on every core (threads: tree building releases the GIL); fit it with :func:`_fit`.

    The trees' seeds are drawn before they are built, so the trees are the same whatever ``n_jobs``; on two
    cores the second one is free once the analysis's forked child (fANOVA, the effects, the bootstrap) is
    done, and the forest is the longest step."""
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=100, min_samples_leaf=3, max_features=0.5, oob_score=oob,
                                 random_state=seed, n_jobs=min(4, os.cpu_count() or 1))


def _fit(forest, X: np.ndarray, y: np.ndarray):
    """Fit on threads; its own ``predict`` then runs on one (see :func:`predict`)."""
    return forest.fit(X, y).set_params(n_jobs=1)


def predict(forest, X: np.ndarray) -> np.ndarray:
    """``forest.predict(X)`` with one thread per core, to the bit.

    scikit-learn's threads add the trees' predictions in the order they finish, and float sums in another
    order differ in the last bits (the analysis prints the same numbers every run). Here the trees predict on
    threads (tree traversal releases the GIL) and their predictions are added in the trees' order, as
    ``predict`` with ``n_jobs=1`` adds them; the tests check the two are equal.
    """
    from concurrent.futures import ThreadPoolExecutor

    X32 = np.ascontiguousarray(X, dtype=np.float32)  # what the forest's predict hands its trees
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        preds = list(pool.map(lambda tree: tree.predict(X32, check_input=False), forest.estimators_))
    out = np.zeros(len(X32))
    for p in preds:
        out += p
    out /= len(preds)
    return out


def surrogate(features: Features, y: np.ndarray, *, seed: int = 0, folds: int = 5, repeats: int = 3) -> Surrogate:
    """Fit the forest, score it by K-fold R² and grouped permutation importance on the held-out folds."""
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold

    X = features.X
    n = len(y)
    rng = np.random.default_rng(seed)
    cv_r2: list[float] = []
    drops: dict[str, list[float]] = {u: [] for u in features.groups}
    folds = min(folds, n // 2)
    if folds >= 2:
        for k, (tr, te) in enumerate(KFold(folds, shuffle=True, random_state=seed).split(X)):
            m = _fit(_forest(seed + k), X[tr], y[tr])
            base = r2_score(y[te], predict(m, X[te]))
            cv_r2.append(float(base))
            # Every permuted copy of the held-out fold in one predict call (a call costs ~25 ms of overhead).
            blocks, keys = [], []
            for unit, cols in features.groups.items():
                for _ in range(repeats):
                    Xp = X[te].copy()
                    Xp[:, cols] = Xp[rng.permutation(len(te))][:, cols]  # one permutation for the group
                    blocks.append(Xp)
                    keys.append(unit)
            pred = predict(m, np.concatenate(blocks)).reshape(len(blocks), len(te))
            for unit, p in zip(keys, pred):
                drops[unit].append(base - r2_score(y[te], p))
    final = _fit(_forest(seed, oob=n >= 20), X, y)
    oob = float(final.oob_score_) if n >= 20 else float("nan")
    imp = {u: (float(np.mean(d)), float(np.std(d))) for u, d in drops.items() if d}
    return Surrogate(final, cv_r2, oob, dict(sorted(imp.items(), key=lambda kv: -kv[1][0])))


def partial_dependence(s: Surrogate, features: Features, gene: str, *, rows: np.ndarray | None = None,
                       points: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The surrogate's mean prediction as ``gene`` sweeps its searched range (others as observed).

    ``rows`` restricts the averaging to some trials (a conditional gene averages over trials whose
    switch is on). At most 400 rows are used: the curve is an average, it does not need them all.
    """
    lo, hi, log = FLOAT_RANGES[gene]
    grid = np.geomspace(lo, hi, points) if log else np.linspace(lo, hi, points)
    X = features.X if rows is None else features.X[rows]
    if len(X) > 400:
        X = X[np.random.default_rng(seed).choice(len(X), 400, replace=False)]
    j = features.columns.index(gene)
    tiled = np.repeat(X[None], points, axis=0)
    tiled[:, :, j] = grid[:, None]
    pred = predict(s.model, tiled.reshape(-1, X.shape[1])).reshape(points, len(X)).mean(axis=1)
    return grid, pred


# ----------------------------------------------------------------------------- all together
@dataclass
class Importance:
    """Importances of the genome units by three methods, plus PED-ANOVA over the raw Optuna params."""

    ped_anova: dict[str, float]
    fanova: dict[str, tuple[float, float]]
    surrogate: Surrogate
    raw_ped_anova: dict[str, float]

    def ranking(self) -> list[str]:
        """Units by PED-ANOVA, the default evaluator."""
        return sorted(self.ped_anova, key=lambda u: -self.ped_anova[u])

    def scores(self) -> dict[str, dict[str, float]]:
        """method -> unit -> its importance (fANOVA: mean over seeds; forest: R² lost when permuted)."""
        return {"PED-ANOVA": dict(self.ped_anova), "fANOVA": {u: v[0] for u, v in self.fanova.items()},
                "forest": {u: v[0] for u, v in self.surrogate.importance.items()}}

    def agreement(self, k: int = TOP_K) -> Agreement:
        """Rank correlation, top-k overlap, and the units the methods agree and disagree on."""
        units = list(self.ped_anova)
        r = {m: ranks(s, units) for m, s in self.scores().items()}
        pairs = [(a, b) for i, a in enumerate(METHODS) for b in METHODS[i + 1:]]
        top = {m: {u for u in units if r[m][u] <= k} for m in METHODS}
        order = sorted(units, key=lambda u: (sum(r[m][u] for m in METHODS), units.index(u)))
        return Agreement(r, {f"{a} / {b}": spearman(r[a], r[b]) for a, b in pairs},
                         {f"{a} / {b}": len(top[a] & top[b]) for a, b in pairs},
                         [u for u in order if all(u in top[m] for m in METHODS)],
                         [u for u in order if any(u in top[m] for m in METHODS) and not all(u in top[m] for m in METHODS)],
                         k)

    def to_dict(self) -> dict[str, Any]:
        s = self.surrogate
        return {
            "units": list(UNITS),
            "ped_anova": self.ped_anova,
            "fanova": {"seeds": list(FANOVA_SEEDS), "n_trees": FANOVA_TREES, "max_depth": FANOVA_DEPTH,
                       "mean": {k: v[0] for k, v in self.fanova.items()},
                       "std": {k: v[1] for k, v in self.fanova.items()}},
            "surrogate": {"model": "RandomForestRegressor(n_estimators=100, min_samples_leaf=3, max_features=0.5)",
                          "cv_r2": s.cv_r2, "cv_r2_mean": s.r2, "oob_r2": s.oob_r2, "verdict": s.verdict(),
                          "permutation_r2_drop": {k: v[0] for k, v in s.importance.items()},
                          "permutation_r2_drop_std": {k: v[1] for k, v in s.importance.items()}},
            "raw_params_ped_anova": self.raw_ped_anova,
            "agreement": self.agreement().to_dict(),
        }


def compute_importance(genomes: Sequence[Genome], y: np.ndarray, *, seed: int = 0,
                       features: Features | None = None, with_fanova: bool = True) -> Importance:
    """All importances for ``genomes`` scored ``y`` (higher is better; diverged trials already removed).

    The forest surrogate is fitted in a second thread while the Optuna evaluators run: its fitting and
    prediction run in scikit-learn's compiled code, which releases the GIL, so on two cores the two
    overlap. ``with_fanova=False`` leaves ``fanova`` empty for the caller to fill
    (:func:`~optsearch.analysis.result.analyze` computes it in a forked child). Each estimator is seeded
    on its own, so the numbers do not depend on where or in what order they run.
    """
    from concurrent.futures import ThreadPoolExecutor

    # scikit-learn is imported before the thread starts: two threads importing it for the first time at once can
    # see a partly initialised module ("cannot import name 'clone' … circular import"; seen in the test suite)
    import sklearn.ensemble  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    features = features or genome_features(genomes)
    y = np.asarray(y, dtype=float)
    with ThreadPoolExecutor(1) as pool:
        forest = pool.submit(surrogate, features, y, seed=seed)
        units = unit_view(features, y)
        raw = view_study([g.to_params() for g in genomes], search_space(), y)
        ped, raw_ped = ped_anova(units), ped_anova(raw)
        fa = fanova(units) if with_fanova else {}
        return Importance(ped_anova=ped, fanova=fa, surrogate=forest.result(), raw_ped_anova=raw_ped)

"""The genome: an optimizer as a weighted sum of primitive terms plus hyperparameters and switches.

The search space is **static**: every parameter exists in every trial (4 term slots, each with a
term — possibly ``none`` — and an α), so NSGA-II, our genetic sampler and the importance evaluators
all see the whole space. Conditional spaces would be sampled at random by NSGA-II and silently
dropped by fANOVA.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from optsearch.errors import GenomeError
from optsearch.genome import text
from optsearch.genome.primitives import (
    EXTRA_PRIMITIVES, NONE, PRIMITIVES, SIGN_PRIMITIVES, TERM_CHOICES, state_needed,
)

K = 4
"""Number of term slots."""

FORMAT_VERSION = 2
"""2: β genes as log10(1 − β). Files of version 1 (β itself) still load (see :func:`upgrade_params`)."""
CLIP_CHOICES: tuple[str, ...] = ("none", "value", "norm")

# name -> (low, high, log) for the continuous genes; the ranges are the search space.
FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr_log10": (-5.0, -0.5, False),
    # β as log10(1 − β), the scale on which it matters (0.9 → 0.99 is a step as large as 0.99 → 0.999):
    # β1 ∈ [0, 0.999], β2 ∈ [0.8, 0.9999], β3 ∈ [0.9, 0.9999].
    "beta1_log1m": (-3.0, 0.0, False),
    "beta2_log1m": (-4.0, math.log10(0.2), False),
    "eps_log10": (-10.0, -4.0, False),
    "wd_log10": (-6.0, -1.0, False),
    "clip_threshold": (0.01, 10.0, True),
    "warmup_frac": (0.01, 0.3, False),
    "beta3_log1m": (-4.0, -1.0, False),
}
ALPHA_RANGE: tuple[float, float] = (0.0, 4.0)
BOOL_GENES: tuple[str, ...] = ("weight_decay", "bias_correction", "warmup", "cosine_decay", "trust_ratio")
SIGN_CHOICES: tuple[str, ...] = (NONE, *SIGN_PRIMITIVES)
EXTRA_CHOICES: tuple[str, ...] = (NONE, *EXTRA_PRIMITIVES)
LATER_GENES: dict[str, Any] = {
    "sign_term": NONE, "sign_alpha": 0.0,
    "extra_term": NONE, "extra_alpha": 0.0, "beta3_log1m": -3.0, "trust_ratio": False,
}
"""Genes added after studies and files already existed, with the value that means "absent". A stored
trial or genome file without them reads as that value, and a genome file leaves out those holding it."""
LEGACY_BETAS: dict[str, tuple[str, float, float]] = {
    "beta1": ("beta1_log1m", 0.0, 0.999),
    "beta2": ("beta2_log1m", 0.8, 0.9999),
}
"""β genes as studies and files before format 2 stored them (β itself, in [low, high]) -> their log gene."""


def upgrade_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A stored trial's or file's genome parameters in today's form: the one home of old-study compatibility.

    Genes added later get their "absent" value (:data:`LATER_GENES`); a β stored as itself (studies and
    files before format 2) becomes log10(1 − β), validated against the range it was searched in. Other
    parameters a trial may hold pass through. Readers of ``trial.params`` go through here (or through
    :meth:`Genome.from_params`, which does), so a study stored before a change loads, resumes and analyses.
    """
    out = {**LATER_GENES, **params}
    for old, (new, lo, hi) in LEGACY_BETAS.items():
        if old in out:
            beta = out.pop(old)
            _check_float(old, beta, lo, hi)
            if new not in out:
                low, high, _ = FLOAT_RANGES[new]
                out[new] = min(high, max(low, log1m(beta)))  # an end of the range may round out
    return out


def log1m(beta: float) -> float:
    """The log gene of β, log10(1 − β), rounded to 14 decimals so that β = 0.999 gives −3 exactly."""
    return round(math.log10(1.0 - beta), 14)


RECIPE_GENES: tuple[str, ...] = ("warmup", "warmup_frac", "cosine_decay", "clip", "clip_threshold")
"""The training recipe around an update rule: lr schedule and gradient clipping. A baseline given an evolved
genome's recipe differs from it in the rule alone, so a comparison measures the rule, not the recipe."""
SILENT_WHEN_OFF: dict[str, tuple[str, Any, Any]] = {
    "wd_log10": ("weight_decay", False, -2.0), "clip_threshold": ("clip", "none", 1.0),
    "warmup_frac": ("warmup", False, 0.05)}
"""gene -> (its switch, the switch value that silences it, the fixed value a canonical genome holds)."""


@dataclass(frozen=True)
class Genome:
    """One optimizer. Immutable: ``dataclasses.replace(g, lr_log10=-2.5)`` makes a variant.

    The update it encodes (see :meth:`formula`)::

        θ ← θ − η_t·λ·θ − η_t·Σ_k α_k·term_k,   η_t = 10^lr_log10 · warmup(t) · cosine(t)

    with λ = 10^wd_log10 when ``weight_decay`` is on (decoupled, as in AdamW) and the gradient
    clipped first (``clip``: per-element ``value`` as in the paper, or global ``norm``). Besides the
    K slots, ``sign_term`` (AddSign or PowerSign, or ``none``) with weight ``sign_alpha`` is one more
    term of the sum: a gene of its own because a slot's choices cannot grow in a stored study; so is
    ``extra_term`` (orthogonalised momentum, AdEMAMix's slow EMA or Adan's gradient difference, see
    :data:`~optsearch.genome.primitives.EXTRA_PRIMITIVES`) with weight ``extra_alpha`` and its own β3.
    ``trust_ratio`` scales each tensor's Σ α_k·term_k by ‖θ‖/‖Σ‖ (LAMB). The β genes are log10(1 − β);
    :attr:`beta1`, :attr:`beta2`, :attr:`beta3` give β itself.
    """

    terms: tuple[str, str, str, str] = ("adam", NONE, NONE, NONE)
    alphas: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    lr_log10: float = -3.0
    beta1_log1m: float = -1.0
    beta2_log1m: float = -3.0
    eps_log10: float = -8.0
    weight_decay: bool = False
    wd_log10: float = -2.0
    bias_correction: bool = True
    clip: str = "none"
    clip_threshold: float = 1.0
    warmup: bool = False
    warmup_frac: float = 0.05
    cosine_decay: bool = False
    sign_term: str = NONE
    sign_alpha: float = 0.0
    extra_term: str = NONE
    extra_alpha: float = 0.0
    beta3_log1m: float = -3.0
    trust_ratio: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    # ----------------------------------------------------------------- derived values
    @property
    def lr(self) -> float:
        return 10.0**self.lr_log10

    @property
    def beta1(self) -> float:
        return 1.0 - 10.0**self.beta1_log1m

    @property
    def beta2(self) -> float:
        return 1.0 - 10.0**self.beta2_log1m

    @property
    def beta3(self) -> float:
        return 1.0 - 10.0**self.beta3_log1m

    @property
    def eps(self) -> float:
        return 10.0**self.eps_log10

    @property
    def wd(self) -> float:
        """Decoupled weight-decay coefficient λ (0 when weight decay is off)."""
        return 10.0**self.wd_log10 if self.weight_decay else 0.0

    def merged_terms(self) -> dict[str, float]:
        """Primitive -> Σ α over the slots holding it (slot order is irrelevant; zero weights dropped)."""
        out: dict[str, float] = {}
        for t, a in zip((*self.terms, self.sign_term, self.extra_term),
                        (*self.alphas, self.sign_alpha, self.extra_alpha)):
            if t != NONE:
                out[t] = out.get(t, 0.0) + a
        return {t: a for t, a in out.items() if a != 0.0}

    def state_floats(self) -> int:
        """Optimizer state in floats per parameter: one per buffer its active terms declare (``needs``).

        Read from the primitive registry, as the optimizers allocate it, so a primitive added later is
        counted by declaring its state: 0 for plain SGD, 1 for momentum/Lion/signum, 2 for Adam. Inactive
        terms (α = 0 or ``none``) cost nothing; the switches keep no per-parameter state (the step count
        behind bias correction and the schedule is one number per tensor).
        """
        return len(state_needed(tuple(self.merged_terms())))

    @classmethod
    def single(cls, term: str, alpha: float = 1.0, **genes: Any) -> "Genome":
        """A genome whose only term is ``term`` (in slot 0, or in the sign or extra gene that holds it)."""
        if term in EXTRA_PRIMITIVES:
            return cls(terms=(NONE,) * K, alphas=(0.0,) * K, extra_term=term, extra_alpha=alpha, **genes)
        if term in SIGN_PRIMITIVES:
            return cls(terms=(NONE,) * K, alphas=(0.0,) * K, sign_term=term, sign_alpha=alpha, **genes)
        return cls(terms=(term, *(NONE,) * (K - 1)), alphas=(alpha, *(0.0,) * (K - 1)), **genes)

    def without(self, term: str) -> "Genome":
        """This genome with every occurrence of the primitive ``term`` removed (slots emptied, α 0)."""
        return replace(
            self,
            terms=tuple(NONE if t == term else t for t in self.terms),
            alphas=tuple(0.0 if t == term else a for t, a in zip(self.terms, self.alphas)),
            sign_term=NONE if self.sign_term == term else self.sign_term,
            sign_alpha=0.0 if self.sign_term == term else self.sign_alpha,
            extra_term=NONE if self.extra_term == term else self.extra_term,
            extra_alpha=0.0 if self.extra_term == term else self.extra_alpha,
        )

    def recipe(self) -> dict[str, Any]:
        """The genome's training recipe (:data:`RECIPE_GENES`)."""
        return {n: getattr(self, n) for n in RECIPE_GENES}

    def with_recipe(self, source: "Genome") -> "Genome":
        """This update rule trained with ``source``'s recipe (schedule and clipping)."""
        return replace(self, **source.recipe())

    def canonical(self) -> "Genome":
        """The one genome of every spelling of this optimizer: one identity for the sampler, noise model, funnel.

        Silent genes take fixed values (:data:`SILENT_WHEN_OFF`); the slots hold each term once with its summed
        α (split into chunks of at most the α range's top when the sum exceeds it), in the order of the term
        choices, then empty slots; a term of weight 0 is dropped. The update is the same (up to float rounding
        of the merged sum).
        """
        kw: dict[str, Any] = {}
        for gene, (switch, off, fixed) in SILENT_WHEN_OFF.items():
            if getattr(self, switch) == off:
                kw[gene] = fixed
        merged = _slot_sums(self)
        slots: list[tuple[str, float]] = []
        for t in TERM_CHOICES:
            a = merged.get(t, 0.0)
            while a > 0.0:
                chunk = min(a, ALPHA_RANGE[1])
                slots.append((t, chunk))
                a = a - chunk if a - chunk > 1e-12 else 0.0
        slots += [(NONE, 0.0)] * (K - len(slots))
        kw["terms"] = tuple(t for t, _ in slots)
        kw["alphas"] = tuple(float(a) for _, a in slots)
        if self.sign_term == NONE or self.sign_alpha == 0.0:
            kw["sign_term"], kw["sign_alpha"] = NONE, 0.0
        if self.extra_term == NONE or self.extra_alpha == 0.0:  # no extra term: its weight and β3 are silent
            kw["extra_term"], kw["extra_alpha"] = NONE, 0.0
            kw["beta3_log1m"] = LATER_GENES["beta3_log1m"]
        return replace(self, **kw)

    # ----------------------------------------------------------------- Optuna params
    def to_params(self) -> dict[str, Any]:
        """Flat Optuna parameters (``term_0..3``, ``alpha_0..3`` and the scalar genes)."""
        p: dict[str, Any] = {}
        for i in range(K):
            p[f"term_{i}"] = self.terms[i]
            p[f"alpha_{i}"] = self.alphas[i]
        for f in fields(self):
            if f.name not in ("terms", "alphas"):
                p[f.name] = getattr(self, f.name)
        return p

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Genome":
        """Inverse of :meth:`to_params`; raises :class:`GenomeError` naming a missing or bad field.

        Stored forms of earlier versions are read through :func:`upgrade_params` (later genes missing,
        β stored as itself).
        """
        params = upgrade_params(params)
        missing = [n for n in search_space() if n not in params]
        if missing:
            raise GenomeError(f"genome is missing field(s): {', '.join(missing)}")
        kw: dict[str, Any] = {n: params[n] for n in search_space() if not n.startswith(("term_", "alpha_"))}
        kw["terms"] = tuple(params[f"term_{i}"] for i in range(K))
        kw["alphas"] = tuple(params[f"alpha_{i}"] for i in range(K))
        return cls(**kw)

    # ----------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        """The file form; later genes holding their "absent" value are left out (see :data:`LATER_GENES`)."""
        params = self.to_params()
        if self.sign_term == NONE:
            params = {n: v for n, v in params.items() if n not in ("sign_term", "sign_alpha")}
        params = {n: v for n, v in params.items() if n not in LATER_GENES or v != LATER_GENES[n]}
        return {"format_version": FORMAT_VERSION, "genome": params, "formula": self.formula()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Genome":
        """Read a genome JSON written by :meth:`save` (or ``export``)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GenomeError(f"genome file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GenomeError(f"genome file {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("genome"), dict):
            raise GenomeError(f"genome file {path}: expected an object with a 'genome' field")
        version = data.get("format_version")
        if version not in (1, FORMAT_VERSION):  # 1: β stored as itself (upgraded on reading)
            raise GenomeError(f"genome file {path}: unsupported format_version {version!r} (expected {FORMAT_VERSION})")
        try:
            return cls.from_params(data["genome"])
        except GenomeError as e:
            raise GenomeError(f"genome file {path}: {e}") from None

    @classmethod
    def named(cls, name: str) -> "Genome":
        """A known optimizer as a genome (see :data:`NAMED`)."""
        try:
            return NAMED[name]
        except KeyError:
            raise GenomeError(f"unknown genome {name!r}; known: {', '.join(NAMED)}") from None

    # ----------------------------------------------------------------- text
    def formula(self) -> str:
        """The update rule as one readable line, duplicate terms merged (Σ α)."""
        return text.formula(self)

    def describe(self) -> str:
        """Formula plus hyperparameters, several lines (for ``genome show`` / ``study show``)."""
        return text.describe(self)


def _slot_sums(g: Genome) -> dict[str, float]:
    """Term -> Σ α over the K slots (not the sign gene), terms of zero weight left out; ``fsum`` makes the sum
    independent of slot order to the last bit."""
    by: dict[str, list[float]] = {}
    for t, a in zip(g.terms, g.alphas):
        if t != NONE and a != 0.0:
            by.setdefault(t, []).append(a)
    return {t: math.fsum(v) for t, v in by.items()}


def canonical_key(params: Mapping[str, Any]) -> tuple:
    """A hashable identity of the genome in Optuna ``params`` (an old trial lacking later genes included):
    two spellings of one optimizer (:meth:`Genome.canonical`) get one key."""
    return tuple(Genome.from_params(params).canonical().to_params().items())


def _validate(g: Genome) -> None:
    def bad(name: str, why: str) -> GenomeError:
        return GenomeError(f"field {name!r}: {why}")

    for name, seq in (("terms", g.terms), ("alphas", g.alphas)):
        if not isinstance(seq, tuple) or len(seq) != K:
            raise bad(name, f"expected {K} values, got {seq!r}")
    for i, t in enumerate(g.terms):
        if t not in TERM_CHOICES:
            raise bad(f"term_{i}", f"unknown primitive {t!r}; known: {', '.join(TERM_CHOICES)}")
    for i, a in enumerate(g.alphas):
        _check_float(f"alpha_{i}", a, *ALPHA_RANGE)
    if g.sign_term not in SIGN_CHOICES:
        raise bad("sign_term", f"expected one of {', '.join(SIGN_CHOICES)}, got {g.sign_term!r}")
    _check_float("sign_alpha", g.sign_alpha, *ALPHA_RANGE)
    if g.extra_term not in EXTRA_CHOICES:
        raise bad("extra_term", f"expected one of {', '.join(EXTRA_CHOICES)}, got {g.extra_term!r}")
    _check_float("extra_alpha", g.extra_alpha, *ALPHA_RANGE)
    for name, (lo, hi, _) in FLOAT_RANGES.items():
        _check_float(name, getattr(g, name), lo, hi)
    for name in BOOL_GENES:
        if not isinstance(getattr(g, name), bool):
            raise bad(name, f"expected true/false, got {getattr(g, name)!r}")
    if g.clip not in CLIP_CHOICES:
        raise bad("clip", f"expected one of {', '.join(CLIP_CHOICES)}, got {g.clip!r}")


def _check_float(name: str, x: Any, lo: float, hi: float) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise GenomeError(f"field {name!r}: expected a number, got {x!r}")
    if not math.isfinite(x) or not lo <= x <= hi:
        raise GenomeError(f"field {name!r}: {x!r} is outside [{lo}, {hi}]")


def search_space() -> dict[str, BaseDistribution]:
    """The static Optuna search space: parameter name -> distribution (insertion order is stable); a new dict
    over distributions built once (reading a study calls this per trial)."""
    return dict(_space())


@functools.cache
def _space() -> dict[str, BaseDistribution]:
    space: dict[str, BaseDistribution] = {}
    for i in range(K):
        space[f"term_{i}"] = CategoricalDistribution(TERM_CHOICES)
        space[f"alpha_{i}"] = FloatDistribution(*ALPHA_RANGE)
    for name, (lo, hi, log) in FLOAT_RANGES.items():
        space[name] = FloatDistribution(lo, hi, log=log)
    for name in BOOL_GENES:
        space[name] = CategoricalDistribution((False, True))
    space["clip"] = CategoricalDistribution(CLIP_CHOICES)
    space["sign_term"], space["sign_alpha"] = CategoricalDistribution(SIGN_CHOICES), FloatDistribution(*ALPHA_RANGE)
    space["extra_term"], space["extra_alpha"] = CategoricalDistribution(EXTRA_CHOICES), FloatDistribution(*ALPHA_RANGE)
    return {n: space[n] for n in Genome().to_params()}  # the field order of to_params()


def define_search_space(trial: optuna.trial.BaseTrial) -> Genome:
    """Suggest every genome parameter on ``trial`` and return the genome."""
    params = {}
    for name, dist in search_space().items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, dist.choices)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return Genome.from_params(params)


NAMED: dict[str, Genome] = {}
"""Known optimizers as genomes, by name; filled by :mod:`optsearch.genome.named` when the package loads."""


__all__ = [
    "EXTRA_CHOICES",
    "RECIPE_GENES",
    "canonical_key",
    "LATER_GENES",
    "SIGN_CHOICES",
    "Genome",
    "K",
    "NAMED",
    "define_search_space",
    "search_space",
    "upgrade_params",
]

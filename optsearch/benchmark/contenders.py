"""The contenders of a benchmark: the evolved genome(s), the baseline genomes, the paper's genome and Muon.

Each contender carries what its tuning needs: the centre of its learning-rate window (its own default), whether it
has a weight decay to tune, and the start grid of its tuning study, so that every contender gets the same protocol.

By default every baseline (Muon included) trains with the reference evolved genome's **recipe** — warmup and its
fraction, cosine decay, clipping kind and threshold (:data:`optsearch.genome.core.RECIPE_GENES`): the evolved genome
differs from a baseline then in its update rule alone, so "evolved − Adam" measures the rule, not the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from optsearch.errors import ConfigError
from optsearch.genome import FLOAT_RANGES, Genome

BASELINE_NAMES: tuple[str, ...] = ("sgd_momentum", "adam", "adamw", "rmsprop", "lion")
PAPER = "paper_evolved"
MUON = "muon"
LR_BELOW, LR_ABOVE = 2.5, 1.5
LR_WINDOW = LR_BELOW + LR_ABOVE
"""Decades of learning rate each contender's tuning searches (same for all). The window reaches further
below the default than above: a default sits near the top of its stable range, and a genome whose
term weights sum to several units, picked on small MLPs, can need a decade or two less on a CNN."""
WD_RANGE: tuple[float, float] = FLOAT_RANGES["wd_log10"][:2]
BASELINE_RECIPES: tuple[str, ...] = ("evolved", "named", "constant")
"""``--baseline-recipe``: ``evolved`` gives every baseline the reference evolved genome's recipe (the default);
``named`` the named optimizers with cosine decay only (the protocol before recipe matching); ``constant`` the
named optimizers exactly as defined (constant lr, no warmup, no clipping)."""
NAMED_RECIPE: dict[str, Any] = {**Genome().recipe(), "cosine_decay": True}
"""The ``named`` recipe: cosine decay, no warmup, no clipping."""


def recipe_text(recipe: Mapping[str, Any]) -> str:
    """A recipe in words, e.g. ``warmup 22 %, cosine decay, clip ‖g‖ ≤ 0.262``."""
    parts = []
    if recipe["warmup"]:
        parts.append(f"warmup {100 * recipe['warmup_frac']:.0f} %")
    parts.append("cosine decay" if recipe["cosine_decay"] else "constant lr")
    if recipe["clip"] == "norm":
        parts.append(f"clip ‖g‖ ≤ {recipe['clip_threshold']:.3g}")
    elif recipe["clip"] == "value":
        parts.append(f"clip |g_i| ≤ {recipe['clip_threshold']:.3g}")
    else:
        parts.append("no clipping")
    return ", ".join(parts)


@dataclass(frozen=True)
class Contender:
    """One optimizer in the benchmark.

    Attributes:
        name: label in tables and tuning-study names.
        role: ``evolved`` (under test; the first is the reference of paired differences), ``baseline``
            or ``paper`` (the published evolved genome).
        genome: the genome; None for :data:`MUON` (a torch optimizer, trained one model at a time).
        lr_log10: centre of the tuning window (the contender's own default learning rate).
        wd_log10: default weight decay; None when the contender has none (then it is not tuned).
    """

    name: str
    role: str
    genome: Genome | None
    lr_log10: float
    wd_log10: float | None
    muon_recipe: Mapping[str, Any] = field(default_factory=lambda: dict(NAMED_RECIPE))
    """For Muon only (a genome carries its own recipe): its schedule and clipping, like the baseline genomes'."""
    recipe_source: str = "own"
    """Where the recipe came from: ``own`` (the genome's), ``evolved <name>`` or a :data:`BASELINE_RECIPES` name."""

    @property
    def is_genome(self) -> bool:
        return self.genome is not None

    @property
    def recipe(self) -> dict[str, Any]:
        """Schedule and clipping this contender trains with (its genome's, or Muon's)."""
        return self.genome.recipe() if self.genome is not None else dict(self.muon_recipe)

    @property
    def cosine_decay(self) -> bool:
        return bool(self.recipe["cosine_decay"])

    def formula(self) -> str:
        """The update rule as text; for Muon, what it is and its schedule."""
        if self.genome is not None:
            return self.genome.formula()
        return ("torch.optim.Muon (2-D weights, adjust_lr_fn=match_rms_adamw) + AdamW (other parameters), "
                + recipe_text(self.recipe))

    @property
    def lr_range(self) -> tuple[float, float]:
        """:data:`LR_BELOW` decades below the default to :data:`LR_ABOVE` above, shifted to stay in the genome's range."""
        lo_all, hi_all, _ = FLOAT_RANGES["lr_log10"]
        lo = min(max(lo_all, self.lr_log10 - LR_BELOW), hi_all - LR_WINDOW)
        return lo, lo + LR_WINDOW

    def startup_params(self, n: int) -> list[dict[str, float]]:
        """The first tuning round: the window cut into ``n`` equal cells in log lr; the default stands in for
        the cell whose centre is nearest to it and the other cells are tried at their centres (at the default
        weight decay). Unlike a few random draws it cannot leave a whole decade untried, and no start point
        repeats the default (Lion's default 10^-4 once coincided with a grid point: one trial wasted)."""
        lo, hi = self.lr_range
        default = self.default_params()
        centres = [lo + (i + 0.5) * (hi - lo) / n for i in range(n)]
        centres.remove(min(centres, key=lambda x: abs(x - self.lr_log10)))
        return [default] + [{**default, "lr_log10": x} for x in centres]

    def default_params(self) -> dict[str, float]:
        p = {"lr_log10": self.lr_log10}
        if self.wd_log10 is not None:
            p["wd_log10"] = self.wd_log10
        return p

    def with_params(self, params: dict[str, float]) -> Genome | None:
        """The genome with tuned lr (and wd); None for Muon (its params are used directly)."""
        if self.genome is None:
            return None
        kw: dict[str, Any] = {"lr_log10": float(params["lr_log10"])}
        if "wd_log10" in params:
            kw["wd_log10"] = float(params["wd_log10"])
        return replace(self.genome, **kw)

    def identity(self) -> dict[str, Any]:
        """What makes two contenders the same for reusing a tuning study."""
        return {"genome": None if self.genome is None else self.genome.to_params(), "kind": MUON if self.genome is None
                else "genome", "lr_range": self.lr_range, "tune_wd": self.wd_log10 is not None,
                "default": self.default_params(), **({} if self.genome is not None else {"recipe": self.recipe})}


def genome_contender(name: str, genome: Genome, role: str) -> Contender:
    return Contender(name, role, genome, genome.lr_log10, genome.wd_log10 if genome.weight_decay else None)


def muon_contender(*, recipe: Mapping[str, Any] = NAMED_RECIPE, source: str = "named") -> Contender:
    """torch.optim.Muon on 2-D weights and AdamW on the rest, sharing one lr and one weight decay.

    Muon's ``adjust_lr_fn="match_rms_adamw"`` scales its update to AdamW's RMS so that the two parts
    can share AdamW's learning rate and weight decay (torch's documentation), which keeps Muon's tuning
    to the same two numbers as AdamW's.
    """
    adamw = Genome.named("adamw")
    return Contender(MUON, "baseline", None, adamw.lr_log10, adamw.wd_log10, muon_recipe=dict(recipe),
                     recipe_source=source)


CHOICES: tuple[str, ...] = (*BASELINE_NAMES, PAPER, MUON)
"""The names ``--contenders`` accepts (the evolved genome is always in the benchmark)."""


def parse_contenders(spec: str | None) -> tuple[str, ...] | None:
    """``"adam, lion"`` -> ("adam", "lion"); None or empty means every contender. Unknown names are an error."""
    if spec is None:
        return None
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    unknown = [n for n in names if n not in CHOICES]
    if unknown or not names:
        raise ConfigError(f"unknown contender(s) {', '.join(unknown) or repr(spec)}; choose from {', '.join(CHOICES)}")
    return names


def default_contenders(evolved: Sequence[tuple[str, Genome]], *, muon: bool = True,
                       baseline_recipe: str = "evolved", only: Sequence[str] | None = None) -> list[Contender]:
    """Evolved genome(s) first, then the baselines, the paper's genome and Muon (names deduplicated).

    Args:
        only: restrict the non-evolved contenders to these names (:data:`CHOICES`); None keeps them all.
        baseline_recipe: one of :data:`BASELINE_RECIPES`; by default the baselines and Muon train with the
            first evolved genome's recipe. The paper's genome keeps its own (it is an evolved genome too).
    """
    if baseline_recipe not in BASELINE_RECIPES:
        raise ConfigError(f"baseline recipe must be one of {', '.join(BASELINE_RECIPES)}, got {baseline_recipe!r}")
    if baseline_recipe == "evolved" and evolved:
        recipe, source = evolved[0][1].recipe(), f"evolved {evolved[0][0]}"
    elif baseline_recipe == "constant":
        recipe, source = Genome().recipe(), "constant"
    else:
        recipe, source = dict(NAMED_RECIPE), "named"
    out: list[Contender] = []
    seen: set[str] = set()
    for name, g in evolved:
        if name in seen:
            raise ConfigError(f"two evolved genomes are named {name!r}")
        seen.add(name)
        out.append(genome_contender(name, g, "evolved"))
    keep = set(CHOICES if only is None else only)
    for name in BASELINE_NAMES:
        if name not in seen and name in keep:
            g = Genome.named(name)
            if baseline_recipe != "constant":
                g = replace(g, **recipe)
            out.append(replace(genome_contender(name, g, "baseline"), recipe_source=source))
            seen.add(name)
    if PAPER not in seen and PAPER in keep:
        out.append(genome_contender(PAPER, Genome.named(PAPER), "paper"))
        seen.add(PAPER)
    if muon and MUON not in seen and MUON in keep:
        out.append(muon_contender(recipe=recipe, source=source))
    return out

"""The contenders of a benchmark: the evolved genome(s), the baseline genomes, the paper's genome and Muon.

Each contender carries what its tuning needs: the centre of its learning-rate window (its own default), whether it
has a weight decay to tune, and the start grid of its tuning study, so that every contender gets the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

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
    cosine: bool = True
    """For Muon only (a genome carries its own schedule): cosine decay like the baseline genomes."""

    @property
    def is_genome(self) -> bool:
        return self.genome is not None

    @property
    def cosine_decay(self) -> bool:
        """Whether this contender's learning rate follows a cosine decay (its genome's, or Muon's flag)."""
        return self.genome.cosine_decay if self.genome is not None else self.cosine

    def formula(self) -> str:
        """The update rule as text; for Muon, what it is and its schedule."""
        if self.genome is not None:
            return self.genome.formula()
        return ("torch.optim.Muon (2-D weights, adjust_lr_fn=match_rms_adamw) + AdamW (other parameters), "
                + ("cosine decay" if self.cosine else "constant lr"))

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
                "default": self.default_params(), **({} if self.genome is not None else {"cosine": self.cosine})}


def genome_contender(name: str, genome: Genome, role: str) -> Contender:
    return Contender(name, role, genome, genome.lr_log10, genome.wd_log10 if genome.weight_decay else None)


def muon_contender(*, cosine: bool = True) -> Contender:
    """torch.optim.Muon on 2-D weights and AdamW on the rest, sharing one lr and one weight decay.

    Muon's ``adjust_lr_fn="match_rms_adamw"`` scales its update to AdamW's RMS so that the two parts
    can share AdamW's learning rate and weight decay (torch's documentation), which keeps Muon's tuning
    to the same two numbers as AdamW's.
    """
    adamw = Genome.named("adamw")
    return Contender(MUON, "baseline", None, adamw.lr_log10, adamw.wd_log10, cosine=cosine)


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
                       baseline_schedule: str = "cosine", only: Sequence[str] | None = None) -> list[Contender]:
    """Evolved genome(s) first, then the baselines, the paper's genome and Muon (names deduplicated).

    Args:
        only: restrict the non-evolved contenders to these names (:data:`CHOICES`); None keeps them all.
        baseline_schedule: ``cosine`` gives every baseline genome cosine decay (a tuned baseline in
            today's practice has a schedule, and the evolved genome may carry one of its own);
            ``constant`` uses the named genomes as they are.
    """
    if baseline_schedule not in ("cosine", "constant"):
        raise ConfigError(f"baseline schedule must be cosine or constant, got {baseline_schedule!r}")
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
            if baseline_schedule == "cosine":
                g = replace(g, cosine_decay=True)
            out.append(genome_contender(name, g, "baseline"))
            seen.add(name)
    if PAPER not in seen and PAPER in keep:
        out.append(genome_contender(PAPER, Genome.named(PAPER), "paper"))
        seen.add(PAPER)
    if muon and MUON not in seen and MUON in keep:
        out.append(muon_contender(cosine=baseline_schedule == "cosine"))
    return out

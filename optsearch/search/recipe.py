"""The shared training recipe of a study (``[search] recipe = "shared"`` and its ``[recipe]`` table)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from optsearch.errors import ConfigError, GenomeError

RECIPES = ("evolve", "shared")


@dataclass(frozen=True)
class RecipeConfig:
    """The training recipe every member runs with when ``[search] recipe = "shared"`` (the ``[recipe]`` table).

    With ``evolve`` (the paper's setting, the default) warmup, cosine decay and clipping are genes like any
    other, and the cheapest gains open to the search are recipe gains: a laptop run then rediscovers "Adam
    with a recipe". With ``shared`` these genes are held fixed by the sampler (never mutated or crossed
    over, stored as they ran), generation 0's baselines run with the same recipe, and the funnel's Adam
    reference takes it too, so selection can only reward the update rule.
    """

    warmup: bool = True
    warmup_frac: float = 0.05
    cosine_decay: bool = True
    clip: str = "none"
    clip_threshold: float = 1.0

    def genes(self) -> dict[str, Any]:
        """The recipe as genome parameters, in canonical form (a silent threshold or fraction at its fixed value)."""
        from optsearch.genome import Genome

        return replace(Genome.named("adam"), **asdict(self)).canonical().recipe()


def parse_recipe(table: Any, mode: Any, where: str, *, stored: bool) -> RecipeConfig:
    """Validate ``[recipe]``: only with ``recipe = "shared"`` (elsewhere it would be ignored), values in the genes' ranges."""
    if table is None:
        return RecipeConfig()
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [recipe] must be a table")
    if mode != "shared" and not stored and table:
        raise ConfigError(f"{where}: a [recipe] table would be ignored unless [search] recipe = \"shared\"")
    unknown = sorted(set(table) - set(RecipeConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{where}: unknown [recipe] key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(RecipeConfig.__dataclass_fields__)}")
    cfg = RecipeConfig(**{k: table.get(k, getattr(RecipeConfig, k)) for k in RecipeConfig.__dataclass_fields__})
    try:
        cfg.genes()
    except GenomeError as e:
        raise ConfigError(f"{where}: [recipe] {e}") from None
    return cfg


__all__ = ["RECIPES", "RecipeConfig", "parse_recipe"]

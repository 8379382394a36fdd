"""A shared training recipe: every member runs with it, the sampler never changes it, the funnel's Adam takes it."""

from __future__ import annotations

import optuna
import pytest

from optsearch.errors import ConfigError
from optsearch.genome import Genome, define_search_space
from optsearch.search.config import RecipeConfig, StudyConfig
from optsearch.search.worker import make_sampler

BASE = {"tasks": ["digits"], "population": 6, "generations": 4}
RECIPE = {"warmup": True, "warmup_frac": 0.1, "cosine_decay": True, "clip": "norm", "clip_threshold": 0.5}


def shared(**recipe) -> StudyConfig:
    return StudyConfig.from_dict({"search": {**BASE, "recipe": "shared"}, "recipe": recipe or RECIPE})


def test_shared_recipe_genes_never_change_across_generations():
    cfg = shared()
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg))
    seen: list[Genome] = []
    for _ in range(cfg.population * cfg.generations):
        trial = study.ask()
        genome = define_search_space(trial)
        seen.append(genome)
        study.tell(trial, genome.lr_log10 + sum(genome.alphas))  # any fitness
    assert {tuple(sorted(g.recipe().items())) for g in seen} == {tuple(sorted(RECIPE.items()))}
    assert len({g.terms for g in seen}) > 3  # the rule still evolves
    assert seen[1].terms == Genome.named("adam").terms  # generation 0's Adam seed, with the shared recipe
    evolve = StudyConfig.from_dict({"search": BASE})
    assert evolve.fixed_genes == {} and evolve.recipe == "evolve"


def test_recipe_is_canonical_and_stored():
    cfg = shared(warmup=False, warmup_frac=0.2, cosine_decay=False, clip="none", clip_threshold=3.0)
    assert cfg.fixed_genes["warmup_frac"] == RecipeConfig().warmup_frac  # silent genes at their fixed values
    assert cfg.fixed_genes["clip_threshold"] == 1.0
    assert StudyConfig.from_dict(cfg.to_dict(), stored=True) == cfg


@pytest.mark.parametrize("search, table, needle", [
    ({}, RECIPE, "would be ignored"),
    ({"recipe": "shared"}, {"warmup_frac": 0.9}, "warmup_frac"),
    ({"recipe": "shared"}, {"clip": "sometimes"}, "clip"),
    ({"recipe": "shared"}, {"schedule": "linear"}, "unknown [recipe] key"),
    ({"recipe": "fixed"}, {}, "'recipe' must be one of evolve, shared"),
])
def test_bad_recipe_configs(search, table, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        StudyConfig.from_dict({"search": {**BASE, **search}, "recipe": table})


def test_shared_recipe_forbids_the_cosine_sweep():
    with pytest.raises(ConfigError, match="cosine_sweep"):
        StudyConfig.from_dict({"search": {**BASE, "recipe": "shared"}, "recipe": RECIPE, "funnel": {"cosine_sweep": True}})

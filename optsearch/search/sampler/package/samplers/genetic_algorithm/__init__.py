"""A genetic-algorithm sampler for Optuna (OptunaHub package ``samplers/genetic_algorithm``)."""

from __future__ import annotations

from .operators import (
    GaussianMutation, TournamentSelection, UniformCrossover, random_params, sample_value, tournament_select,
)
from .ranking import rank_by_fitness, rank_nsga2, survivors, trial_order
from .sampler import GeneticAlgorithmSampler
from .slots import (
    CLAIM_WAIT, GENERATION_KEY, MEMBER_KEY, ORIGIN_KEY, PARENTS_KEY, REPLACED_KEY, claim_slot,
    generation_and_member, slot_failures, trial_generation, unclaimed_for,
)

__all__ = [
    "CLAIM_WAIT",
    "GENERATION_KEY",
    "GaussianMutation",
    "GeneticAlgorithmSampler",
    "MEMBER_KEY",
    "ORIGIN_KEY",
    "PARENTS_KEY",
    "REPLACED_KEY",
    "TournamentSelection",
    "UniformCrossover",
    "claim_slot",
    "generation_and_member",
    "random_params",
    "rank_by_fitness",
    "rank_nsga2",
    "sample_value",
    "slot_failures",
    "survivors",
    "tournament_select",
    "trial_generation",
    "trial_order",
    "unclaimed_for",
]

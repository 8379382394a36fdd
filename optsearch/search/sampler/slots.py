"""Member slots: which (generation, member) a new trial takes — the generic GA core's, re-exported.

The rules and the stored keys live in the OptunaHub package
(:mod:`optsearch.search.sampler.package.samplers.genetic_algorithm.slots`); they must never change.
"""

from __future__ import annotations

from optsearch.search.sampler.package.samplers.genetic_algorithm.slots import (
    CLAIM_POLL, CLAIM_WAIT, GENERATION_KEY, MEMBER_KEY, ORIGIN_KEY, PARENTS_KEY, REPLACED_KEY, claim_slot,
    generation_and_member, slot_failures, trial_generation, unclaimed_for,
)

__all__ = [
    "CLAIM_POLL", "CLAIM_WAIT", "GENERATION_KEY", "MEMBER_KEY", "ORIGIN_KEY", "PARENTS_KEY", "REPLACED_KEY",
    "claim_slot", "generation_and_member", "slot_failures", "trial_generation", "unclaimed_for",
]

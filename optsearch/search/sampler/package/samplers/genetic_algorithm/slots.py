"""Member slots: which (generation, member) a new trial takes, claimed safely by concurrent askers.

Optuna storages offer no atomic "claim a slot", but trial numbers are unique and ordered. A new
trial picks its member slot only after every older trial has picked its own (older trials still
unclaimed are waited for, up to ``CLAIM_WAIT`` seconds — a worker killed inside ``ask`` leaves one
that never claims), so claims form a queue in trial-number order and two processes never take the
same slot. How long a trial has been unclaimed is measured by this process's own monotonic clock
from when it first saw the trial (:func:`unclaimed_for`), never by comparing a trial's
``datetime_start`` (written by another host's clock) with the local time: clock or timezone skew
between machines cannot make a live trial look like an orphan. A trial that finds its generation already full gets a member index ≥ the population
size: the run loop fails it at once (a *surplus* trial) instead of training it.

The keys below are stored in every study's trials: they must never change (they keep the name of the
sampler that first wrote them, optsearch's ``GeneticSampler``).
"""

from __future__ import annotations

import time
from itertools import count
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

GENERATION_KEY = "GeneticSampler:generation"
MEMBER_KEY = "GeneticSampler:member"
ORIGIN_KEY = "GeneticSampler:origin"
PARENTS_KEY = "GeneticSampler:parents"
REPLACED_KEY = "GeneticSampler:replaced"  # why a slot holds a fresh child instead of its first genome
CLAIM_WAIT = 10.0  # seconds a new trial waits for older trials to claim their slots
CLAIM_POLL = 0.02


_FIRST_SEEN: dict[tuple[int, int], float] = {}  # (storage, trial id) -> monotonic time first seen unclaimed


def unclaimed_for(study: Study, trial: FrozenTrial) -> float:
    """Seconds since this process first saw ``trial`` without a claim (0 the first time)."""
    now = time.monotonic()
    return now - _FIRST_SEEN.setdefault((id(study._storage), trial._trial_id), now)


def trial_generation(t: FrozenTrial) -> int | None:
    """A trial's generation, or None while it has not claimed a slot."""
    g = t.system_attrs.get(GENERATION_KEY)
    return None if g is None else int(g)


def slot_failures(study: Study, trial: FrozenTrial, generation: int, member: int) -> int:
    """How many older trials of the same (generation, member) slot ended FAIL (any cause: an
    exception in the objective, or a worker that died holding the trial)."""
    return sum(
        1 for t in study._get_trials(deepcopy=False, states=(TrialState.FAIL,), use_cache=False)
        if t.number < trial.number and trial_generation(t) == generation and t.system_attrs.get(MEMBER_KEY) == member
    )


def generation_and_member(study: Study, trial: Any) -> tuple[int, int]:
    """(generation, member index) of an asked trial (an ``optuna.Trial`` has no ``system_attrs``)."""
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    return int(attrs[GENERATION_KEY]), int(attrs[MEMBER_KEY])


def claim_slot(study: Study, trial: FrozenTrial, population: int, target: int | None) -> tuple[int, int]:
    """Claim and store the trial's (generation, member).

    With ``target`` None the fill rule decides: the latest generation until ``population`` of its
    trials are not FAIL (a FAIL trial frees its slot), then the next. The member is the lowest free
    index, so a refilled slot is asked the same genome again; with ``target`` set and that
    generation full, the index is ≥ ``population`` (a surplus trial).
    """
    others = _after_older_claims(study, trial)
    alive = [t for t in others if t.state != TrialState.FAIL and trial_generation(t) is not None]
    if target is not None:
        generation = int(target)
    elif not alive:
        generation = 0
    else:
        latest = max(trial_generation(t) for t in alive)  # type: ignore[type-var]
        full = sum(trial_generation(t) == latest for t in alive) >= population
        generation = latest + 1 if full else latest
    used = {t.system_attrs.get(MEMBER_KEY) for t in alive if trial_generation(t) == generation}
    member = next(i for i in count() if i not in used)
    # Member first: the generation is the "claimed" mark newer trials wait for, so it must come last.
    study._storage.set_trial_system_attr(trial._trial_id, MEMBER_KEY, member)
    study._storage.set_trial_system_attr(trial._trial_id, GENERATION_KEY, generation)
    return generation, member


def _after_older_claims(study: Study, trial: FrozenTrial) -> list[FrozenTrial]:
    """The study's other trials, read once every older RUNNING trial has claimed its slot.

    An older trial still without a generation is mid-``ask`` in some process; claiming before it
    would let both read the same free slot. One this process has seen unclaimed for ``CLAIM_WAIT``
    seconds is an orphan.
    """
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        others = [t for t in study._get_trials(deepcopy=False, use_cache=False) if t._trial_id != trial._trial_id]
        pending = [
            t for t in others
            if t.number < trial.number and t.state == TrialState.RUNNING and trial_generation(t) is None
            and unclaimed_for(study, t) < CLAIM_WAIT
        ]
        if not pending or time.monotonic() > deadline:
            return others
        time.sleep(CLAIM_POLL)

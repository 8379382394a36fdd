"""The noise model: fresh training seeds every generation, and a genome's fitness as the mean of its evaluations.

Fitness is noisy: the initial weights and the batch order alone move a genome's validation accuracy by
many points. So

* **within a generation** every member trains on the same unit seeds (common random numbers: a
  comparison inside a generation is between genomes, not between seeds);
* **across generations** the seeds are new — :func:`unit_seeds` derives them from (study seed,
  generation, configured seed) — so selection does not keep maximising one frozen noise draw, and an
  elite carried over into the next generation is genuinely measured again;
* a genome's **ranking fitness is the mean over all its evaluations**: the value told for a trial is
  the mean of its own measurement and those of every finished trial (a pruned one at its last
  checkpoint) of an *earlier* generation with the same canonical genome
  (:meth:`optsearch.genome.Genome.canonical`: an elite's ancestors, or a child that repeats a genome,
  however spelt). Only earlier generations count: they are settled before a generation is asked, so the value does not depend
  on which batch-mate finished first. The trial's own measurement and the count are stored as user
  attrs :data:`MEASURED_ATTR` and :data:`EVALUATIONS_ATTR`; a trial without them (written before the
  noise model) counts as one evaluation measuring its value.

The same seed gives the same unit seeds, hence the same study.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from optsearch.genome.core import canonical_key
from optsearch.search.config import StudyConfig
from optsearch.search.control import Controls
from optsearch.search.sampler.slots import trial_generation

MEASURED_ATTR = "measured"
"""Trial user attr: the trial's own objective values (a list; one entry for aggregate fitness)."""
EVALUATIONS_ATTR = "evaluations"
"""Trial user attr: how many evaluations of the genome its told value averages."""
UNIT_SEEDS_ATTR = "unit_seeds"
"""Trial user attr: the training seeds of its generation."""


def unit_seeds(cfg: StudyConfig, generation: int) -> list[int]:
    """The generation's training seeds, one per configured seed, shared by all its members."""
    out = []
    for s in cfg.seeds:
        digest = hashlib.sha256(f"optsearch-units/{cfg.seed}/{generation}/{s}".encode()).digest()
        out.append(int.from_bytes(digest[:4], "little") & 0x7FFFFFFF)
    return out


def measured(t: FrozenTrial) -> list[float]:
    """A COMPLETE trial's own measurement (its told values when it predates the noise model)."""
    own = t.user_attrs.get(MEASURED_ATTR)
    return [float(v) for v in own] if isinstance(own, list) else list(t.values)


def evaluations(t: FrozenTrial) -> int:
    """How many evaluations stand behind a trial's value (1 for a trial written before the noise model)."""
    return int(t.user_attrs.get(EVALUATIONS_ATTR, 1))


def measurement(t: FrozenTrial, controls: Controls | None = None) -> list[float] | None:
    """What a finished trial measured: a COMPLETE one its own values (:func:`measured`); a PRUNED one (stopped
    early or diverged) its fitness estimate at its last checkpoint (its last intermediate value, single-objective
    studies); None when it has none (a per-task study reports no intermediate values).

    With ``controls`` of a study that has them: relative to the control of the trial's generation (a pruned
    one to the control's estimate at the same checkpoint; see :mod:`.control`)."""
    rel = controls is not None and controls.present
    if t.state == TrialState.COMPLETE:
        own = measured(t)
        return [v - c for v, c in zip(own, controls.offset(t, len(own)))] if rel else own  # type: ignore[union-attr]
    if t.state == TrialState.PRUNED and t.intermediate_values:
        step = max(t.intermediate_values)
        shift = controls.at_checkpoint(t, "fitness", step) if rel else 0.0  # type: ignore[union-attr]
        return [float(t.intermediate_values[step]) - shift]
    return None


def earlier_measurements(study: optuna.Study, params: dict, generation: int,
                         controls: Controls | None = None) -> list[list[float]]:
    """The measurements of the same (canonical) genome by finished trials of generations before ``generation``.

    Pruned re-measurements count, at their last checkpoint: leaving them out would let a genome measured
    often look better the more of its bad draws were cut short.
    """
    target = canonical_key(params)  # one genome however spelt: silent genes, slot order, a term split over slots
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        g = trial_generation(t)
        m = measurement(t, controls)
        if m is not None and g is not None and g < generation and canonical_key(t.params) == target:
            out.append(m)
    return out


def genome_means(study: optuna.Study) -> list[tuple[FrozenTrial, float, int]]:
    """Each canonical genome with a COMPLETE trial: (its newest COMPLETE trial, the mean over ALL its measurements,
    pruned ones included, and their count), best mean first; the aggregate over objectives for per-task studies.

    The funnel ranks its candidates by this, not by a genome's highest told value (the maximum of its noisy
    draws) nor by a mean that drops its pruned re-measurements. In a study with controls every measurement is
    relative to its generation's control (:mod:`.control`), so a genome measured on hard seeds is not ranked
    below one measured on easy seeds.
    """
    by: dict[tuple, list[FrozenTrial]] = {}
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    controls = Controls(finished)
    for t in finished:
        by.setdefault(canonical_key(t.params), []).append(t)
    out = []
    for trials in by.values():
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        rows = [m for m in (measurement(t, controls) for t in trials) if m is not None]
        if not complete or not rows:
            continue
        mean = sum(sum(r) / len(r) for r in rows) / len(rows)
        out.append((max(complete, key=lambda t: t.number), mean, len(rows)))
    return sorted(out, key=lambda e: (-e[1], e[0].number))


def combine(own: Sequence[float], earlier: Sequence[Sequence[float]]) -> list[float]:
    """The per-objective mean over ``own`` and the earlier measurements."""
    rows = [list(own), *[list(e) for e in earlier]]
    return [sum(col) / len(rows) for col in zip(*rows)]

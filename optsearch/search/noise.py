"""The noise model: fresh training seeds every generation, and a genome's fitness as the mean of its evaluations.

Fitness is noisy: the initial weights and the batch order alone move a genome's validation accuracy by
many points. So

* **within a generation** every member trains on the same unit seeds (common random numbers: a
  comparison inside a generation is between genomes, not between seeds);
* **across generations** the seeds are new — :func:`unit_seeds` derives them from (study seed,
  generation, configured seed) — so selection does not keep maximising one frozen noise draw, and an
  elite carried over into the next generation is genuinely measured again;
* a genome's **ranking fitness is the mean over all its evaluations**: the value told for a trial is
  the mean of its own measurement and those of every COMPLETE trial of an *earlier* generation with
  the same genome (an elite's ancestors, or a child that happens to repeat a genome). Only earlier
  generations count: they are settled before a generation is asked, so the value does not depend
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

from optsearch.genome import LATER_GENES
from optsearch.search.config import StudyConfig
from optsearch.search.sampler.slots import trial_generation
from optsearch.search.sampler.space import SPACE

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


def earlier_measurements(study: optuna.Study, params: dict, generation: int) -> list[list[float]]:
    """The measurements of the same genome by COMPLETE trials of generations before ``generation``."""
    target = {n: params[n] for n in SPACE}
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        g = trial_generation(t)
        same = all(t.params.get(n, LATER_GENES.get(n)) == v for n, v in target.items())  # old trials lack later genes
        if g is not None and g < generation and same:
            out.append(measured(t))
    return out


def combine(own: Sequence[float], earlier: Sequence[Sequence[float]]) -> list[float]:
    """The per-objective mean over ``own`` and the earlier measurements."""
    rows = [list(own), *[list(e) for e in earlier]]
    return [sum(col) / len(rows) for col in zip(*rows)]

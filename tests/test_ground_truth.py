"""The analysis's intervals on studies bred by the GeneticSampler, against effects known by construction.

Unlike the i.i.d. synthetic study, these trials are what a real search produces: generations of children
of earlier winners, elites re-measured as repeated genomes, selection that correlates good genes. Twenty
such studies (different seeds) are analysed; every switch and primitive effect "with the other genes
held fixed" is compared with the truth written in :func:`tests.synthetic.synthetic_fitness` (disabling bias
correction +0.05, an Adam term +0.02, everything else 0). 95 % intervals must cover it in ≥ 90 % of cases.
"""

from __future__ import annotations

import pytest

from optsearch.analysis.adjusted import adjusted_effects
from optsearch.analysis.data import study_data
from tests.synthetic import bred_study

TRUTH = {"bias_correction": 0.05, "adam": 0.02}
"""True aggregate effect of departing from Adam's choice (aggregate variant); every other key: 0."""
STUDIES = 20


@pytest.mark.slow
def test_adjusted_intervals_cover_the_true_effects_on_bred_studies():
    covered = total = 0
    for seed in range(STUDIES):
        data = study_data(bred_study(f"bred{seed}", population=30, generations=10, seed=seed)).distinct()
        assert data.repeats is not None and data.repeats.sum() >= len(data.genomes)
        effects = adjusted_effects(data.genomes, data.y, data.generation, seed=seed)
        assert {"bias_correction", "adam"} <= set(effects)
        for key, (_, lo, hi) in effects.items():
            covered += lo <= TRUTH.get(key, 0.0) <= hi
            total += 1
    assert total >= 15 * STUDIES
    assert covered / total >= 0.90, f"coverage {covered}/{total} = {covered / total:.3f}"

"""The noise model (issue 12, item 1): fresh unit seeds per generation shared within it, and a genome's
told fitness as the mean over all its evaluations, so an elite is genuinely re-measured."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from optsearch.cli import main
from optsearch.search import study
from optsearch.search.config import StudyConfig
from optsearch.genome.core import canonical_key
from optsearch.search.noise import EVALUATIONS_ATTR, MEASURED_ATTR, UNIT_SEEDS_ATTR, measurement, unit_seeds
from optsearch.search.sampler import MEMBER_KEY, ORIGIN_KEY, PARENTS_KEY
from optsearch.genome import search_space
from optsearch.search.storage import open_storage

CONFIG = """
[search]
tasks = ["digits"]
seeds = [0, 1]
steps = 20
population = 4
generations = 3
checkpoint_every = 10
seed = 2
device = "cpu"
[pruning]
pruner = "none"
[sampler]
elites = 2
"""


def test_unit_seeds_are_fresh_per_generation_and_fixed_by_the_study_seed():
    cfg = StudyConfig.from_dict({"tasks": ["digits"], "seeds": [0, 1, 2], "population": 4, "generations": 5})
    per_gen = [unit_seeds(cfg, g) for g in range(5)]
    assert all(len(s) == 3 and len(set(s)) == 3 for s in per_gen)
    assert len({tuple(s) for s in per_gen}) == 5  # new noise every generation
    assert per_gen == [unit_seeds(cfg, g) for g in range(5)]  # and the same for the same seed
    other = StudyConfig.from_dict({"tasks": ["digits"], "seeds": [0, 1, 2], "population": 4, "generations": 5, "seed": 1})
    assert unit_seeds(other, 0) != per_gen[0]


def test_a_generation_shares_its_seeds_and_an_elite_is_re_measured(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text(CONFIG)
    url = f"journal:///{tmp_path}/n.log"
    assert main(["study", "create", "n", "--config", str(cfg), "--storage", url]) == 0
    assert main(["study", "run", "n", "--storage", url, "--quiet"]) == 0
    st = optuna.load_study(study_name="n", storage=open_storage(url))
    gens = study.generations(st)
    assert sorted(gens) == [0, 1, 2]
    seeds = {g: {tuple(t.user_attrs[UNIT_SEEDS_ATTR]) for t in ts} for g, ts in gens.items()}
    assert all(len(s) == 1 for s in seeds.values())  # one set of seeds within a generation
    assert len({s.pop() for s in seeds.values()}) == 3  # fresh ones across generations

    by_number = {t.number: t for t in st.trials}
    genome = lambda t: canonical_key(t.params)  # noqa: E731  (one genome however spelt)
    elites = [t for ts in gens.values() for t in ts if t.system_attrs[ORIGIN_KEY] == "elite"
              and t.state == TrialState.COMPLETE]
    assert len(elites) >= 3
    for e in elites:
        g = e.user_attrs["generation"]
        parent = by_number[e.system_attrs[PARENTS_KEY][0]]
        assert genome(parent) == genome(e)
        # every evaluation of this genome so far (a pruned one at its last checkpoint): its own and earlier ones
        history = [e, *(t for t in st.trials if measurement(t) is not None and genome(t) == genome(e)
                        and t.user_attrs["generation"] < g)]
        assert e.user_attrs[EVALUATIONS_ATTR] == len(history) >= 2
        assert e.user_attrs[EVALUATIONS_ATTR] > parent.user_attrs[EVALUATIONS_ATTR]  # counts up
        own = e.user_attrs[MEASURED_ATTR][0]
        assert own != parent.user_attrs[MEASURED_ATTR][0]  # measured again, on new seeds: a new number
        assert e.value == pytest.approx(sum(measurement(t)[0] for t in history) / len(history))
        assert e.value != parent.value  # the stored (told) fitness changed with the re-measurement
    assert sorted(t.system_attrs[MEMBER_KEY] for t in elites if t.user_attrs["generation"] == 1) == [0, 1]


# ----------------------------------------------------------------------------- one genome, one identity
def test_two_spellings_of_one_optimizer_are_one_genome():
    """A silent gene (wd with weight decay off, a clip threshold with clipping off, warmup_frac with warmup off),
    slot order, or a term split over slots does not make another optimizer: one canonical genome, one key."""
    from dataclasses import replace

    from optsearch.genome import Genome
    from optsearch.genome.core import canonical_key
    from optsearch.search.sampler.ranking import genome_key

    g = Genome(terms=("adam", "momentum", "none", "none"), alphas=(3.0, 1.0, 0.0, 0.0), lr_log10=-3.0)
    spellings = [
        replace(g, wd_log10=-5.0), replace(g, clip_threshold=0.3), replace(g, warmup_frac=0.2),
        replace(g, terms=("none", "momentum", "none", "adam"), alphas=(0.7, 1.0, 0.0, 3.0)),  # order; α of a none slot
        replace(g, terms=("adam", "momentum", "adam", "adam"), alphas=(1.0, 1.0, 1.5, 0.5)),  # adam split in three
    ]
    for s in spellings:
        assert s != g and s.canonical() == g.canonical(), s
        assert canonical_key(s.to_params()) == canonical_key(g.to_params())
    c = g.canonical()
    assert c.canonical() == c and c.merged_terms() == g.merged_terms()
    # genes that are not silent still tell genomes apart
    for other in (replace(g, weight_decay=True, wd_log10=-5.0), replace(g, clip="norm", clip_threshold=0.3),
                  replace(g, warmup=True, warmup_frac=0.2), replace(g, alphas=(3.0, 1.5, 0.0, 0.0))):
        assert other.canonical() != c
    # a summed α above the α range is kept whole, split over slots: 3.8 + 2.67 + 1.26 of one term
    big = Genome(terms=("adam", "adam", "adam", "none"), alphas=(3.8, 2.67, 1.26, 0.0))
    assert big.canonical().merged_terms()["adam"] == pytest.approx(7.73)
    # the sampler's and the funnel's key is the canonical one
    dists = search_space()
    trials = [optuna.trial.create_trial(params=x.to_params(), distributions=dists, value=0.5) for x in (g, *spellings)]
    assert len({genome_key(t) for t in trials}) == 1


def test_the_noise_model_averages_every_spelling_and_pruned_re_measurements():
    """An earlier measurement of the same optimizer spelt differently counts, and so does a pruned one (at its
    last checkpoint): often-measured genomes must not look better for their bad draws being cut short."""
    from dataclasses import replace

    from optsearch.genome import Genome
    from optsearch.search.noise import earlier_measurements, genome_means

    g = Genome.named("adam")
    other_spelling = replace(g, wd_log10=-5.0, clip_threshold=0.2)
    dists = search_space()
    st = optuna.create_study(direction="maximize")

    def add(genome, gen, value=None, state=TrialState.COMPLETE, last=None):
        st.add_trial(optuna.trial.create_trial(
            params=genome.to_params(), distributions=dists, value=value, state=state,
            intermediate_values={0: 0.9, 1: last} if last is not None else None,
            system_attrs={"GeneticSampler:generation": gen}, user_attrs={"generation": gen}))

    add(g, 0, 0.8)
    add(other_spelling, 1, 0.6)
    add(g, 2, state=TrialState.PRUNED, last=0.1)  # pruned at its last checkpoint with 0.1
    add(replace(g, lr_log10=-2.0), 0, 0.75)
    assert sorted(earlier_measurements(st, g.to_params(), 3)) == [[0.1], [0.6], [0.8]]
    assert earlier_measurements(st, g.to_params(), 1) == [[0.8]]
    means = genome_means(st)
    assert [(t.number, round(m, 6), n) for t, m, n in means] == [(3, 0.75, 1), (1, 0.5, 3)]

"""The noise model (issue 12, item 1): fresh unit seeds per generation shared within it, and a genome's
told fitness as the mean over all its evaluations, so an elite is genuinely re-measured."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from optsearch.cli import main
from optsearch.search import study
from optsearch.search.config import StudyConfig
from optsearch.search.noise import EVALUATIONS_ATTR, MEASURED_ATTR, UNIT_SEEDS_ATTR, unit_seeds
from optsearch.search.sampler import MEMBER_KEY, ORIGIN_KEY, PARENTS_KEY, SPACE
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
    genome = lambda t: tuple(t.params[n] for n in SPACE)  # noqa: E731
    elites = [t for ts in gens.values() for t in ts if t.system_attrs[ORIGIN_KEY] == "elite"
              and t.state == TrialState.COMPLETE]
    assert len(elites) >= 3
    for e in elites:
        g = e.user_attrs["generation"]
        parent = by_number[e.system_attrs[PARENTS_KEY][0]]
        assert genome(parent) == genome(e)
        # every COMPLETE evaluation of this genome so far: its own and those of earlier generations
        history = [t for t in st.trials if t.state == TrialState.COMPLETE and genome(t) == genome(e)
                   and t.user_attrs["generation"] <= g]
        assert e.user_attrs[EVALUATIONS_ATTR] == len(history) >= 2
        assert e.user_attrs[EVALUATIONS_ATTR] == parent.user_attrs[EVALUATIONS_ATTR] + 1  # counts up
        own = e.user_attrs[MEASURED_ATTR][0]
        assert own != parent.user_attrs[MEASURED_ATTR][0]  # measured again, on new seeds: a new number
        assert e.value == pytest.approx(sum(t.user_attrs[MEASURED_ATTR][0] for t in history) / len(history))
        assert e.value != parent.value  # the stored (told) fitness changed with the re-measurement
    assert sorted(t.system_attrs[MEMBER_KEY] for t in elites if t.user_attrs["generation"] == 1) == [0, 1]

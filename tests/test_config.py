from __future__ import annotations

import pytest

from optsearch.search import config
from optsearch.errors import ConfigError


def test_presets_are_valid():
    quick = config.preset("quick")
    assert quick.tasks == ("digits", "mnist1d") and not quick.per_task
    paper = config.preset("paper")
    assert (paper.population, paper.generations, paper.steps, paper.seeds, paper.subsample) == (50, 50, 500, (0, 1), 15000)
    assert paper.tasks == ("mnist", "fashion_mnist", "cifar10")
    nsga = config.preset("paper-nsga")
    assert nsga.per_task and nsga.objective_names == list(nsga.tasks)


def test_roundtrip_through_dict():
    cfg = config.preset("paper-nsga")
    assert config.StudyConfig.from_dict(cfg.to_dict()) == cfg


BASE = {"tasks": ["digits"], "population": 4, "generations": 2}


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"population": -3}, "'population' must be ≥ 2"),
        ({"population": "ten"}, "'population' must be an integer"),
        ({"generations": 0}, "'generations' must be ≥ 1"),
        ({"steps": 0}, "'steps' must be ≥ 1"),
        ({"tasks": ["digits", "imagenet"]}, "unknown task 'imagenet'"),
        ({"tasks": []}, "'tasks' must be a non-empty list"),
        ({"objective": "best"}, "'objective' must be one of"),
        ({"device": "tpu"}, "'device' must be"),
        ({"seeds": [0, 0]}, "duplicates"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"pruning": {"pruner": "magic"}}, "'pruner' must be one of"),
        ({"objective": "per_task", "pruning": {"pruner": "median"}}, "cannot run in a per_task study"),
        ({"pruning": {"pruner": "none", "warmup_checkpoints": 3}}, "would be ignored by pruner 'none'"),
        ({"pruning": {"pruner": "median", "chance_margin": 0.1}}, "'chance_margin' = 0.1 would be ignored"),
        ({"objective": "per_task", "pruning": {"warmup_checkpoints": 5}}, "would be ignored by pruner 'chance'"),
    ],
)
def test_bad_configs_name_the_problem(change, needle):
    with pytest.raises(ConfigError) as e:
        config.StudyConfig.from_dict({**BASE, **change})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_toml_and_unknown_preset(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[search\ntasks = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(p)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        config.preset("huge")


def test_pruner_defaults_by_objective_and_old_per_task_studies_still_load(tmp_path):
    assert config.StudyConfig.from_dict(BASE).pruning.pruner == "median"
    assert config.StudyConfig.from_dict({**BASE, "objective": "per_task"}).pruning.pruner == "chance"
    # a per-task study stored before 'chance' existed says 'median' (which ran the chance rule)
    old = {**BASE, "objective": "per_task", "pruning": {"pruner": "median", "warmup_checkpoints": 3}}
    assert config.StudyConfig.from_dict(old, stored=True).pruning.pruner == "chance"


def test_an_ignored_pruning_setting_exits_2(tmp_path, capsys):
    from optsearch.cli import main

    p = tmp_path / "c.toml"
    p.write_text('[search]\ntasks = ["digits"]\npopulation = 4\ngenerations = 2\nobjective = "per_task"\n'
                 '[pruning]\npruner = "median"\n')
    assert main(["study", "create", "x", "--config", str(p), "--storage", f"sqlite:///{tmp_path}/s.db"]) == 2
    err = capsys.readouterr().err
    assert "cannot run in a per_task study" in err and len(err.strip().splitlines()) == 1

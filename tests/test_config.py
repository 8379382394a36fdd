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


@pytest.mark.parametrize("funnel", [
    {"tasks": ["digits"]},  # the search task itself
    {"tasks": ["digits"], "steps": 300},  # the same horizon (the task's own 300 steps)
    {"tasks": ["mnist1d", "digits"], "steps": 200},  # a shorter one
    {},  # the funnel's tasks default to the search's
])
def test_a_funnel_task_identical_to_a_search_task_is_a_config_error(funnel):
    with pytest.raises(ConfigError, match=r"\[funnel\] task 'digits' is the search task 'digits'"):
        config.StudyConfig.from_dict({**BASE, "funnel": funnel})


@pytest.mark.parametrize("funnel", [
    {"tasks": ["digits_cnn"]},  # the same data through a larger model
    {"tasks": ["digits"], "steps": 600},  # a longer horizon
    {"tasks": ["mnist1d"]},  # other data
    {"tasks": ["digits"], "enabled": False},  # no funnel runs
])
def test_the_funnel_may_use_the_search_data_with_a_larger_model_or_a_longer_horizon(funnel):
    assert config.StudyConfig.from_dict({**BASE, "funnel": funnel}).funnel.tasks == tuple(funnel["tasks"])


def test_a_stored_config_from_before_the_funnel_rule_still_opens():
    d = config.StudyConfig(tasks=("digits",), population=4, generations=2,
                           funnel=config.FunnelConfig(enabled=True, tasks=("digits",))).to_dict()
    assert config.StudyConfig.from_dict(d, stored=True).funnel.tasks == ("digits",)


def test_the_funnel_rule_exits_2_from_the_cli_and_leaves_no_study(tmp_path, capsys):
    from optsearch.cli import main

    p = tmp_path / "c.toml"
    p.write_text('[search]\ntasks = ["digits"]\npopulation = 4\ngenerations = 1\n[funnel]\ntasks = ["digits"]\n')
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "create", "x", "--config", str(p), "--storage", url]) == 2
    assert "is the search task 'digits'" in capsys.readouterr().err
    import optuna

    assert not (tmp_path / "s.db").exists() or optuna.get_all_study_names(url) == []


def test_control_key():
    assert config.StudyConfig.from_dict(BASE).control == "none"  # configs and studies from before controls
    assert config.StudyConfig.from_dict({**BASE, "control": "adamw"}).control == "adamw"
    with pytest.raises(ConfigError, match="'control' must be a named genome"):
        config.StudyConfig.from_dict({**BASE, "control": "adamx"})
    for name in ("quick", "cpu", "paper", "paper-nsga"):
        cfg = config.preset(name)
        assert cfg.control == "adam" and config.StudyConfig.from_dict(cfg.to_dict(), stored=True) == cfg

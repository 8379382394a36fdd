"""RunSpec: one contract from TOML to the loop; defaults declared once; bad settings caught before training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from optsearch.errors import ConfigError
from optsearch.search.config import FunnelConfig, PruningConfig, StudyConfig
from optsearch.train.spec import RunSpec, resolve_device

MINIMAL = {"search": {"tasks": ["digits"], "population": 4, "generations": 1}}


def test_parsed_defaults_are_the_dataclass_defaults():
    """A config that sets nothing gets exactly the fields' declared defaults (no second copy in the parser)."""
    cfg = StudyConfig.from_dict(MINIMAL)
    assert cfg == StudyConfig(tasks=("digits",), population=4, generations=1, funnel=FunnelConfig(tasks=("digits",)))
    assert cfg.pruning == PruningConfig()
    with_funnel = StudyConfig.from_dict({**MINIMAL, "funnel": {"steps": 600}})  # the search task at a longer horizon
    assert with_funnel.funnel == FunnelConfig(enabled=True, tasks=("digits",), steps=600)
    assert cfg.precision == RunSpec().precision and cfg.checkpoint_every == RunSpec().checkpoint_every


def test_a_changed_field_default_reaches_the_parser(monkeypatch):
    """The parser reads defaults from the fields, so changing one changes what a silent config gets."""
    field = StudyConfig.__dataclass_fields__["checkpoint_every"]
    monkeypatch.setattr(field, "default", 7)
    assert StudyConfig.from_dict(MINIMAL).checkpoint_every == 7


def test_every_caller_builds_its_spec_from_one_place():
    cfg = StudyConfig.from_dict({"search": {**MINIMAL["search"], "precision": "fp32", "steps": 11, "subsample": 300},
                                 "funnel": {"steps": 23}})
    search = cfg.run_spec(device="cpu", data_dir="/d")
    funnel = cfg.funnel_spec(device="cpu", data_dir="/d")
    assert (search.steps, search.subsample, search.precision, search.split) == (11, 300, "fp32", "val")
    assert (funnel.steps, funnel.precision, funnel.split, funnel.checkpoint_every) == (23, "fp32", "val", 0)
    assert search.data_dir == funnel.data_dir == "/d"


def test_spec_is_frozen_and_validates():
    spec = RunSpec(steps=5, dtype=torch.float64)
    assert spec.dtype == "float64" and spec.torch_dtype is torch.float64
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 6  # type: ignore[misc]
    assert spec.replace(steps=6).steps == 6 and spec.steps == 5
    for bad, needle in [({"device": "tpu"}, "got 'tpu'"), ({"split": "train"}, "split"), ({"batch_size": 0}, "batch_size"),
                        ({"precision": "bf16", "dtype": "float64"}, "bf16"), ({"subsample": True}, "subsample"),
                        ({"deterministic": "yes"}, "deterministic"), ({"backend": "gpu"}, "backend")]:
        with pytest.raises(ConfigError, match=needle):
            RunSpec(**bad).validate()


def test_device_resolution():
    assert resolve_device(None) == resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="'device' must be auto, cpu, cuda or cuda:K"):
        resolve_device("cuda:x")


def test_engine_settings_flow_from_the_config_to_the_population(monkeypatch):
    """[search] backend and compile_model reach every Population the evaluator builds."""
    import optsearch.train.evaluate as ev
    from optsearch.genome import NAMED

    cfg = StudyConfig.from_dict({"search": {**MINIMAL["search"], "backend": "fused", "compile_model": True, "steps": 2,
                                            "subsample": 100}})
    seen = []
    real = ev.Population

    def spy(*a, **k):
        seen.append((k["backend"], k["compile_model"]))
        return real(*a, **{**k, "compile_model": False})  # (compiling is not what this test is about)

    monkeypatch.setattr(ev, "Population", spy)
    ev.evaluate([NAMED["adam"]], cfg.tasks, [0], cfg.run_spec(device="cpu", data_dir=None))
    assert seen == [("fused", True)]
    with pytest.raises(ConfigError, match="'backend' must be one of"):
        StudyConfig.from_dict({"search": {**MINIMAL["search"], "backend": "gpu"}})

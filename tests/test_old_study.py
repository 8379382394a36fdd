"""Studies written before the subpackage layout still load, show, export, run, analyze and benchmark.

``fixtures/study_v0.db`` was written by optsearch at commit 91ec18c (the flat-module layout) from the configs
``fixtures/study_v0_old.toml`` (aggregate fitness, median pruner) and ``fixtures/study_v0_oldnsga.toml`` (per-task
objectives): ``study create`` then ``study run --generations 2`` of 3, and ``export`` of each best genome into
``fixtures/study_v0_*_best.json``. The tests work on a copy, so the fixture itself never changes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from optsearch.cli import main
from optsearch.genome import Genome

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def old_storage(tmp_path: Path) -> str:
    db = tmp_path / "study_v0.db"
    shutil.copy(FIXTURES / "study_v0.db", db)
    return f"sqlite:///{db}"


def test_old_studies_are_listed_and_shown(old_storage: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "list", "--storage", old_storage]) == 0
    listing = capsys.readouterr().out
    assert "old" in listing and "oldnsga" in listing
    assert main(["study", "show", "old", "--storage", old_storage]) == 0
    out = capsys.readouterr().out
    assert "2/3 generations" in out
    assert "trial 8" in out  # the best genome the old code named


@pytest.mark.parametrize("name", ["old", "oldnsga"])
def test_old_study_exports_the_same_genome(old_storage: str, tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.json"
    assert main(["export", name, "-o", str(out), "--storage", old_storage]) == 0
    expected = json.loads((FIXTURES / f"study_v0_{name}_best.json").read_text())["genome"]
    got = Genome.from_params(json.loads(out.read_text())["genome"])  # β now stored as log10(1 − β)
    assert got == Genome.from_params(expected)
    assert (got.beta1, got.beta2) == (pytest.approx(expected["beta1"], rel=1e-14),
                                      pytest.approx(expected["beta2"], rel=1e-14))


@pytest.mark.slow
def test_old_study_resumes_to_its_end_and_is_analyzed(old_storage: str, tmp_path: Path) -> None:
    before = optuna.load_study(study_name="old", storage=old_storage)
    told = {t.number: (t.state, t.values) for t in before.trials if t.state.is_finished()}
    assert main(["study", "run", "old", "--storage", old_storage, "--quiet"]) == 0
    after = optuna.load_study(study_name="old", storage=old_storage)
    # The old trials are kept as they were; the third generation was added by the new code.
    assert {t.number: (t.state, t.values) for t in after.trials if t.number in told} == told
    gens = {t.system_attrs.get("GeneticSampler:generation") for t in after.trials}
    assert 2 in gens
    report = tmp_path / "report"
    assert main(["analyze", "old", "--storage", old_storage, "-o", str(report)]) == 0
    assert (report / "report.md").read_text().strip()


@pytest.mark.slow
def test_old_study_is_benchmarked(old_storage: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    rc = main(["benchmark", "old", "--storage", old_storage, "--tasks", "digits", "--seeds", "2", "--trials", "2",
               "--steps", "20", "-o", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] and (out / "report.md").exists()

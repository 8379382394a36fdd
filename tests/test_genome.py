from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import optuna
import pytest

from optsearch import Genome, OptsearchError
from optsearch.cli import main
from optsearch.genome import FORMAT_VERSION, NAMED, define_search_space, search_space
from optsearch.genome.primitives import PRIMITIVES, TERM_CHOICES


def test_catalogue_has_the_required_primitives():
    for name in ("grad", "momentum", "rms_norm", "adam", "sign_grad", "unit_grad", "nesterov", "sign_momentum", "lion"):
        assert name in PRIMITIVES
    assert TERM_CHOICES[0] == "none"


def test_space_is_static_and_roundtrips():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set(search_space())
    for _ in range(30):
        t = study.ask()
        g = define_search_space(t)
        assert set(t.params) == names  # every parameter in every trial
        assert Genome.from_params(t.params) == g
        assert Genome.from_params(g.to_params()).to_params() == g.to_params()


def test_named_roundtrip_through_json(tmp_path):
    for name, g in NAMED.items():
        path = tmp_path / f"{name}.json"
        g.save(path)
        assert Genome.load(path) == g
        assert json.loads(path.read_text())["format_version"] == FORMAT_VERSION


def test_formula_merges_duplicate_terms():
    f = Genome.named("paper_evolved").formula()
    assert f.startswith("Δθ = −η_t·(0.735·sign(g) + 3.64·m/(√v+ε)) − η_t·λ·θ")
    assert "no bias correction" in f and "warmup 20%" in f and "cosine" in f
    assert f.count("sign(g)") == 1


def test_variant_by_replace_and_immutability():
    g = Genome.named("adam")
    v = dataclasses.replace(g, lr_log10=-2.5)
    assert v.lr == pytest.approx(10**-2.5) and g.lr_log10 == -3.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.lr_log10 = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["genome"].__setitem__("beta1", 1.5), "beta1"),
        (lambda d: d["genome"].__setitem__("term_2", "adagrad"), "term_2"),
        (lambda d: d["genome"].pop("eps_log10"), "eps_log10"),
        (lambda d: d["genome"].__setitem__("cosine_decay", "yes"), "cosine_decay"),
        (lambda d: d["genome"].__setitem__("alpha_0", float("nan")), "alpha_0"),
        (lambda d: d.__setitem__("format_version", 99), "format_version"),
    ],
)
def test_bad_genome_file_names_the_field(tmp_path, mutate, field):
    d = Genome.named("adam").to_dict()
    mutate(d)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(d))
    with pytest.raises(OptsearchError, match=field):
        Genome.load(path)


def test_corrupt_json_is_a_clear_error(tmp_path):
    path = tmp_path / "g.json"
    path.write_text('{"format_version": 1, "genome": {')
    with pytest.raises(OptsearchError, match="not valid JSON"):
        Genome.load(path)


def test_cli_genome_show(capsys, tmp_path):
    assert main(["genome", "show", "paper_evolved"]) == 0
    assert "0.735·sign(g) + 3.64·m/(√v+ε)" in capsys.readouterr().out
    assert main(["genome", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown genome 'nope'" in err
    bad = tmp_path / "b.json"
    d = Genome.named("adam").to_dict()
    d["genome"]["beta2"] = 2.0
    bad.write_text(json.dumps(d))
    assert main(["genome", "show", str(bad)]) == 2
    assert "beta2" in capsys.readouterr().err


def test_output_into_a_closed_pipe_is_not_a_traceback():
    """`python -m optsearch genome show … | head -1` must not end in a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "genome", "show", "paper_evolved"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err

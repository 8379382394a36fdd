"""Bad input, tried systematically: each case exits 2 with one line naming the problem, and an
existing study is left exactly as it was."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import optuna
import pytest

from optsearch import Genome
from optsearch.cli import main

from tests.test_study import write_config



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An existing study with one finished generation, plus files for the bad cases."""
    tmp = tmp_path_factory.mktemp("bad")
    url = f"sqlite:///{tmp}/s.db"
    cfg = write_config(tmp, steps=30, population=4, generations=3)
    assert main(["study", "create", "base", "--config", str(cfg), "--storage", url]) == 0
    assert main(["study", "run", "base", "--storage", url, "--generations", "1", "--quiet"]) == 0

    def toml(name: str, text: str) -> str:
        p = tmp / name
        p.write_text(text)
        return str(p)

    base_toml = cfg.read_text()
    good = Genome.named("adam").to_dict()
    files = {
        "url": url,
        "wrong_type": toml("wrong_type.toml", base_toml.replace("population = 4", 'population = "four"')),
        "negative_pop": toml("neg.toml", base_toml.replace("population = 4", "population = -4")),
        "unknown_task": toml("task.toml", base_toml.replace('["digits"]', '["digits", "imagenet"]')),
        "zero_steps": toml("steps.toml", base_toml.replace("steps = 30", "steps = 0")),
        "bad_sampler": toml("sampler.toml", base_toml + "tournament_size = -1\n"),
        "not_toml": toml("broken.toml", "[search\ntasks = "),
        "mnist_cfg": toml("mnist.toml", base_toml.replace('["digits"]', '["mnist"]')),
    }
    for name, mutate in {
        "corrupt_genome": None,
        "genome_beta": ("beta1", 1.7),
        "genome_primitive": ("term_1", "adagrad"),
    }.items():
        p = tmp / f"{name}.json"
        if mutate is None:
            p.write_text(json.dumps(good)[:40])
        else:
            d = json.loads(json.dumps(good))
            d["genome"][mutate[0]] = mutate[1]
            p.write_text(json.dumps(d))
        files[name] = str(p)
    empty = tmp / "empty_data"
    empty.mkdir()
    files["empty_data"] = str(empty)
    trunc = tmp / "trunc_data" / "mnist"
    trunc.mkdir(parents=True)
    n = 10  # small but well-formed IDX files, so only the cut-off one is at fault
    labels = gzip.compress(b"\x00\x00\x08\x01" + n.to_bytes(4, "big") + bytes(n))
    images = gzip.compress(b"\x00\x00\x08\x03" + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(n * 784))
    for f, data in (("train-labels-idx1-ubyte.gz", labels), ("t10k-images-idx3-ubyte.gz", images),
                    ("t10k-labels-idx1-ubyte.gz", labels)):
        (trunc / f).write_bytes(data)
    (trunc / "train-images-idx3-ubyte.gz").write_bytes(images[: len(images) // 2])  # a cut-off gzip
    files["trunc_data"] = str(trunc.parent)
    return files


def snapshot(url: str) -> list:
    st = optuna.load_study(study_name="base", storage=url)
    return [st.user_attrs] + [(t.number, t.state, t.values, t.params, t.user_attrs) for t in st.trials]


TABLE = [
    ("config wrong type", lambda w: ["study", "create", "x", "--config", w["wrong_type"], "--storage", w["url"]], "'population' must be an integer"),
    ("config negative population", lambda w: ["study", "create", "x", "--config", w["negative_pop"], "--storage", w["url"]], "'population' must be ≥ 2"),
    ("config unknown task", lambda w: ["study", "create", "x", "--config", w["unknown_task"], "--storage", w["url"]], "unknown task 'imagenet'"),
    ("config steps = 0", lambda w: ["study", "create", "x", "--config", w["zero_steps"], "--storage", w["url"]], "'steps' must be ≥ 1"),
    ("config bad sampler value", lambda w: ["study", "create", "x", "--config", w["bad_sampler"], "--storage", w["url"]], "tournament_size"),
    ("config not TOML", lambda w: ["study", "create", "x", "--config", w["not_toml"], "--storage", w["url"]], "not valid TOML"),
    ("config file missing", lambda w: ["study", "create", "x", "--config", "/nonexistent/c.toml", "--storage", w["url"]], "config file not found"),
    ("unknown preset", lambda w: ["study", "create", "x", "--preset", "enormous", "--storage", w["url"]], "unknown preset 'enormous'"),
    ("study already exists", lambda w: ["study", "create", "base", "--preset", "quick", "--storage", w["url"]], "already exists"),
    ("study does not exist (run)", lambda w: ["study", "run", "ghost", "--storage", w["url"]], "no study named 'ghost'"),
    ("study does not exist (show)", lambda w: ["study", "show", "ghost", "--storage", w["url"]], "no study named 'ghost'"),
    ("study does not exist (export)", lambda w: ["export", "ghost", "-o", "/tmp/x.json", "--storage", w["url"]], "no study named 'ghost'"),
    ("export unknown trial", lambda w: ["export", "base", "--trial", "999", "-o", "/tmp/x.json", "--storage", w["url"]], "no trial 999"),
    ("storage refuses connection", lambda w: ["study", "list", "--storage", "postgresql+psycopg://nobody@127.0.0.1:1/none"], "cannot open storage"),
    ("storage unknown dialect", lambda w: ["study", "list", "--storage", "nosuchdb://host/db"], "cannot open storage"),
    ("storage not a URL", lambda w: ["study", "list", "--storage", "just-words"], "is not a URL"),
    ("corrupt genome JSON", lambda w: ["genome", "show", w["corrupt_genome"]], "not valid JSON"),
    ("genome β out of range", lambda w: ["genome", "show", w["genome_beta"]], "beta1"),
    ("genome unknown primitive", lambda w: ["genome", "show", w["genome_primitive"]], "unknown primitive 'adagrad'"),
    ("unknown named genome", lambda w: ["genome", "show", "adagrad"], "unknown genome 'adagrad'"),
    ("workers = 0", lambda w: ["study", "run", "base", "--workers", "0", "--storage", w["url"]], "--workers must be ≥ 1"),
    ("storage file mistyped (run)", lambda w: ["study", "run", "base", "--storage", w["url"] + ".typo"], "no storage at"),
    ("storage file mistyped (list)", lambda w: ["study", "list", "--storage", w["url"] + ".typo"], "no storage at"),
    ("GPU device on a CPU machine", lambda w: ["study", "run", "base", "--device", "cuda:1", "--storage", w["url"]], "cuda:1"),
    ("device that is no device (run)", lambda w: ["study", "run", "base", "--device", "tpu", "--storage", w["url"]], "'device' must be auto, cpu, cuda or cuda:K, got 'tpu'"),
    ("device that is no device (benchmark)", lambda w: ["benchmark", "base", "--device", "tpu", "--storage", w["url"]], "got 'tpu'"),
    ("generations = 0", lambda w: ["study", "run", "base", "--generations", "0", "--storage", w["url"]], "--generations must be ≥ 1"),
    ("empty dataset dir", lambda w: ["study", "run", "mn", "--storage", w["url"], "--data-dir", w["empty_data"]], "mnist"),
    ("truncated dataset gzip", lambda w: ["study", "run", "mn", "--storage", w["url"], "--data-dir", w["trunc_data"]], "train-images-idx3-ubyte.gz"),
]


@pytest.mark.parametrize("case, argv, needle", TABLE, ids=[c[0] for c in TABLE])
def test_bad_input_exits_2_with_one_line(world, capsys, case, argv, needle):
    if case.endswith("dataset dir") or case.startswith("truncated"):
        if "mn" not in [s.study_name for s in optuna.get_all_study_summaries(world["url"])]:
            assert main(["study", "create", "mn", "--config", world["mnist_cfg"], "--storage", world["url"]]) == 0
    before = snapshot(world["url"])
    capsys.readouterr()
    assert main(argv(world)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("optsearch: error: "), err
    assert needle in err, err
    assert snapshot(world["url"]) == before  # nothing in the existing study changed


def test_table_is_big_enough():
    assert len(TABLE) >= 15


def test_a_mistyped_storage_file_is_not_created(world):
    typo = world["url"].removeprefix("sqlite:///") + ".typo"
    for argv in (["study", "show", "base"], ["study", "run", "base"], ["export", "base", "-o", typo + ".json"],
                 ["study", "delete", "base"], ["study", "list"]):
        assert main([*argv, "--storage", "sqlite:///" + typo]) == 2
    assert not Path(typo).exists()

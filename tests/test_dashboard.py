"""The dashboard command without a browser: errors, host policy, the served app, Ctrl-C, the study note."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna_dashboard import get_note

from optsearch import dashboard
from optsearch.cli import main
from optsearch.search.config import StudyConfig
from optsearch.dashboard import DashboardServer, config_markdown, resolve_host, serve, write_study_note
from optsearch.errors import ConfigError, StudyError
from tests.test_study import write_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class DemoStudy:
    url: str
    name: str
    n_trials: int
    best_number: int
    best_formula: str


def make_study(tmp_path: Path, name: str = "tiny") -> DemoStudy:
    """A real study in a fresh SQLite file: `study create` from a tiny config, then one generation of `study run`.

    Whatever the dashboard shows is what the study layer wrote (formula, generation, per-task attrs, the
    config note). The config keeps the median pruner of the presets (write_config turns pruning off) because
    only a pruner-enabled study reports the fitness curve as intermediate values. ~3 s on CPU.
    """
    url = f"sqlite:///{tmp_path}/dash.db"
    cfg = write_config(tmp_path, steps=30, population=4, generations=1)
    text = cfg.read_text()
    assert 'pruner = "none"' in text
    cfg.write_text(text.replace('pruner = "none"', 'pruner = "median"'))
    assert main(["study", "create", name, "--config", str(cfg), "--storage", url]) == 0
    assert main(["study", "run", name, "--storage", url, "--generations", "1", "--quiet"]) == 0
    study = optuna.load_study(study_name=name, storage=url)
    best = study.best_trial
    return DemoStudy(url, name, len(study.trials), best.number, best.user_attrs["formula"])


MEMORY_STUDY = """
[search]
tasks = ["digits"]
seeds = [0]
steps = 30
population = 8
generations = 2
checkpoint_every = 10
seed = 3
device = "cpu"
objective = "aggregate+memory"
[pruning]
pruner = "percentile"
warmup_checkpoints = 1
"""


def make_memory_study(tmp_path: Path, name: str = "memory") -> DemoStudy:
    """A real tiny accuracy–memory study (`study create` + `study run`, 2 generations of 8). Generation 0 holds
    plain SGD (0 floats per parameter), SGD-momentum and RMSProp (1) and Adam (2); which of them stay on the front
    is measured, not assumed (docs/measurements.md, 2026-12-05: this seed's 2-float end was evolved in generation 1)."""
    url = f"sqlite:///{tmp_path}/memory.db"
    cfg = tmp_path / "memory.toml"
    cfg.write_text(MEMORY_STUDY)
    assert main(["study", "create", name, "--config", str(cfg), "--storage", url]) == 0
    assert main(["study", "run", name, "--storage", url, "--quiet"]) == 0
    study = optuna.load_study(study_name=name, storage=url)
    best = max(study.best_trials, key=lambda t: t.values[0])
    return DemoStudy(url, name, len(study.trials), best.number, best.user_attrs["formula"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoStudy:
    return make_study(tmp_path_factory.mktemp("dash"))


# ----------------------------------------------------------------------------- errors
def test_missing_study_is_a_one_line_study_error(demo, capsys):
    with pytest.raises(StudyError, match=r"no study named 'nope'.*studies there: tiny"):
        serve("nope", storage=demo.url, port=0)
    assert main(["dashboard", "nope", "--storage", demo.url, "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("optsearch: error: no study named 'nope'") and "\n" not in err


def test_missing_storage_file_is_not_created(tmp_path):
    db = tmp_path / "typo.db"
    with pytest.raises(StudyError, match="no storage at"):
        serve("tiny", storage=f"sqlite:///{db}", port=0)
    assert not db.exists()
    with pytest.raises(StudyError, match="no storage at"):
        serve("tiny", storage=str(tmp_path / "missing.log"), port=0)


def test_busy_port_is_a_config_error(demo):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{s.getsockname()[1]}"):
            serve(demo.name, storage=demo.url, port=s.getsockname()[1])


# ----------------------------------------------------------------------------- host policy
@pytest.mark.parametrize("host", [None, "", "127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_bind_quietly(host):
    bound, warning = resolve_host(host)
    assert warning is None
    assert bound == ("127.0.0.1" if not host else host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "10.1.2.3"])
def test_explicit_non_loopback_host_warns(host):
    bound, warning = resolve_host(host)
    assert bound == host
    assert warning and "reachable from the network" in warning and "\n" not in warning


def test_default_binds_loopback_only_and_serves_the_study(demo):
    with DashboardServer(demo.name, storage=demo.url, port=0).start() as srv:
        assert srv._httpd.server_address[0] == "127.0.0.1" and srv.warning is None
        assert srv.url == f"http://127.0.0.1:{srv.port}/dashboard/studies/{srv.study_id}"
        with urllib.request.urlopen(srv.url, timeout=10) as r:  # the single-page app for the study route
            assert r.status == 200 and b'id="dashboard"' in r.read()
        api = f"http://127.0.0.1:{srv.port}/api/studies/{srv.study_id}?after=0"
        with urllib.request.urlopen(api, timeout=10) as r:
            detail = json.load(r)
    assert detail["name"] == demo.name and len(detail["trials"]) == demo.n_trials
    best = next(t for t in detail["trials"] if t["number"] == demo.best_number)
    attrs = {a["key"]: a["value"] for a in best["user_attrs"]}
    assert attrs["formula"] == demo.best_formula and attrs["generation"] == "0" and attrs["diverged"] == "False"
    assert 0 < float(attrs["digits_accuracy"]) <= 1
    # the fitness curve the study layer reported is what the dashboard plots
    stored = optuna.load_study(study_name=demo.name, storage=demo.url).trials[demo.best_number].intermediate_values
    served = {v["step"]: v["value"] for v in best["intermediate_values"]}
    assert len(stored) >= 2 and served == pytest.approx(stored)


def test_explicit_all_interfaces_binds_there_with_warning(demo):
    with DashboardServer(demo.name, storage=demo.url, host="0.0.0.0", port=0).start() as srv:
        assert srv._httpd.server_address[0] == "0.0.0.0" and "reachable from the network" in srv.warning
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/meta", timeout=10) as r:
            assert r.status == 200


# ----------------------------------------------------------------------------- the CLI process and Ctrl-C
def start_cli_dashboard(demo: DemoStudy, *extra: str) -> tuple[subprocess.Popen, str]:
    """``python -m optsearch dashboard`` on a free port; returns the process and the URL it printed."""
    # As from a terminal: a test run started in the background (`… &`) inherits SIGINT ignored, and a
    # Python started with SIGINT ignored never turns Ctrl-C into KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "dashboard", demo.name, "--storage", demo.url,
                             "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()  # serve() prints and flushes the URL once it is listening
    if not line:
        proc.kill()
        pytest.fail(f"dashboard exited early: {proc.communicate()}")
    url = line.rsplit(" ", 1)[-1].strip()
    assert url.startswith("http://127.0.0.1:") and "/dashboard/studies/" in url, line
    return proc, url


def stop_with_ctrl_c(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)  # generous: CI shares two cores with other jobs
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


def test_cli_prints_url_serves_and_stops_cleanly_on_ctrl_c(demo):
    proc, url = start_cli_dashboard(demo)
    try:
        t0 = time.time()
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200
    except BaseException:
        proc.kill()
        raise
    err = stop_with_ctrl_c(proc)
    assert "dashboard stopped" in err and "warning" not in err
    assert time.time() - t0 < 20


# ----------------------------------------------------------------------------- the study note
def test_study_note_round_trips_through_the_dashboard_api(demo):
    study = optuna.load_study(study_name=demo.name, storage=demo.url)
    note = get_note(study)
    cfg = study.user_attrs["config"]
    assert note == config_markdown(demo.name, cfg)
    assert note.startswith(f"# optsearch study `{demo.name}`")
    assert "**digits**" in note and "population 4 × 1 generations" in note and "1 seed(s)" in note
    for row in ("| population | 4 |", "| steps | 30 |", "| tasks | digits |", "| pruning.pruner | median |",
                "| batch_size | default |"):
        assert row in note.splitlines()


def test_study_note_for_per_task_config_and_rewrite(tmp_path):
    study = optuna.create_study(study_name="mo", storage=f"sqlite:///{tmp_path}/n.db", directions=["maximize"] * 2)
    cfg = StudyConfig(tasks=("digits", "mnist1d"), population=50, generations=50, seeds=(0, 1),
                      objective="per_task", sampler={"mutation_rate": 0.2}).to_dict()
    write_study_note(study, cfg)
    first = get_note(study)
    assert "one objective per task" in first and "Pareto front" in first and "2 seed(s)" in first
    assert "| sampler.mutation_rate | 0.2 |" in first.splitlines() and "| tasks | digits, mnist1d |" in first
    # a long note (over one storage attr's 2045 chars) and a rewrite: the latest version is what is read back
    long_cfg = cfg | {"sampler": {f"knob_{i}": "x" * 40 for i in range(60)}}
    write_study_note(study, long_cfg)
    assert get_note(study) == config_markdown("mo", long_cfg) and len(get_note(study)) > 3000


def test_cli_host_is_none_unless_given_and_an_explicit_one_is_passed_through(monkeypatch):
    """No --host reaches serve() as None (so resolve_host binds loopback); a given one arrives unchanged."""
    calls = []

    def fake_serve(name, storage=None, host=None, port=8080, **kw):  # binds nothing
        calls.append((name, storage, host, port))
        return 0

    monkeypatch.setattr(dashboard, "serve", fake_serve)
    assert main(["dashboard", "s", "--storage", "sqlite:///x.db"]) == 0
    assert main(["dashboard", "s", "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert calls == [("s", "sqlite:///x.db", None, 8080), ("s", None, "0.0.0.0", 9000)]
    assert resolve_host(calls[0][2]) == ("127.0.0.1", None)
    assert "reachable from the network" in resolve_host(calls[1][2])[1]


def test_serve_output_goes_to_given_streams(demo, monkeypatch):
    """serve() prints the URL to out and the warning to err, then stops on Ctrl-C with status 0."""
    out, err = io.StringIO(), io.StringIO()

    def interrupted(self) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(DashboardServer, "serve_forever", interrupted)
    assert serve(demo.name, storage=demo.url, host="0.0.0.0", port=0, out=out, err=err) == 0
    assert out.getvalue().startswith(f"dashboard for study '{demo.name}': http://0.0.0.0:")
    assert "reachable from the network" in err.getvalue() and "dashboard stopped" in err.getvalue()


def test_journal_storage_is_served(tmp_path):
    from optsearch.search.storage import open_storage

    log = tmp_path / "j.log"
    optuna.create_study(study_name="j", storage=open_storage(str(log))).optimize(lambda t: t.suggest_float("x", 0, 1),
                                                                                  n_trials=3)
    with DashboardServer("j", storage=str(log), port=0).start() as srv:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/studies/{srv.study_id}?after=0", timeout=10) as r:
            assert json.load(r)["name"] == "j"


def test_the_dashboard_draws_the_accuracy_memory_front_of_a_memory_study(tmp_path):
    """The server's figure refresh saves the Pareto-front card of fitness against optimizer state."""
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    from optsearch.analysis.evolution_figures import GRAPH_PREFIX
    from tests.test_memory_objective import memory_study

    url = f"sqlite:///{tmp_path}/m.db"
    study = memory_study(storage=url)
    server = DashboardServer(study.study_name, storage=url, port=0, refresh_s=0)
    try:
        assert server.refresh_search_figures()
    finally:
        server.shutdown()
    cards = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    fig = json.loads(cards[GRAPH_PREFIX + "pareto_memory"])
    front = fig["data"][1]
    assert front["x"] == [0, 1, 2] and front["text"] == ["0 floats", "1 float", "2 floats"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "optimizer state (floats per parameter)"
    assert GRAPH_PREFIX + "pareto" not in cards  # one fitness objective: no fitness-vs-fitness front

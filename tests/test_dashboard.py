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
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from optuna_dashboard import get_note

from optsearch.cli import main
from optsearch.config import StudyConfig
from optsearch.dashboard import DashboardServer, config_markdown, resolve_host, serve, write_study_note
from optsearch.errors import ConfigError, StudyError
from optsearch.genome import NAMED, search_space
from optsearch.tasks import WORST_FITNESS

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class DemoStudy:
    url: str
    name: str
    n_trials: int
    best_number: int
    best_formula: str


def make_study(tmp_path: Path, name: str = "tiny") -> DemoStudy:
    """A finished one-generation study in a fresh SQLite file, stored the way the study layer stores it.

    Trials carry the shared user attrs (formula from the real Genome.formula(), generation, seeds,
    per-task fitness/accuracy/loss, diverged, pruned) and a fitness curve as intermediate values; one
    member diverged (PRUNED, fitness −1). The study has the config/objectives/tasks attrs and the note.
    """
    url = f"sqlite:///{tmp_path}/dash.db"
    cfg = StudyConfig(tasks=("digits",), population=len(NAMED) + 1, generations=1, steps=60,
                      checkpoint_every=20).to_dict()
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["fitness"])
    study.set_user_attr("config", cfg)
    study.set_user_attr("objectives", ["fitness"])
    study.set_user_attr("tasks", ["digits"])
    write_study_note(study, cfg)
    dist = search_space()
    members = list(NAMED.values())
    for i, g in enumerate(members):
        acc = round(0.55 + 0.05 * i, 4)
        fit = round(acc + 0.05 * max(0.0, 1 - 0.6), 4)
        study.add_trial(optuna.trial.create_trial(
            params=g.to_params(), distributions=dist, value=fit,
            intermediate_values={20: round(fit - 0.3, 4), 40: round(fit - 0.1, 4), 60: fit},
            user_attrs={"formula": g.formula(), "generation": 0, "seeds": 1, "diverged": False, "pruned": False,
                        "digits_fitness": fit, "digits_accuracy": acc, "digits_loss": 0.6}))
    diverged = NAMED["sgd_momentum"].to_params() | {"lr_log10": -0.5}
    study.add_trial(optuna.trial.create_trial(
        params=diverged, distributions=dist, state=TrialState.PRUNED, intermediate_values={20: WORST_FITNESS},
        user_attrs={"formula": NAMED["sgd_momentum"].formula(), "generation": 0, "seeds": 1, "diverged": True,
                    "pruned": False, "digits_fitness": WORST_FITNESS, "digits_accuracy": 0.1, "digits_loss": None}))
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    return DemoStudy(url, name, len(study.trials), best.number, best.user_attrs["formula"])


@pytest.fixture
def demo(tmp_path) -> DemoStudy:
    return make_study(tmp_path)


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
    assert attrs["formula"] == demo.best_formula and attrs["generation"] == "0"
    assert len(best["intermediate_values"]) == 3


def test_explicit_all_interfaces_binds_there_with_warning(demo):
    with DashboardServer(demo.name, storage=demo.url, host="0.0.0.0", port=0).start() as srv:
        assert srv._httpd.server_address[0] == "0.0.0.0" and "reachable from the network" in srv.warning
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/meta", timeout=10) as r:
            assert r.status == 200


# ----------------------------------------------------------------------------- the CLI process and Ctrl-C
def start_cli_dashboard(demo: DemoStudy, *extra: str) -> tuple[subprocess.Popen, str]:
    """``python -m optsearch dashboard`` on a free port; returns the process and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "optsearch", "dashboard", demo.name, "--storage", demo.url,
                             "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # serve() prints and flushes the URL once it is listening
    if not line:
        proc.kill()
        pytest.fail(f"dashboard exited early: {proc.communicate()}")
    url = line.rsplit(" ", 1)[-1].strip()
    assert url.startswith("http://127.0.0.1:") and "/dashboard/studies/" in url, line
    return proc, url


def stop_with_ctrl_c(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
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
    assert "**digits**" in note and f"population {cfg['population']} × 1 generations" in note
    for row in ("| population | 8 |", "| tasks | digits |", "| pruning.pruner | median |", "| batch_size | default |"):
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
    from optsearch.storage import open_storage

    log = tmp_path / "j.log"
    optuna.create_study(study_name="j", storage=open_storage(str(log))).optimize(lambda t: t.suggest_float("x", 0, 1),
                                                                                  n_trials=3)
    with DashboardServer("j", storage=str(log), port=0).start() as srv:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/studies/{srv.study_id}?after=0", timeout=10) as r:
            assert json.load(r)["name"] == "j"

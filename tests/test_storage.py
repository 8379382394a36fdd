"""Liveness of RUNNING trials: which ones a worker may fail, and which it must leave alone."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from optsearch.search.storage import Heartbeat, fail_dead_trials, mark_worker, open_storage


def _study(tmp_path, url=None):
    storage = open_storage(url or f"sqlite:///{tmp_path}/s.db")
    return optuna.create_study(study_name="s", storage=storage, direction="maximize")


def _state(study, number):
    return study.get_trials(deepcopy=False)[number].state


def test_unmarked_trial_is_an_orphan_only_after_the_grace_period(tmp_path):
    st = _study(tmp_path)
    st.ask()  # a worker that died inside ask: RUNNING, no host/pid, no heartbeat
    assert fail_dead_trials(st, orphan_after=3600) == []
    assert _state(st, 0) == TrialState.RUNNING
    assert fail_dead_trials(st, orphan_after=0) == [0]
    assert _state(st, 0) == TrialState.FAIL


def test_live_owner_is_kept_and_dead_owner_is_failed(tmp_path):
    st = _study(tmp_path)
    mine = st.ask()
    mark_worker(st, mine._trial_id)  # this process: alive
    theirs = st.ask()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a finished process on this host: its pid is dead
    mark_worker(st, theirs._trial_id)
    st._storage.set_trial_system_attr(theirs._trial_id, "optsearch:pid", child.pid)
    assert fail_dead_trials(st, orphan_after=0) == [1]
    assert _state(st, 0) == TrialState.RUNNING and _state(st, 1) == TrialState.FAIL


def test_heartbeat_beats_a_trial_as_soon_as_it_is_added(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    st = _study(tmp_path, url)
    t = st.ask()
    strict = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=1)  # a view with a 1 s grace
    time.sleep(2.2)  # SQLite timestamps have 1 s resolution
    assert strict._get_stale_trial_ids(st._study_id) == []  # never beaten: invisible to the stale check
    Heartbeat(st._storage).add(t._trial_id)  # not entered: only the immediate first beat
    time.sleep(2.2)  # SQLite timestamps have 1 s resolution
    assert strict._get_stale_trial_ids(st._study_id) == [t._trial_id]


def _skewed_trial(st, hours: float):
    """A RUNNING trial whose start time was written by a host whose clock is ``hours`` off."""
    from datetime import datetime, timedelta

    template = optuna.trial.FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now() - timedelta(hours=hours),
        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values={}, trial_id=-1)
    return st._storage.create_new_trial(st._study_id, template_trial=template)


def test_orphans_are_judged_by_the_local_clock_not_by_another_hosts_start_time(tmp_path):
    st = _study(tmp_path)
    _skewed_trial(st, hours=5)  # just asked on a host whose clock is 5 h behind: not an orphan yet
    assert fail_dead_trials(st, orphan_after=1.0) == []
    time.sleep(1.2)  # unmarked for a second by this process's clock: now it is
    assert fail_dead_trials(st, orphan_after=1.0) == [0]


def test_a_new_ask_waits_for_an_older_unclaimed_trial_whatever_its_start_time(tmp_path):
    import threading

    from optsearch.search.sampler import GeneticSampler, generation_and_member
    from optsearch.search.sampler.slots import claim_slot

    st = _study(tmp_path)
    st.sampler = GeneticSampler(population_size=4, seed=0)
    tid = _skewed_trial(st, hours=3)  # mid-ask on a host whose clock is 3 h behind: it claims in 0.5 s
    older = st._storage.get_trial(tid)
    claimer = threading.Timer(0.5, lambda: claim_slot(st, older, 4, None))
    claimer.start()
    newer = st.ask()  # must queue behind the older trial, not take its slot
    claimer.join()
    assert st._storage.get_trial_system_attrs(tid)["GeneticSampler:member"] == 0
    assert generation_and_member(st, newer) == (0, 1)


# ----------------------------------------------------------------------------- gRPC storage proxy
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_grpc_proxy_url_serves_a_genetic_study_stored_in_the_storage_behind_it():
    """``--storage grpc://host:port``: workers talk to Optuna's gRPC proxy, which writes to one storage."""
    from optsearch.genome import define_search_space
    from optsearch.search.sampler import GENERATION_KEY, GeneticSampler

    from optuna.storages._grpc.server import make_server  # run_grpc_proxy_server without its endless wait

    behind_storage = optuna.storages.InMemoryStorage()  # an RDB in production; its schema set-up costs seconds
    port = _free_port()
    server = make_server(behind_storage, "localhost", port)
    server.start()
    try:
        proxy = open_storage(f"grpc://localhost:{port}")  # waits until the proxy answers
        assert isinstance(proxy, optuna.storages.GrpcStorageProxy)
        st = optuna.create_study(study_name="g", storage=proxy, direction="maximize",
                                 sampler=GeneticSampler(population_size=3, seed=0))
        st.optimize(lambda t: -abs(define_search_space(t).lr_log10 + 2.5), n_trials=6, n_jobs=2)
        mine = st.ask()
        mark_worker(st, mine._trial_id)  # owner marks travel through the proxy too
        assert fail_dead_trials(st, orphan_after=0) == []
        _beats_stand_in_for_the_heartbeats_the_proxy_lacks(st, proxy)
    finally:
        server.stop(grace=None).wait()
    behind = optuna.load_study(study_name="g", storage=behind_storage)
    done = behind.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert sorted(t.system_attrs[GENERATION_KEY] for t in done) == [0, 0, 0, 1, 1, 1]
    assert behind.get_trials(deepcopy=False)[6].system_attrs["optsearch:pid"] > 0


def _beats_stand_in_for_the_heartbeats_the_proxy_lacks(st, proxy):
    """Trials of another host: one whose worker keeps beating stays, one whose worker went silent is failed."""
    from optsearch.search import storage

    alive, silent = st.ask(), st.ask()
    for t in (alive, silent):
        mark_worker(st, t._trial_id)
        st._storage.set_trial_system_attr(t._trial_id, storage.HOST_ATTR, "another-host")
    Heartbeat(proxy).add(silent._trial_id)  # one beat, then its worker dies
    old = storage.HEARTBEAT_INTERVAL
    storage.HEARTBEAT_INTERVAL = 0.1
    try:
        with Heartbeat(proxy, [alive._trial_id]):
            assert fail_dead_trials(st, orphan_after=1.0) == []  # first sight of both counts
            time.sleep(1.3)
            assert fail_dead_trials(st, orphan_after=1.0) == [silent.number]
    finally:
        storage.HEARTBEAT_INTERVAL = old
    assert _state(st, alive.number) == TrialState.RUNNING


def test_grpc_url_without_a_proxy_or_port_is_a_one_line_error(monkeypatch):
    import pytest

    from optsearch.errors import StudyError
    from optsearch.search import storage

    monkeypatch.setattr(storage, "GRPC_CONNECT_TIMEOUT", 0.3)
    with pytest.raises(StudyError, match="no gRPC storage proxy answers at localhost"):
        open_storage(f"grpc://localhost:{_free_port()}")
    with pytest.raises(StudyError, match="expected grpc://host:port"):
        open_storage("grpc://localhost")

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

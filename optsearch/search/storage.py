"""Optuna storages from URLs, and liveness of the workers that hold RUNNING trials.

* ``sqlite:///path.db`` (the default, nothing to start) and any SQLAlchemy RDB URL such as
  ``postgresql+psycopg://user@host/db`` → :class:`optuna.storages.RDBStorage` with heartbeats, so a
  crashed worker's trials are failed by the next worker (``fail_stale_trials``); its trials are read without
  the ORM (:class:`~optsearch.search.trial_read.TrialReadStorage`).
* ``journal:///abs/path.log``, ``journal://relative.log`` or a path ending in ``.log``/``.journal`` → the journal file storage.
  It has no heartbeat, so every worker also records its host and pid on its trials and a RUNNING
  trial whose process is gone from this host is failed at once.
* ``grpc://host:port`` → :class:`optuna.storages.GrpcStorageProxy`, a client of Optuna's gRPC storage proxy
  (``optuna.storages.run_grpc_proxy_server``) in front of one RDB: hundreds of workers hold one gRPC channel each
  instead of a database connection pool each, and the proxy caches reads. The proxy forwards no heartbeats, so
  :class:`Heartbeat` counts beats in a trial attr instead (:data:`BEAT_ATTR`), and a trial of another host whose
  count this process has seen unchanged for the grace period (by its own clock) is failed.

A worker can die between Optuna creating a trial and the worker marking it (host, pid, first
heartbeat); such an *orphan* has no owner to check, so it is failed once this process has seen it
unmarked for the grace period, by its own monotonic clock (never by comparing the trial's start time,
written by another host's clock, with the local time) — otherwise the generation would wait for it
for ever.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable

import optuna
from optuna.storages import BaseStorage, GrpcStorageProxy, JournalStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from optsearch.errors import StudyError
from optsearch.search.config import StudyConfig
from optsearch.search.sampler.slots import unclaimed_for
from optsearch.search.trial_read import TrialReadStorage

DEFAULT_STORAGE = "sqlite:///studies/optsearch.db"
HEARTBEAT_INTERVAL = 5
GRACE_PERIOD = 20
GRPC_CONNECT_TIMEOUT = 10.0  # seconds to wait for a gRPC storage proxy before saying it is not there
HOST_ATTR = "optsearch:host"
PID_ATTR = "optsearch:pid"
BEAT_ATTR = "optsearch:beat"  # a beat counter, on storages without heartbeats of their own (the gRPC proxy)
CONFIG_ATTR = "config"  # study user attr: the validated StudyConfig as a dict


def resolve_url(url: str | None) -> str:
    """The storage URL to use: the given one, else ``$OPTSEARCH_STORAGE``, else the default SQLite file."""
    return url or os.environ.get("OPTSEARCH_STORAGE") or DEFAULT_STORAGE


def _file_of(url: str) -> Path | None:
    """The local file behind a SQLite or journal URL (None for in-memory SQLite and server databases)."""
    if url.startswith("journal://") or url.endswith((".log", ".journal")):
        return Path(url.removeprefix("journal://"))  # journal:///abs/x.log or journal://rel/x.log
    if url.startswith("sqlite:///"):
        db = url.removeprefix("sqlite:///")
        return None if db in ("", ":memory:") else Path(db)
    return None


def open_storage(url: str | None = None, *, create: bool = True) -> BaseStorage:
    """Open the storage; a URL that cannot be used is a one-line StudyError.

    Args:
        create: make a missing SQLite/journal file (and its folder). Readers that only make sense on
            an existing study (dashboard, analysis) pass False, so a typo is an error, not an empty file.
    """
    url = resolve_url(url)
    path = _file_of(url)
    if path is not None and not create and not path.is_file():
        raise StudyError(f"no storage at {path} (from {url}); create a study first "
                         "(`python -m optsearch study create NAME --preset quick`) or pass --storage")
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if url.startswith("journal://") or url.endswith((".log", ".journal")):
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("grpc://"):
            return _grpc_proxy(url)
        if "://" not in url:
            raise StudyError(f"storage {url!r} is not a URL (expected e.g. sqlite:///studies/optsearch.db, "
                             "postgresql+psycopg://user@host/db, journal:///path.log or grpc://host:13000)")
        return TrialReadStorage(
            url,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            grace_period=GRACE_PERIOD,
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True},
        )
    except StudyError:
        raise
    except Exception as e:  # SQLAlchemy/driver errors: unknown dialect, refused connection, bad path
        msg = " ".join(str(e).split())[:300]
        raise StudyError(f"cannot open storage {_redact(url)}: {type(e).__name__}: {msg}") from None


def _grpc_proxy(url: str) -> GrpcStorageProxy:
    """A client of the gRPC storage proxy at ``grpc://host:port``, once the proxy answers.

    Waiting here turns a proxy that is not running into a one-line error instead of a hang at the first call.
    """
    host, sep, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StudyError(f"storage {url!r}: expected grpc://host:port (e.g. grpc://localhost:13000)")
    try:
        with warnings.catch_warnings():  # experimental in Optuna: said once in the README, not at every open
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = GrpcStorageProxy(host=host, port=int(port))
        proxy.wait_server_ready(timeout=GRPC_CONNECT_TIMEOUT)
    except ImportError as e:
        raise StudyError(f"storage {url!r} needs grpcio and protobuf ({e}); pip install -e '.[grpc]'") from None
    except ConnectionError:
        proxy.close()
        raise StudyError(f"no gRPC storage proxy answers at {host}:{port} within {GRPC_CONNECT_TIMEOUT:g} s; start "
                         "one with optuna.storages.run_grpc_proxy_server (see README)") from None
    return proxy


def _redact(url: str) -> str:
    """Hide a password in a URL before it is printed."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in cred else url
    return url


def load_study(name: str, storage: BaseStorage, url: str | None = None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        hint = f"; studies there: {', '.join(known)}" if known else "; the storage has no studies"
        raise StudyError(f"no study named {name!r} in {_redact(resolve_url(url))}{hint}") from None


def open_existing_study(name: str, url: str | None = None) -> optuna.Study:
    """Load a study for reading or running; a missing storage file, storage or study is a one-line
    StudyError, and nothing is created (only ``study create`` makes storages)."""
    return load_study(name, open_storage(url, create=False), url)


def open_study(name: str, storage: str | None = None) -> tuple[optuna.Study, StudyConfig]:
    """An optsearch study and its stored config; anything else is a one-line StudyError."""
    study = open_existing_study(name, storage)
    raw = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(raw, dict):
        raise StudyError(f"study {name!r} was not created by optsearch (it has no stored config)")
    return study, StudyConfig.from_dict(raw, where=f"study {name!r}", stored=True)


def mark_worker(study: optuna.Study, trial_id: int) -> None:
    """Record which process holds a trial, so a dead local worker's trials can be failed at once."""
    study._storage.set_trial_system_attr(trial_id, HOST_ATTR, socket.gethostname())
    study._storage.set_trial_system_attr(trial_id, PID_ATTR, os.getpid())


def fail_dead_trials(study: optuna.Study, *, orphan_after: float = GRACE_PERIOD) -> list[int]:
    """Fail RUNNING trials whose worker is gone: stale heartbeat (RDB), a dead pid on this host, or
    no owner mark for ``orphan_after`` seconds since this process first saw it (the worker died
    inside ``ask``).

    Returns the numbers of the trials failed here. Safe to call from several workers at once.
    """
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.system_attrs.get(PID_ATTR)
        if pid is None:
            dead = unclaimed_for(study, t) >= orphan_after
        elif t.system_attrs.get(HOST_ATTR) == host:
            dead = isinstance(pid, int) and pid != os.getpid() and not _alive(pid)
        else:
            dead = BEAT_ATTR in t.system_attrs and _silent_for(study, t) >= orphan_after
        if dead:
            try:
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except Exception:  # another worker failed it first
                pass
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(before - after)


_LAST_BEAT: dict[tuple[int, int], tuple[object, float]] = {}  # (storage, trial id) -> (count, monotonic time seen)


def _silent_for(study: optuna.Study, t: optuna.trial.FrozenTrial) -> float:
    """Seconds since this process first saw the trial's current beat count (0 when it just changed)."""
    now, beat = time.monotonic(), t.system_attrs.get(BEAT_ATTR)
    key = (id(study._storage), t._trial_id)
    seen = _LAST_BEAT.get(key)
    if seen is None or seen[0] != beat:
        _LAST_BEAT[key] = seen = (beat, now)
    return now - seen[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed child not yet reaped) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Heartbeat:
    """Records heartbeats for this worker's running trials from one background thread (RDB storages).

    Optuna only beats inside ``study.optimize``; our ask/tell loop needs its own. Trials join with
    :meth:`add` the moment they are asked (first beat at once), so a worker that dies while still
    asking the rest of its share leaves trials that go stale, not trials that look alive for ever.
    Through the gRPC proxy, which has no heartbeat, a beat increments the trial's :data:`BEAT_ATTR`.
    """

    def __init__(self, storage: BaseStorage, trial_ids: Iterable[int] = ()):
        self._storage = storage
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._native = is_heartbeat_enabled(storage)  # RDBStorage, also behind a study's _CachedStorage
        self._counts = not self._native and isinstance(storage, GrpcStorageProxy)
        self._enabled = self._native or self._counts
        self._beats = 0
        for tid in trial_ids:
            self.add(tid)

    def add(self, trial_id: int) -> None:
        with self._lock:
            self._ids.append(trial_id)
        if self._enabled:
            self._beat_one(trial_id)

    def __enter__(self) -> "Heartbeat":
        if self._enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _beat_one(self, tid: int) -> None:
        try:
            if self._native:
                self._storage.record_heartbeat(tid)
            else:
                self._beats += 1
                self._storage.set_trial_system_attr(tid, BEAT_ATTR, self._beats)
        except Exception:  # a finished trial, or a transient storage error: next beat retries
            pass

    def _beat(self) -> None:
        with self._lock:
            ids = list(self._ids)
        for tid in ids:
            self._beat_one(tid)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            self._beat()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

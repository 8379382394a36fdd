"""optuna-dashboard on a study's storage, and the study-level note people read there.

The dashboard shows what the study layer stores: trial user attrs (formula, generation, per-task
accuracies, diverged), intermediate values (the fitness curve), the Pareto front of per-task studies,
and notes/figures saved with ``optuna_dashboard.save_note`` / ``save_plotly_graph_object``. This module
only serves it: we run the dashboard's own WSGI app on a threaded wsgiref server we own, so Ctrl-C
stops it cleanly (exit 0, no traceback) and tests can start and stop it in-process.

Binding is loopback unless a host is given explicitly: the dashboard has no authentication and can
rename/delete studies, so exposing it to the network must be a decision, never a default.

The search figures (lineage, generations, Pareto fronts — in a ``+memory`` study the accuracy–memory front,
fitness against optimizer state in floats per parameter — the winner) are the study's own custom-plot
cards: the server rebuilds and saves them whenever the study's finished-trial count changes, so they
follow a ``study run`` that is still going, generation by generation, without the run loop knowing.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import warnings
from socketserver import ThreadingMixIn
from typing import Any, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from optuna.storages import BaseStorage

from optsearch.errors import ConfigError
from optsearch.search.note import config_markdown, write_study_note  # noqa: F401 (re-exported)
from optsearch.search.storage import load_study, open_storage

LOOPBACK = "127.0.0.1"
REFRESH_S = 10.0
"""Seconds between checks for new finished trials (the search figures are redrawn only when there are)."""
REFRESHER_JOIN_S = 2.0
"""How long stopping waits for a search-figure redraw in progress before leaving it (a daemon thread)."""


# ----------------------------------------------------------------------------- host policy
def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (so nothing off this machine can connect)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:  # a host name: loopback only if it resolves to loopback addresses alone
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def resolve_host(host: str | None) -> tuple[str, str | None]:
    """The address to bind and, for an explicitly requested non-loopback one, the warning to print.

    ``None`` (the CLI default, i.e. ``--host`` not given) means loopback: the dashboard has no login
    and can delete studies, so it is reachable from the network only when someone asks for that.
    """
    if host is None or host == "":
        return LOOPBACK, None
    if is_loopback(host):
        return host, None
    return host, (f"optsearch: warning: the dashboard on {host} is reachable from the network and has no "
                  "authentication (anyone who can connect can rename or delete studies)")


# ----------------------------------------------------------------------------- storage
def _open_existing_storage(storage: str | None) -> BaseStorage:
    """Open the study's storage without creating it: a dashboard on a missing SQLite/journal file is a typo."""
    with warnings.catch_warnings():  # heartbeat options are 'experimental' in Optuna; not the dashboard user's concern
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return open_storage(storage, create=False)


def study_url(host: str, port: int, study_id: int) -> str:
    """The dashboard's page for one study (optuna-dashboard's client route ``/dashboard/studies/<id>``)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"


# ----------------------------------------------------------------------------- server
class _QuietHandler(WSGIRequestHandler):
    """No access log: the dashboard polls every few seconds and would bury the printed URL."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's keep-alive request must not block shutdown
    allow_reuse_address = True


class DashboardServer:
    """A running dashboard for one study: ``url`` to open, ``serve_forever()`` or ``start()``, ``shutdown()``.

    ``refresh_s`` is how often the search figures are checked for new finished trials (0: never
    drawn by the server; ``optsearch analyze`` still saves them).
    """

    def __init__(self, name: str, *, storage: str | None = None, host: str | None = None, port: int = 8080,
                 refresh_s: float = REFRESH_S, err: TextIO | None = None):
        from optuna_dashboard import wsgi

        self.host, self.warning = resolve_host(host)
        st = _open_existing_storage(storage)
        study = load_study(name, st, storage)
        self.study_name = name
        self.study_id = study._study_id
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {port}")
        try:
            self._httpd = make_server(self.host, port, wsgi(st), server_class=_ThreadedServer,
                                      handler_class=_QuietHandler)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.host}:{port}: {e.strerror or e}; "
                              "choose another with --port (or --host)") from None
        self.port = self._httpd.server_address[1]  # the real one when port=0 asked for a free port
        self.url = study_url(self.host, self.port, self.study_id)
        self._thread: threading.Thread | None = None
        self._study = study
        self._refresh_s = refresh_s
        self._stop = threading.Event()
        self._err = err
        self._drawn: tuple[int, ...] | None = None
        self.refreshes = 0
        self._refresher: threading.Thread | None = None

    def refresh_search_figures(self) -> bool:
        """Rebuild and save the search figures if the study's finished trials changed; True when it did."""
        from optuna.trial import TrialState

        from optsearch.analysis.evolution_figures import save_search_figures

        trials = self._study.get_trials(deepcopy=False)
        signature = tuple(sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                        TrialState.FAIL))
        if signature == self._drawn:
            return False
        save_search_figures(self._study)
        self._drawn = signature
        self.refreshes += 1
        return True

    def _refresh_loop(self) -> None:
        warned = False
        while not self._stop.is_set():
            try:
                self.refresh_search_figures()
            except Exception as e:  # a busy or odd study must never take the dashboard down
                if not warned:
                    print(f"optsearch: warning: search figures not updated: {type(e).__name__}: {e}",
                          file=self._err or sys.stderr, flush=True)
                    warned = True
            self._stop.wait(self._refresh_s)

    def _start_refresher(self) -> None:
        if self._refresh_s > 0 and self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh_loop, name="optsearch-figures", daemon=True)
            self._refresher.start()

    def serve_forever(self) -> None:
        self._start_refresher()
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> "DashboardServer":
        """Serve from a background thread (tests, notebooks)."""
        self._thread = threading.Thread(target=self.serve_forever, name="optsearch-dashboard", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            # A daemon thread, and each figure is one storage write: Ctrl-C need not wait for a redraw
            # in progress (on a busy machine the first one, which imports plotly, can take a minute).
            self._refresher.join(timeout=REFRESHER_JOIN_S)
            self._refresher = None
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "DashboardServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve(name: str, storage: str | None = None, host: str | None = None, port: int = 8080,
          *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Serve the dashboard for study ``name`` until Ctrl-C; print its URL. Returns the exit status (0).

    ``host=None`` binds loopback; an explicit non-loopback host binds there with a one-line warning.
    A missing study or storage is a :class:`StudyError`; a busy port a :class:`ConfigError`.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    server = DashboardServer(name, storage=storage, host=host, port=port, err=err)
    if server.warning:
        print(server.warning, file=err, flush=True)
    print(f"dashboard for study {name!r}: {server.url}", file=out, flush=True)
    print("press Ctrl-C to stop", file=err, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=err, flush=True)
    finally:
        server.shutdown()
    return 0

"""Shared fixtures. Real datasets come from $OPTSEARCH_DATA_DIR (CI points it at the prepared data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist each worker gets its share of the cores (2 workers × 2 threads on 2 cores spin in OpenMP).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture
def real_data_dir() -> Path:
    """The dataset folder, or skip (with the reason) when none is configured."""
    value = os.environ.get("OPTSEARCH_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("real datasets need OPTSEARCH_DATA_DIR (e.g. ../shared/data); .ci/run sets it")
    return Path(value)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL cluster on loopback (Debian's server binaries), for real multi-worker tests."""
    import glob
    import shutil
    import subprocess

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql; .ci/run does)")
    bindir = Path(bins[-1]).parent
    import tempfile

    # Not under pytest's tmp dir: that is private to root (0700) and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="optsearch-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "optsearch"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
                    "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://optsearch@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


HOLD_HOOK = '''\
"""A test's hook, loaded by the subprocesses of one test only (through PYTHONPATH; see tests/conftest.py).

A worker that reaches its first checkpoint of generation 1 (its members asked, marked and RUNNING, one
intermediate value reported) writes held-<pid> and waits there until the test writes ``release`` —
so the test kills it mid-generation every time, however fast or loaded the machine is.
"""
import os
import time
from pathlib import Path

from optsearch.search import pruning, worker

_DIR = Path(os.environ["OPTSEARCH_TEST_HOLD_DIR"])
_SPARE = os.environ.get("OPTSEARCH_TEST_HOLD_NOT_CHILDREN_OF")  # held: only workers spawned by a `study run`
_generation = [None]
_evaluate, _call = worker.Worker._evaluate, pruning.Pruning.__call__


def _evaluate_noting_generation(self, trials, genomes, generation):
    _generation[0] = generation
    return _evaluate(self, trials, genomes, generation)


def _call_then_hold(self, cp):
    prune = _call(self, cp)
    if _generation[0] != 1 or (_DIR / "release").exists():
        return prune
    if str(os.getppid()) == _SPARE:
        # The spared lead works too: left running, it could finish every generation while the spawned
        # workers are still importing torch (seen in CI), so it waits until one of them is held.
        while not any(_DIR.glob("held-*")) and not (_DIR / "release").exists():
            time.sleep(0.05)
        return prune
    (_DIR / f"held-{os.getpid()}").write_text("")
    while not (_DIR / "release").exists():
        time.sleep(0.05)
    return prune


worker.Worker._evaluate = _evaluate_noting_generation
pruning.Pruning.__call__ = _call_then_hold
'''


class Hold:
    """Stops `study run` worker processes at their first checkpoint of generation 1 until released.

    Start the processes with ``env=hold.env``; ``wait`` returns the pids that are held. Only workers
    spawned by a `study run` are held when ``spawned_only``; the parent, started by the test, then
    waits at the same point until one of them is held (else it may finish the study alone).
    """

    def __init__(self, root: Path, *, spawned_only: bool):
        self.dir = root / "hold"
        (self.dir / "hook").mkdir(parents=True)
        (self.dir / "hook" / "sitecustomize.py").write_text(HOLD_HOOK)
        path = os.pathsep.join(p for p in (str(self.dir / "hook"), os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, "OPTSEARCH_TEST_HOLD_DIR": str(self.dir)}
        if spawned_only:
            self.env["OPTSEARCH_TEST_HOLD_NOT_CHILDREN_OF"] = str(os.getpid())

    def wait(self, proc, timeout: float = 300) -> list[int]:
        """The pids held (at least one), failing if ``proc`` exits or nothing is held within ``timeout``."""
        import time

        deadline = time.time() + timeout
        while time.time() < deadline:
            held = sorted(int(p.name.split("-")[1]) for p in self.dir.glob("held-*"))
            if held:
                return held
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        pytest.fail("no worker ever reached a checkpoint of generation 1")

    def release(self) -> None:
        (self.dir / "release").write_text("")


@pytest.fixture
def hold(tmp_path):
    """``hold(spawned_only=...)`` -> :class:`Hold`; on teardown the held are released and leftover processes
    started under the hook are killed (a failed test must not leave workers running)."""
    import signal

    holds: list[Hold] = []

    def make(*, spawned_only: bool) -> Hold:
        holds.append(Hold(tmp_path / f"h{len(holds)}", spawned_only=spawned_only))
        return holds[-1]

    yield make
    for h in holds:
        h.release()
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if f"OPTSEARCH_TEST_HOLD_DIR={h.dir}\0".encode() in environ:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except OSError:
                    pass

"""Shared fixtures. Real datasets come from $OPTSEARCH_DATA_DIR (CI points it at the prepared data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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

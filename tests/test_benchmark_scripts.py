"""CPU smoke runs of the benchmark scripts CI does not otherwise run, so they cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_analysis_speed_runs_on_a_small_study():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "analysis_speed.py"), "--trials", "100"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "analysis wall time" in out.stdout and "search: one dashboard refresh" in out.stdout

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

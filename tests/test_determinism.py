"""Determinism under concurrency (issue 13, item 3): the same seed gives the same genomes, whatever the workers.

A 4-generation study on digits (population 6, 30 steps, the median pruner on and able to prune from
generation 1) is run once by one worker in this process, and once by ``study run --workers 3``
with one of the spawned workers killed by SIGKILL while it holds members, then ``study run`` again
(the resume). Every (generation, member) must hold the same genome, end in the same state, and — as a
member's training does not depend on its batch-mates — be told the same value (up to float rounding: a
batched matmul over 2 members does not round exactly as one over 6).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from optsearch.cli import main
from optsearch.search import study
from optsearch.search.sampler import MEMBER_KEY, SPACE
from optsearch.search.storage import PID_ATTR, open_storage

CONFIG = """
[search]
tasks = ["digits"]
seeds = [0]
steps = 30
population = 6
generations = 4
checkpoint_every = 10
seed = 5
device = "cpu"
objective = "aggregate"
[pruning]
pruner = "median"
warmup_checkpoints = 0
[sampler]
"""
TOLD = (TrialState.COMPLETE, TrialState.PRUNED)


def outcome(url: str, name: str) -> dict[tuple[int, int], tuple]:
    st = optuna.load_study(study_name=name, storage=open_storage(url))
    out = {}
    for g, ts in study.generations(st).items():
        for t in ts:
            if t.state in TOLD:
                key = (g, t.system_attrs[MEMBER_KEY])
                assert key not in out, f"slot {key} told twice"
                out[key] = ({n: t.params[n] for n in SPACE}, t.state, t.values)
    return out


def test_one_worker_and_three_with_a_kill_give_the_same_genomes(tmp_path, hold):
    cfg = tmp_path / "d.toml"
    cfg.write_text(CONFIG)
    url = f"journal:///{tmp_path}/d.log"  # the SQLite file's commits (fsync) cost more than the training here
    for name in ("one", "three"):
        assert main(["study", "create", name, "--config", str(cfg), "--storage", url]) == 0

    # The spawned workers are held at their first checkpoint of generation 1 (members RUNNING, a value
    # reported): one is killed there, the others released — mid-generation every time, at any speed.
    held = hold(spawned_only=True)
    parent = subprocess.Popen(
        [sys.executable, "-m", "optsearch", "study", "run", "three", "--storage", url, "--workers", "3", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=held.env)
    victim = held.wait(parent)[0]
    assert victim != parent.pid
    os.kill(victim, signal.SIGKILL)
    held.release()
    assert main(["study", "run", "one", "--storage", url, "--quiet"]) == 0  # meanwhile, one worker here
    _, err = parent.communicate(timeout=300)
    assert main(["study", "run", "three", "--storage", url, "--quiet"]) == 0  # the resume
    one, three = outcome(url, "one"), outcome(url, "three")

    assert sorted(one) == [(g, m) for g in range(4) for m in range(6)]
    assert sorted(three) == sorted(one)
    for key in one:
        assert one[key][0] == three[key][0], f"genome of (generation, member) {key} differs"
    assert {k: v[1] for k, v in one.items()} == {k: v[1] for k, v in three.items()}  # the same members pruned
    for key in one:  # the same values, up to float rounding (a batch of 2 members sums in another order than 6)
        assert (three[key][2] is None) == (one[key][2] is None), key  # PRUNED members have no value
        if one[key][2] is not None:
            assert three[key][2] == pytest.approx(one[key][2], rel=1e-6, abs=1e-9), key
    assert any(v[1] == TrialState.PRUNED for v in one.values())  # the pruner really decided something
    st = optuna.load_study(study_name="three", storage=open_storage(url))
    assert any(t.state == TrialState.FAIL and t.system_attrs.get(PID_ATTR) == victim for t in st.trials)
    workers = {t.system_attrs.get(PID_ATTR) for t in st.trials} - {None}
    # The victim and another process told trials. Not necessarily three: a spawned worker asks for every free
    # slot at once (its chunk is the population), so on a loaded machine the last one to start may find none.
    assert len(workers) >= 2, err

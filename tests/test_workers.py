"""Many workers on one study, on every storage kind, with one worker killed by SIGKILL mid-generation.

`study run --workers 3` starts two more worker processes; the test kills one of those while it holds
members of generation 1 and checks what a user relies on: the study completes, trial numbers are
unique, every member slot of every generation is told exactly once as COMPLETE/PRUNED (a killed
member is failed and evaluated again with the same genome), nothing stays RUNNING, and the best
trial is the best of the told ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from optsearch.search import study
from optsearch.cli import main
from optsearch.search.sampler import MEMBER_KEY
from optsearch.search.storage import PID_ATTR, open_storage
from optsearch.search.study import SURPLUS_ATTR
from tests.test_study import write_config

POPULATION, GENERATIONS = 6, 3
TOLD = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    if request.param == "journal":
        return f"journal:///{tmp_path}/s.log"
    return request.getfixturevalue("postgres_url")


def test_three_workers_survive_a_sigkill(storage_url, tmp_path, hold):
    name = f"w{os.getpid()}_{time.monotonic_ns()}"  # the PostgreSQL cluster is shared by the session
    # 40 steps (2 checkpoints): the spawned workers are held at their first checkpoint of generation 1, so the
    # kill lands mid-generation, on a worker with members RUNNING and a reported value, however fast the
    # training (at 300 steps a journal-backed study sometimes finished before a polling test saw a worker
    # in generation 1, and 600 steps cost 58–81 s per storage).
    cfg = write_config(tmp_path, steps=40, population=POPULATION, generations=GENERATIONS)
    assert main(["study", "create", name, "--config", str(cfg), "--storage", storage_url]) == 0
    held = hold(spawned_only=True)
    parent = subprocess.Popen(
        [sys.executable, "-m", "optsearch", "study", "run", name, "--storage", storage_url, "--workers", "3", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=held.env,
    )
    victim = held.wait(parent)[0]
    assert victim != parent.pid
    st = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    victims_trials = {t.number for t in study.generations(st)[1] if t.system_attrs.get(PID_ATTR) == victim
                      and t.state == TrialState.RUNNING and t.intermediate_values}
    os.kill(victim, signal.SIGKILL)
    held.release()
    out, err = parent.communicate(timeout=600)
    assert parent.returncode == 0, err
    assert "worker process(es) died" in err  # the user is told, but the study is complete

    st = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    trials = st.get_trials()
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert study.completed_generations(st, POPULATION) == GENERATIONS
    gens = study.generations(st)
    assert sorted(gens) == list(range(GENERATIONS))
    workers = {t.system_attrs.get(PID_ATTR) for t in trials} - {None}
    # The victim and another process told trials. Not necessarily all three: a spawned worker asks for every free
    # slot at once (its chunk is the population), so on a loaded machine the last one to start may find none.
    assert victim in workers and len(workers) >= 2
    # A trial without an owner was asked by the victim an instant before the kill, before it could mark it.
    unmarked = {t.number for t in trials if t.system_attrs.get(PID_ATTR) is None}
    assert all(st.trials[n].state == TrialState.FAIL for n in unmarked)

    for g, ts in gens.items():
        told = [t for t in ts if t.state in TOLD]
        assert sorted(t.system_attrs[MEMBER_KEY] for t in told) == list(range(POPULATION)), f"generation {g}"
        for t in ts:
            if t.state != TrialState.FAIL:
                continue
            if t.system_attrs.get(SURPLUS_ATTR):  # asked into a full generation: never trained, no genome
                assert t.params == {}
                continue
            # a retry: the killed worker's member, asked again into the same slot with the same genome
            assert g == 1 and t.number in victims_trials | unmarked | {
                u.number for u in ts if u.system_attrs.get(PID_ATTR) == victim}
            retry = [u for u in told if u.system_attrs[MEMBER_KEY] == t.system_attrs[MEMBER_KEY]]
            assert len(retry) == 1 and retry[0].number > t.number
            # the same genome: every gene the killed trial had suggested before it died
            assert {k: retry[0].params[k] for k in t.params} == t.params
    assert victims_trials and all(st.trials[n].state == TrialState.FAIL for n in victims_trials)

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert st.best_value == max(t.value for t in complete)
    assert study.best_trials(st)[0].number == st.best_trial.number


def test_plain_cuda_spreads_workers_over_the_gpus():
    assert study.worker_devices("cuda", 5, 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert study.worker_devices("cuda", 3, 1) == ["cuda"] * 3
    assert study.worker_devices("cuda:1", 2, 4) == ["cuda:1", "cuda:1"]  # an explicit GPU is kept
    assert study.worker_devices("cpu", 2, 4) == ["cpu", "cpu"]


def test_a_genome_that_crashes_the_evaluation_is_replaced_after_slot_retries(tmp_path, monkeypatch):
    """The batch holding the genome fails (reason recorded); after ``slot_retries`` resumes its slots get fresh children."""
    from optsearch.genome import BASELINES, NAMED
    from optsearch.search.sampler import REPLACED_KEY
    from optsearch.search.worker import FAIL_REASON_ATTR
    import optsearch.train.evaluate as ev

    real = ev.evaluate
    bad = NAMED[BASELINES[0]].to_params()

    def crashing(genomes, *a, **kw):
        if any(g.to_params() == bad for g in genomes):
            raise RuntimeError("this genome crashes the evaluator")
        return real(genomes, *a, **kw)

    monkeypatch.setattr(ev, "evaluate", crashing)
    cfg = write_config(tmp_path, steps=10, population=3, generations=1)
    cfg.write_text(cfg.read_text().replace("[sampler]", "[sampler]\nslot_retries = 1"))
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "create", "c", "--config", str(cfg), "--storage", url]) == 0
    for _ in range(2):  # the same genome, asked again once (slot_retries = 1), crashes twice
        with pytest.raises(RuntimeError, match="crashes"):
            study.run("c", storage=url, progress=False, device="cpu")
    study.run("c", storage=url, progress=False, device="cpu")  # then its slot holds a fresh child
    st = optuna.load_study(study_name="c", storage=url)
    failed = [t for t in st.trials if t.state == TrialState.FAIL]
    assert len(failed) == 6 and all("RuntimeError: this genome crashes" in t.user_attrs[FAIL_REASON_ATTR] for t in failed)
    told = [t for t in st.trials if t.state in TOLD]
    assert sorted(t.system_attrs[MEMBER_KEY] for t in told) == [0, 1, 2]
    assert all("failed 2 times" in t.system_attrs[REPLACED_KEY] for t in told)
    assert not any(t.params == bad for t in told)


def test_a_workers_share_is_compiled_as_the_whole_generation_would_be(tmp_path, monkeypatch):
    """Compiled and eager updates round differently, so the choice must not depend on a worker's share.

    A generation of 6 × 2,000 steps compiles (12,000 genome-steps); a worker's share of 2 members alone
    would not (4,000). Measured on the quick preset before this fix: one worker and three bred different
    genomes from generation 1 on, because the whole population compiled and the shares did not.
    """
    import optsearch.train.evaluate as ev
    from optsearch.search.storage import open_study
    from optsearch.search.worker import Worker

    calls = []

    def recording(genomes, *a, **kw):
        calls.append((len(genomes), a[2].compile_update))  # evaluate(genomes, tasks, seeds, spec, ...)
        raise KeyboardInterrupt  # nothing needs training: the decision is what is checked

    monkeypatch.setattr(ev, "evaluate", recording)
    cfg = write_config(tmp_path, steps=2000, population=6, generations=1)
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "create", "w", "--config", str(cfg), "--storage", url]) == 0
    st, config = open_study("w", url)
    assert ev.auto_compile(6, config.tasks, 1, 2000) and not ev.auto_compile(2, config.tasks, 1, 2000)
    with pytest.raises(KeyboardInterrupt):
        Worker(st, config, device="cpu", data_dir=None, stop_generation=1, chunk=2, progress=False).loop()
    assert calls == [(2, True)]

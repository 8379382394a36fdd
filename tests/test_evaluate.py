"""evaluate(): units, fair comparison, fitness bookkeeping, checkpoints and pruning, determinism."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from optsearch.errors import ConfigError
from optsearch.train.evaluate import (
    PROXY_EXAMPLES, Checkpoint, RunSpec, batch_indices, build_model, data_seed, evaluate, task_data,
)
from optsearch.genome import NAMED, Genome
from optsearch.optim import GenomeOptimizer
from optsearch.train.tasks import DIVERGENCE_LOSS, LOSS_TAIL, WORST_FITNESS, fitness, get_task

STEPS = 60
ADAM, RMSPROP, SGD = NAMED["adam"], NAMED["rmsprop"], NAMED["sgd_momentum"]


def exploding() -> Genome:
    """Adam with lr = 10 (outside the search space, so Genome's validation is bypassed)."""
    g = dataclasses.replace(ADAM)
    object.__setattr__(g, "lr_log10", 1.0)
    return g


def test_fitness_per_task_follows_tasks_fitness_and_aggregates_over_units():
    res = evaluate([ADAM, SGD], ["digits", "mnist1d"], [0, 1], RunSpec(steps=STEPS, checkpoint_every=20, device="cpu"))
    assert res.units == (("digits", 0), ("mnist1d", 0), ("digits", 1), ("mnist1d", 1))  # seed outer, task inner
    assert len(res.per_unit) == 8
    for m, member in enumerate(res.members):
        assert member.units_done == 4 and not member.pruned and not member.diverged
        for u in member.units:
            assert u.member == m
            assert u.fitness == fitness(u.accuracy, u.loss, False)
            assert [s for s, _ in u.curve] == [20, 40, 60]
            assert u.curve[-1][1] == pytest.approx(u.loss, rel=0.3)  # the last 20 steps vs the last 50
        for task in ("digits", "mnist1d"):
            rs = [u for u in member.units if u.task == task]
            assert member.per_task[task]["fitness"] == pytest.approx(sum(u.fitness for u in rs) / 2)
            assert member.per_task[task]["accuracy"] == pytest.approx(sum(u.accuracy for u in rs) / 2)
            assert member.curves[(task, 1)] == rs[1].curve
        assert member.fitness == pytest.approx(sum(u.fitness for u in member.units) / 4)
    # accuracies are counts over the 287 digits validation examples
    assert all(round(u.accuracy * 287) == pytest.approx(u.accuracy * 287) for u in res.per_unit if u.task == "digits")


def test_unit_is_a_fair_replay_of_one_genome_alone():
    """Same initial weights and data order for every member: evaluate == GenomeOptimizer replayed alone."""
    task = get_task("digits")
    res = evaluate([SGD, ADAM], ["digits"], [3], RunSpec(steps=STEPS, batch_size=32, device="cpu"))
    data = task_data(task, device=torch.device("cpu"), data_dir=None, subsample=None)
    model = build_model(task, 3, device=torch.device("cpu"), dtype=torch.float32)
    opt = GenomeOptimizer(model.parameters(), ADAM, total_steps=STEPS)
    losses = []
    for idx in batch_indices(len(data.train_x), 32, STEPS, data_seed(3, "digits")):
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        acc = (model(data.val_x).argmax(1) == data.val_y).double().mean().item()
    unit = res.members[1].units[0]
    assert unit.accuracy == pytest.approx(acc, abs=1.5 / len(data.val_y))  # at most one borderline example
    assert unit.loss == pytest.approx(sum(losses[-LOSS_TAIL:]) / LOSS_TAIL, rel=1e-5)


def test_identical_genomes_get_identical_results_and_calls_are_deterministic():
    a = evaluate([ADAM, RMSPROP, ADAM], ["digits"], [0], RunSpec(steps=30, device="cpu"))
    b = evaluate([ADAM, RMSPROP, ADAM], ["digits"], [0], RunSpec(steps=30, device="cpu"))
    assert a == b
    assert a.members[0].units[0] == dataclasses.replace(a.members[2].units[0], member=0)
    c = evaluate([ADAM], ["digits"], [1], RunSpec(steps=30, device="cpu"))
    assert c.members[0].units[0].loss != a.members[0].units[0].loss  # another seed: other init and data order


def test_checkpoints_and_pruning_through_the_callback():
    seen: list[Checkpoint] = []

    def callback(cp: Checkpoint):
        seen.append(cp)
        if cp.unit_index == 0 and cp.step == 20:
            return [1]
        return None

    res = evaluate([ADAM, SGD, RMSPROP], ["digits", "mnist1d"], [0], RunSpec(steps=STEPS, checkpoint_every=20, device="cpu"),
                   callback=callback)
    assert [(c.unit_index, c.step, c.is_unit_end) for c in seen] == [
        (0, 20, False), (0, 40, False), (0, 60, True), (1, 20, False), (1, 40, False), (1, 60, True)]
    assert seen[0].active == (0, 1, 2) and all(c.active == (0, 2) for c in seen[1:])
    first = seen[0]
    for m in (0, 1, 2):  # mid-unit proxy: accuracy on a fixed validation subset
        n = min(PROXY_EXAMPLES, 287)
        assert round(first.proxy_accuracy[m] * n) == pytest.approx(first.proxy_accuracy[m] * n)
    assert math.isnan(seen[1].proxy_fitness[1]) and math.isnan(first.mean_fitness[0])
    end0 = seen[2]
    assert end0.proxy_fitness[0] == res.members[0].units[0].fitness == end0.mean_fitness[0]
    assert seen[-1].mean_fitness[0] == pytest.approx(res.members[0].fitness)
    pruned = res.members[1]
    assert pruned.pruned and pruned.units_done == 0 and math.isnan(pruned.fitness)
    assert res.members[0].units_done == res.members[2].units_done == 2
    # the others did not notice: same results as a run without the pruned member
    alone = evaluate([ADAM, RMSPROP], ["digits", "mnist1d"], [0], RunSpec(steps=STEPS, checkpoint_every=20, device="cpu"))
    assert res.members[0].units == alone.members[0].units
    assert [dataclasses.replace(u, member=1) for u in res.members[2].units] == list(alone.members[1].units)


def test_diverging_member_is_flagged_and_the_others_are_unaffected():
    res = evaluate([ADAM, exploding(), SGD], ["digits", "mnist1d"], [0], RunSpec(steps=30, checkpoint_every=10, device="cpu"),
                   callback=lambda cp: None)
    bad = res.members[1]
    assert bad.diverged and bad.fitness == WORST_FITNESS and bad.units_done == 1  # not trained on later units
    assert bad.units[0].fitness == WORST_FITNESS and math.isnan(bad.units[0].accuracy)
    assert bad.units[0].loss <= DIVERGENCE_LOSS  # the steps it trained; the exploding loss is not one of them
    assert bad.per_task["digits"]["fitness"] == WORST_FITNESS and math.isnan(bad.per_task["mnist1d"]["fitness"])
    clean = evaluate([ADAM, SGD], ["digits", "mnist1d"], [0], RunSpec(steps=30, checkpoint_every=10, device="cpu"))
    assert res.members[0].units == clean.members[0].units  # bitwise: same floats
    assert [dataclasses.replace(u, member=1) for u in res.members[2].units] == list(clean.members[1].units)


def test_test_split_and_bad_arguments():
    res = evaluate([ADAM], ["digits"], [0], RunSpec(steps=10, split="test", device="cpu"))
    assert res.split == "test" and round(res.members[0].units[0].accuracy * 360) == pytest.approx(
        res.members[0].units[0].accuracy * 360)  # digits' fixed test split has 360 examples
    for spec in ({"split": "train"}, {"steps": 0}, {"checkpoint_every": -1}, {"device": "tpu"}, {"dtype": "int8"},
                 {"precision": "fp16"}, {"backend": "magic"}):
        with pytest.raises(ConfigError):
            evaluate([ADAM], ["digits"], [0], RunSpec(**spec))
    for seeds in ([], [1, 1]):
        with pytest.raises(ConfigError):
            evaluate([ADAM], ["digits"], seeds)
    with pytest.raises(ConfigError, match="unknown task"):
        evaluate([ADAM], ["nope"])


def test_mnist1d_smoke():
    res = evaluate([ADAM, NAMED["paper_evolved"]], ["mnist1d"], [0], RunSpec(steps=150, checkpoint_every=0, device="cpu"))
    for member in res.members:
        assert member.per_task["mnist1d"]["accuracy"] > 0.2  # chance is 0.1
        assert len(member.curves[("mnist1d", 0)]) == 1  # only the unit's end


def test_real_cnn_task_smoke(real_data_dir):
    """The looped CNN backend on MNIST for a handful of steps learns something (subsample keeps it small)."""
    res = evaluate([ADAM, SGD], ["mnist"], [0], RunSpec(steps=15, batch_size=32, subsample=512, checkpoint_every=0,
                                                       device="cpu", data_dir=str(real_data_dir)))
    assert res.members[0].per_task["mnist"]["accuracy"] > 0.3  # chance is 0.1


def test_pruning_everyone_ends_the_call_early():
    seen: list[Checkpoint] = []

    def prune_all(cp: Checkpoint):
        seen.append(cp)
        return cp.active

    res = evaluate([ADAM, SGD], ["digits", "mnist1d"], [0], RunSpec(steps=STEPS, checkpoint_every=20, device="cpu"),
                   callback=prune_all)
    assert [(c.unit_index, c.step, c.active) for c in seen] == [(0, 20, (0, 1)), (0, 60, ())]
    assert all(m.pruned and m.units_done == 0 for m in res.members) and res.per_unit == ()

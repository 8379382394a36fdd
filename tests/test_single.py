"""train_optimizer: any torch optimizer through the population's per-unit loop gives the genome's result."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from optsearch.errors import ConfigError
from optsearch.genome import NAMED
from optsearch.train.evaluate import evaluate
from optsearch.train.single import train_optimizer
from optsearch.train.spec import RunSpec
from optsearch.train.tasks import WORST_FITNESS

ADAM = NAMED["adam"]


def torch_adam(model: torch.nn.Module, total_steps: int) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=ADAM.lr, betas=(ADAM.beta1, ADAM.beta2), eps=ADAM.eps)


@pytest.mark.parametrize("backend", ["batched", "looped"])
def test_torch_adam_through_the_unit_loop_equals_the_adam_genome(backend):
    """Same unit (weights, batches, checkpoints, scoring): only the update's rounding differs (float64)."""
    spec = RunSpec(steps=30, subsample=400, device="cpu", split="val", checkpoint_every=10, dtype=torch.float64)
    genome = evaluate([ADAM], ["digits"], [3], spec.replace(backend=backend, compile_update=False)).per_unit[0]
    single = train_optimizer("digits", torch_adam, seed=3, spec=spec)
    assert (single.task, single.seed, single.member, single.unit_index) == ("digits", 3, 0, 0)
    assert not single.diverged and not genome.diverged
    assert single.accuracy == genome.accuracy
    assert single.loss == pytest.approx(genome.loss, rel=1e-10, abs=0)
    assert single.fitness == pytest.approx(genome.fitness, rel=1e-10, abs=0)
    assert [s for s, _ in single.curve] == [s for s, _ in genome.curve] == [10, 20, 30]
    for (_, a), (_, b) in zip(single.curve, genome.curve):
        assert a == pytest.approx(b, rel=1e-10, abs=0)


def test_a_diverging_optimizer_is_scored_like_a_diverging_genome():
    exploding = dataclasses.replace(ADAM)
    object.__setattr__(exploding, "lr_log10", 3.0)
    spec = RunSpec(steps=20, subsample=400, device="cpu", checkpoint_every=0)
    genome = evaluate([exploding], ["digits"], [0], spec.replace(backend="looped", compile_update=False)).per_unit[0]
    single = train_optimizer("digits", lambda m, t: torch.optim.SGD(m.parameters(), lr=1e3), seed=0, spec=spec)
    assert single.diverged and genome.diverged
    assert single.fitness == genome.fitness == WORST_FITNESS
    assert math.isnan(single.accuracy)


def test_the_caller_rng_is_left_alone_and_bad_split_is_an_error():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_optimizer("digits", torch_adam, seed=0, spec=RunSpec(steps=3, subsample=200, device="cpu"))
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ConfigError, match="split"):
        train_optimizer("digits", torch_adam, seed=0, spec=RunSpec(steps=3, split="train", device="cpu"))

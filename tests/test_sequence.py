"""The sequence family: associative recall generated offline, a causal transformer trained by the population engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from optsearch.genome import NAMED
from optsearch.optim import GenomeOptimizer
from optsearch.train.evaluate import RunSpec, batch_indices, build_model, data_seed, evaluate
from optsearch.train.population import Population
from optsearch.train.sequence import RecallSpec, TinyTransformer, recall_arrays
from optsearch.train.tasks import get_task, load_data, same_data


def test_recall_data_answer_the_query_with_its_paired_value():
    spec = RecallSpec(pairs=5, keys=12, values=7)
    x, y = recall_arrays(spec, 500, np.random.default_rng(0))
    assert x.shape == (500, 11) and y.shape == (500,) and x.dtype == np.float32 and y.dtype == np.int64
    for row, label in zip(x.astype(int), y):
        keys, vals, query = row[0:-1:2], row[1:-1:2] - spec.keys, row[-1]
        assert len(set(keys)) == spec.pairs and keys.max() < spec.keys and 0 <= vals.min() and vals.max() < spec.values
        assert query in keys and vals[list(keys).index(query)] == label
    assert len(set(y.tolist())) == spec.values  # every class occurs


def test_recall_task_is_embedded_deterministic_and_split():
    task = get_task("recall")
    assert task.embedded and task.num_classes == 10
    a, b = task.read(None), task.read(None)
    assert np.array_equal(a.x_train, b.x_train) and len(a.x_test) > 0
    data = load_data(task)
    assert len(data.val_x) == task.val_size and data.train_x.shape[1:] == (13,)
    assert same_data("recall", "recall") and not same_data("recall", "recall_large")
    assert not task.traits.conv and task.traits.flops_per_example > 13 * 2 * 64 * 64  # counted per position


def test_population_of_transformers_matches_one_model_training_in_float64():
    """The vmap engine trains each member exactly as GenomeOptimizer trains one transformer alone.

    Smooth genomes only: the key projection's bias has an exactly-zero gradient in exact arithmetic
    (softmax ignores a shift shared by all keys), so a sign term acts on rounding noise there.
    """
    task = get_task("recall")
    data = load_data(task, subsample=256)
    genomes = [NAMED["adam"], NAMED["rmsprop"], NAMED["sgd_momentum"]]
    steps, seed = 4, 3
    model = build_model(task, seed, device=torch.device("cpu"), dtype=torch.float64)
    pop = Population(genomes, model, steps)
    assert pop.backend == "vmap"
    order = batch_indices(len(data.train_x), 32, steps, data_seed(seed, task.name))
    for idx in order:
        pop.step(data.train_x[idx].double(), data.train_y[idx])
    assert pop.settle() == ()
    for i, g in enumerate(genomes):
        alone = build_model(task, seed, device=torch.device("cpu"), dtype=torch.float64)
        opt = GenomeOptimizer(alone.parameters(), g, total_steps=steps)
        for idx in order:
            loss = F.cross_entropy(alone(data.train_x[idx].double()), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        mine = pop.parameters_of(i)
        for name, p in alone.named_parameters():
            assert torch.allclose(mine[name], p.detach(), atol=1e-10, rtol=0), (g.formula(), name)


def test_recall_is_learnable_through_evaluate():
    """A short run of Adam beats chance clearly (the task is a usable proxy, not noise)."""
    adam = dataclasses.replace(NAMED["adam"], lr_log10=-2.5)
    res = evaluate([adam], ["recall"], [0], RunSpec(steps=60, subsample=2000, device="cpu", checkpoint_every=0))
    assert res.members[0].per_task["recall"]["accuracy"] > 0.2  # chance is 0.1


def test_model_reads_float_token_ids():
    m = TinyTransformer(vocab=10, length=5, classes=3, d=8, layers=1, heads=2)
    out = m(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]))
    assert out.shape == (1, 3)

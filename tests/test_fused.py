"""The fused engine (HFTA layout) trains each member exactly as the looped engine does.

Compared in float64 over a few steps (sign-bearing genomes are chaotic: a last-bit difference flips a sign, and trajectories separate over long runs), with
batch norm, two dropout layers, a member that explodes, retirement and evaluation.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from optsearch.errors import ConfigError
from optsearch.genome import NAMED
from optsearch.train import engines
from optsearch.train.fused import fused_supported, padded_size
from optsearch.train.population import Population
from optsearch.train.tasks import DIVERGENCE_LOSS, get_task

FP64_ATOL = 1e-10


def tiny_cifar_cnn() -> nn.Module:
    """cifar_cnn's layer sequence, narrow: conv-BN-ReLU ×2, pool, dropout, flatten, fc, ReLU, dropout, fc.

    The convolutions before batch norm have no bias: its gradient is pure rounding noise, which Adam and
    sign terms would amplify into differences that say nothing about the engines.
    """
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(12, 10))


def conv_start_cnn() -> nn.Module:
    """A first convolution with bias and a pooled Conv1d-free tail: the shared-input layer and no BN."""
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 4, 3, padding=1),
                         nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))


GENOMES = [NAMED["adam"], NAMED["paper_evolved"], NAMED["sgd_momentum"], NAMED["lion"], NAMED["rmsprop"]]


def exploding():
    g = dataclasses.replace(NAMED["sgd_momentum"])
    object.__setattr__(g, "lr_log10", 3.0)  # outside the search space: lr = 1000
    return g


def batches(steps: int, n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 10, (n,), generator=gen))
            for _ in range(steps)]


def pair(build, genomes, steps, **fused_kw):
    """A looped (contiguous) and a fused population from the same initial weights."""
    pops = {}
    for backend in ("looped", "fused"):
        torch.manual_seed(0)
        model = build().double()
        kw = fused_kw if backend == "fused" else {}
        pops[backend] = Population(genomes, model, steps, backend=backend, channels_last=False, **kw)
    return pops["looped"], pops["fused"]


def assert_same(looped: Population, fused: Population) -> None:
    assert looped.members == fused.members
    assert torch.equal(looped.alive, fused.alive)
    for m in looped.members:
        a, b = looped.parameters_of(m), fused.parameters_of(m)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < FP64_ATOL, m
    for n, buf in looped.buffers.items():
        assert (buf - fused.buffers[n]).abs().max().item() < FP64_ATOL, n


@pytest.mark.parametrize("build", [tiny_cifar_cnn, conv_start_cnn])
def test_fused_matches_looped_with_batchnorm_dropout_divergence_retirement_and_evaluation(build):
    genomes = [*GENOMES[:2], exploding(), *GENOMES[2:]]
    looped, fused = pair(build, genomes, 10)
    data = batches(6, n=8)
    for t, (x, y) in enumerate(data[:4]):
        a, b = looped.step(x, y, seed=100 + t), fused.step(x, y, seed=100 + t)
        ok = a <= DIVERGENCE_LOSS
        assert torch.equal(ok, b <= DIVERGENCE_LOSS) and (a[ok] - b[ok]).abs().max().item() < FP64_ATOL
        assert_same(looped, fused)
    assert not looped.alive[2] and not fused.alive[2]  # the exploding member was frozen, in both
    assert looped.settle() == fused.settle() == (2,)
    looped.retire([0])
    fused.retire([0])
    for t, (x, y) in enumerate(data[4:]):
        a, b = looped.step(x, y, seed=200 + t), fused.step(x, y, seed=200 + t)
        assert (a - b).abs().max().item() < FP64_ATOL
    assert_same(looped, fused)
    assert fused.members == [1, 3, 4, 5] and fused.diverged == [2] and fused.pruned == [0]
    # it trained (the parameters moved from the common start), and the members differ from one another
    p = fused.theta
    assert (p[0] - p[1]).abs().max() > 1e-3
    # evaluation: per-member logits with running statistics and no dropout
    x, y = data[0]
    for pop in (looped, fused):
        pop.model.eval()
    logits_l, logits_f = looped._engine.logits(x), fused._engine.logits(x)
    assert logits_f.shape == (4, 8, 10) and (logits_l - logits_f).abs().max().item() < FP64_ATOL
    for pop in (looped, fused):
        pop.model.train()
    assert looped.accuracy(x, y) == fused.accuracy(x, y)
    assert_same(looped, fused)  # evaluating touched no running statistic


def test_fused_mlp_matches_the_batched_engine():
    task = get_task("digits")
    genomes = GENOMES[:3]
    pops = []
    for backend in ("batched", "fused"):
        torch.manual_seed(0)
        pops.append(Population(genomes, task.build_model().double(), 5, backend=backend))
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(32, 64, generator=gen, dtype=torch.float64), torch.randint(0, 10, (32,), generator=gen)
        a, b = (p.step(x, y) for p in pops)
        assert (a - b).abs().max().item() < FP64_ATOL
    assert (pops[0].theta - pops[1].theta).abs().max().item() < FP64_ATOL


def test_supported_models_and_errors():
    for name in ("cifar10", "cifar10_small", "mnist", "digits_cnn", "mnist1d_cnn", "digits"):
        assert fused_supported(get_task(name).build_model()), name
    assert not fused_supported(nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="circular"), nn.Flatten()))
    assert not fused_supported(nn.Sequential(nn.LSTM(2, 2)))
    with pytest.raises(ConfigError):
        Population([NAMED["adam"]], nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect")), 5, backend="fused")
    with pytest.raises(ConfigError, match="compile_model"):
        Population([NAMED["adam"]], get_task("digits").build_model(), 5, backend="batched", compile_model=True)
    assert [padded_size(n) for n in (1, 2, 3, 4, 5, 7, 9, 13, 25, 50)] == [1, 2, 3, 4, 6, 8, 12, 16, 32, 64]


def test_cifar_cnn_in_the_fused_layout():
    """The paper's CIFAR-10 CNN runs fused, its dropout masks have one member's shapes, logits are [P, N, 10]."""
    from optsearch.train.fused import dropout_shapes

    torch.manual_seed(0)
    pop = Population(GENOMES[:2], get_task("cifar10").build_model(), 5, backend="fused")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    assert dropout_shapes(pop.model, (2, 3, 32, 32)) == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 256)]
    assert pop.step(x, y, seed=1).shape == (2,)
    pop.model.eval()
    assert pop._engine.logits(x).shape == (2, 2, 10)


INDUCTOR = os.environ.get("OPTSEARCH_INDUCTOR_TESTS") == "1"
"""Inductor's C++ code generation of this graph takes about 40 CPU-seconds on the 2-core dev machine, too
much for every run of the suite; ``aot_eager`` traces the same single graph (forward and AOTAutograd's
backward) without code generation."""


@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.skipif(
    not INDUCTOR, reason="set OPTSEARCH_INDUCTOR_TESTS=1 (about 40 CPU-seconds of compiling)"))])
def test_compiled_fused_step_is_one_graph_that_retiring_does_not_recompile(monkeypatch, compiler):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(compiler)
    monkeypatch.setattr(engines, "FUSED_COMPILE_BACKEND", counter)
    genomes = [*GENOMES, NAMED["adamw"]]
    pops = []
    for compile_model in (False, True):
        torch.manual_seed(0)
        pops.append(Population(genomes, tiny_cifar_cnn(), 10, backend="fused", compile_model=compile_model))
    eager, compiled = pops
    assert compiled._engine.leaf_list[0].shape[0] == padded_size(6) == 6
    data = [(x.float(), y) for x, y in batches(4, n=8)]
    x, y = data[0]
    a, b = eager.step(x, y, seed=0), compiled.step(x, y, seed=0)
    assert (a - b).abs().max().item() < 1e-5
    with torch.compiler.set_stance("fail_on_recompile"):  # warmed up: from here on a recompile raises
        for pop in pops:
            pop.retire([1])  # 5 members in the 6 padded rows: one dead row
        for t, (x, y) in enumerate(data[1:], start=1):
            a, b = eager.step(x, y, seed=t), compiled.step(x, y, seed=t)
            assert a.shape == b.shape == (5,) and (a - b).abs().max().item() < 1e-5
    assert counter.frame_count == 1
    assert compiled.theta.shape == (5, eager.num_params) and compiled._engine.leaf_list[0].shape[0] == 6
    assert (eager.theta - compiled.theta).abs().max().item() < 1e-5
    for n, buf in eager.buffers.items():
        assert (buf.double() - compiled.buffers[n].double()).abs().max().item() < 1e-5, n


class CopiedBytes(TorchDispatchMode):
    """Counts the bytes each copy-like op moves (the CPU stand-in for a GPU's copy kernels)."""

    OPS = (torch.ops.aten.copy_.default, torch.ops.aten.clone.default, torch.ops.aten._to_copy.default,
           torch.ops.aten._foreach_copy_.default)

    def __init__(self):
        super().__init__()
        self.copies: list[tuple[str, int, tuple[int, ...]]] = []  # (op, bytes, shape) of floating tensors

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            src = args[1] if func in (torch.ops.aten.copy_.default, torch.ops.aten._foreach_copy_.default) else args[0]
            for t in src if isinstance(src, (list, tuple)) else [src]:
                if t.is_floating_point():  # not the class labels broadcast to every member
                    self.copies.append((str(func), t.numel() * t.element_size(), tuple(t.shape)))
        return func(*args, **(kwargs or {}))


def test_a_fused_step_copies_no_convolution_activation():
    """Parameter-sized copies (stacked weights reshaped for the grouped layers, gradients into the flat buffer)
    and one copy of the flattened features' gradient (the bmm layout back into the channels layout, the
    smallest activation); no activation of a convolution, forward or backward. The batch (29) matches no
    other size. The vmap engine fails this: it copies activations at every conv↔pool boundary, both ways."""
    torch.manual_seed(0)
    pop = Population(GENOMES[:2], get_task("cifar10").build_model(), 5, backend="fused")
    x, y = torch.randn(29, 3, 32, 32), torch.randint(0, 10, (29,))
    pop.step(x, y, seed=0)
    with CopiedBytes() as mode:
        pop.step(x, y, seed=1)
    activations = [c for c in mode.copies if 29 in c[2]]
    assert [c[2] for c in activations] == [(29, 2, 64 * 8 * 8)]  # the flattened features' gradient, once
    params = sum(c[1] for c in mode.copies if 29 not in c[2])
    assert 0 < params <= 2 * pop.theta.numel() * pop.theta.element_size()

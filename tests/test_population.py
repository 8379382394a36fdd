"""The batched population trains each genome exactly as GenomeOptimizer would train it alone.

Equivalence is checked where it is meaningful: smooth genomes over 100 fp32 steps;
genomes with sign terms (chaotic: a last-bit difference flips a sign) in float64 over 10 steps.
"""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optsearch.train.evaluate import batch_indices, build_model, data_seed
from optsearch.genome import NAMED, Genome, define_search_space
from optsearch.optim import GenomeOptimizer
from optsearch.train.population import Population, choose_backend
from optsearch.train.tasks import DIVERGENCE_LOSS, Task, _read_digits, get_task, load_data

FP32_ATOL = 1e-5
"""fp32, 100 steps, Adam and SGD: the two paths differ only in matmul summation order, in rounding
1−β in fp32 rather than double, and in one fused multiply-add (measured here: 1.2e-6 and 4e-8).
Not smooth enough for fp32 and therefore compared in float64: (1) RMSProp without bias correction,
whose first step is ≈ lr/√(1−β2)·sign(g) = 0.1·sign(g), so a gradient component that cancels to
~1e-7 (fp32 relative error 2e-4 from summation order) moves its weight by 3e-6 differently at step
1 alone (1.0e-5 after 100 steps); (2) longer or busier runs, where once such a difference flips
one ReLU for one example the gradient jumps by ~1e-4 and Adam amplifies it (AdamW: 9e-3 after 100
fp32 steps, 1e-16 in float64)."""
FP64_ATOL = 1e-10
"""float64: the same differences start at 1e-16 and stay far below this over 50 steps, even
through sign terms over 10 steps (the prototype agreed to 3e-12)."""
SEED = 0


def unchecked(genome: Genome, **changes) -> Genome:
    """A genome with values outside the search space (Genome validates; tests need lr = 10)."""
    g = dataclasses.replace(genome)
    for k, v in changes.items():
        object.__setattr__(g, k, v)
    return g


def random_genomes(n: int, seed: int) -> list[Genome]:
    """Genomes drawn from the search space by a seeded random sampler (whatever they contain)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [define_search_space(study.ask()) for _ in range(n)]


@pytest.fixture(scope="module")
def digits():
    task = get_task("digits")
    return task, load_data(task)


def train_alone(task: Task, data, genome: Genome, steps: int, dtype: torch.dtype, *, dropout_seed=None,
                channels_last=False):
    """Reference: one model, one GenomeOptimizer, the evaluator's init and data order."""
    model = build_model(task, SEED, device=torch.device("cpu"), dtype=dtype)
    if channels_last:  # dropout masks follow the memory layout, so the reference must use the same one
        model = model.to(memory_format=torch.channels_last)
    opt = GenomeOptimizer(model.parameters(), genome, total_steps=steps)
    order = batch_indices(len(data.train_x), 64, steps, data_seed(SEED, task.name))
    for t, idx in enumerate(order, start=1):
        if dropout_seed is not None:
            torch.manual_seed(dropout_seed + t)
        loss = F.cross_entropy(model(data.train_x[idx].to(dtype)), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {n: p.detach() for n, p in model.named_parameters()}, model


def train_population(task: Task, data, genomes, steps: int, dtype: torch.dtype, *, backend=None, dropout_seed=None,
                     channels_last=True):
    model = build_model(task, SEED, device=torch.device("cpu"), dtype=dtype)
    pop = Population(genomes, model, steps, backend=backend, channels_last=channels_last)
    order = batch_indices(len(data.train_x), 64, steps, data_seed(SEED, task.name))
    for t, idx in enumerate(order, start=1):
        pop.step(data.train_x[idx].to(dtype), data.train_y[idx], seed=None if dropout_seed is None else dropout_seed + t)
    assert pop.settle() == ()
    return pop


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_smooth_genomes_fp32_100_steps_match_one_by_one(digits):
    task, data = digits
    genomes = [NAMED["adam"], NAMED["sgd_momentum"]]
    pop = train_population(task, data, genomes, 100, torch.float32)
    assert pop.backend == "batched"
    start = {k: v.detach() for k, v in build_model(task, SEED, device=torch.device("cpu"),
                                                    dtype=torch.float32).named_parameters()}
    for i, g in enumerate(genomes):
        alone, _ = train_alone(task, data, g, 100, torch.float32)
        assert max_diff(alone, start) > 1e-2  # it did train
        assert max_diff(pop.parameters_of(i), alone) < FP32_ATOL, g.formula()


def test_every_switch_float64_50_steps_matches_one_by_one(digits):
    task, data = digits
    adam = NAMED["adam"]
    genomes = [
        NAMED["rmsprop"],
        NAMED["adamw"],
        dataclasses.replace(adam, clip="norm", clip_threshold=0.5),
        dataclasses.replace(adam, clip="value", clip_threshold=0.01, bias_correction=False, beta1_log1m=-0.30103,
                            beta2_log1m=-1.30103, eps_log10=-5.0),  # β1 ≈ 0.5, β2 ≈ 0.95
        dataclasses.replace(adam, weight_decay=True, wd_log10=-1.5, warmup=True, warmup_frac=0.1, cosine_decay=True),
        dataclasses.replace(adam, terms=("adam", "momentum", "rms_norm", "nesterov"), alphas=(1.0, 0.5, 0.3, 0.2)),
    ]
    pop = train_population(task, data, genomes, 50, torch.float64)
    for i, g in enumerate(genomes):
        alone, _ = train_alone(task, data, g, 50, torch.float64)
        assert max_diff(pop.parameters_of(i), alone) < FP64_ATOL, g.formula()


def test_sign_genomes_float64_10_steps_match_one_by_one(digits):
    task, data = digits
    clip_value = dataclasses.replace(NAMED["paper_evolved"], clip="value", clip_threshold=0.05)
    signed = [g for g in random_genomes(60, seed=7) if {"sign_grad", "unit_grad"} & set(g.terms) and g.lr < 3e-3][:3]
    assert len(signed) == 3  # random genomes with sign terms, whatever else they contain
    genomes = [NAMED["paper_evolved"], NAMED["lion"], clip_value, *signed]
    pop = train_population(task, data, genomes, 10, torch.float64)
    for i, g in enumerate(genomes):
        alone, _ = train_alone(task, data, g, 10, torch.float64)
        assert max_diff(pop.parameters_of(i), alone) < FP64_ATOL, g.formula()


class _TinyCNN(nn.Sequential):
    def __init__(self):
        # no conv bias before BatchNorm: its gradient is pure rounding noise, which Adam would amplify
        super().__init__(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                         nn.ReLU(), nn.Dropout(0.25), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


TINY_CNN = Task(name="tiny_cnn_digits", build_model=_TinyCNN, read=_read_digits, steps=5, batch_size=64,
                val_size=287, embedded=True, input_shape=(64,))


@pytest.mark.parametrize("backend, channels_last", [("looped", True), ("looped", False), ("vmap", True),
                                                    ("vmap", False)])
def test_cnn_backends_match_one_by_one_with_batchnorm_and_dropout(backend, channels_last):
    data = load_data(TINY_CNN)
    genomes = [NAMED["adam"], NAMED["paper_evolved"], NAMED["sgd_momentum"]]
    pop = train_population(TINY_CNN, data, genomes, 5, torch.float64, backend=backend, dropout_seed=123,
                           channels_last=channels_last)
    # only the looped engine runs channels-last (under vmap it gained nothing on an H200 and raised with batch norm)
    assert pop.channels_last == (channels_last and backend == "looped")
    for i, g in enumerate(genomes):
        alone, model = train_alone(TINY_CNN, data, g, 5, torch.float64, dropout_seed=123,
                                   channels_last=pop.channels_last)
        assert max_diff(pop.parameters_of(i), alone) < FP64_ATOL, (backend, g.formula())
        # per-member BatchNorm running statistics follow the member's own forward passes
        running = pop.buffers["2.running_mean"][pop.members.index(i)]
        assert torch.allclose(running, model[2].running_mean, atol=FP64_ATOL, rtol=0)
    # evaluation uses each member's own running stats (eval mode): accuracies differ across genomes
    acc = pop.accuracy(data.val_x.double(), data.val_y)
    assert len(set(acc.values())) > 1


def _dropout_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.Tanh(),
                         nn.Dropout(0.3), nn.Linear(32, 10))


DROPOUT_MLP = dataclasses.replace(TINY_CNN, name="dropout_mlp_digits", build_model=_dropout_mlp)


def test_batched_mlp_with_dropout_matches_one_by_one():
    """The batched engine draws the masks a member's own nn.Dropout layers would (one per layer, in order)."""
    data = load_data(DROPOUT_MLP)
    genomes = [NAMED["adam"], NAMED["rmsprop"]]
    pop = train_population(DROPOUT_MLP, data, genomes, 5, torch.float64, dropout_seed=7)
    assert pop.backend == "batched"
    for i, g in enumerate(genomes):
        alone, _ = train_alone(DROPOUT_MLP, data, g, 5, torch.float64, dropout_seed=7)
        assert max_diff(pop.parameters_of(i), alone) < FP64_ATOL, g.formula()


def test_backend_choice():
    assert choose_backend(get_task("digits").build_model(), "cpu") == "batched"
    assert choose_backend(get_task("digits").build_model(), "cuda") == "batched"
    assert choose_backend(_TinyCNN(), "cpu") == "looped"
    assert choose_backend(_TinyCNN(), "cuda") == "vmap"


def healthy_runs(task, data, genomes, bad_index, steps, **kw):
    """Train with and without member ``bad_index``; return both populations."""
    with_bad = train_population_allowing_divergence(task, data, genomes, steps, **kw)
    without = train_population_allowing_divergence(
        task, data, [g for i, g in enumerate(genomes) if i != bad_index], steps,
        members=[i for i in range(len(genomes)) if i != bad_index], **kw)
    return with_bad, without


def train_population_allowing_divergence(task, data, genomes, steps, members=None, backend=None,
                                         compile_update=False):
    """Steps without settling (the evaluator settles only at checkpoints); ``pop.losses``: [steps, P] losses."""
    model = build_model(task, SEED, device=torch.device("cpu"), dtype=torch.float32)
    pop = Population(genomes, model, steps, members=members, backend=backend, compile_update=compile_update)
    order = batch_indices(len(data.train_x), 64, steps, data_seed(SEED, task.name))
    pop.losses = torch.stack([pop.step(data.train_x[idx], data.train_y[idx]) for idx in order])
    return pop


@pytest.mark.parametrize("backend, compile_update", [("batched", False), ("looped", False), ("batched", True)])
def test_exploding_member_is_frozen_and_the_others_are_bitwise_unaffected(digits, backend, compile_update):
    task, data = digits
    genomes = [NAMED["adam"], NAMED["paper_evolved"], unchecked(NAMED["adam"], lr_log10=1.0), *random_genomes(2, 3)]
    with_bad, without = healthy_runs(task, data, genomes, 2, 30, backend=backend, compile_update=compile_update)
    bad_steps = [t for t in range(30) if not with_bad.losses[t, 2] <= DIVERGENCE_LOSS]
    assert bad_steps and all(bool((with_bad.losses[:, i] <= DIVERGENCE_LOSS).all()) for i in (0, 1, 3, 4))
    step = bad_steps[0]
    # frozen on the device before the update of the step where its loss exploded (the shape stayed fixed)...
    assert with_bad.members == [0, 1, 2, 3, 4] and with_bad.alive.view(-1).tolist() == [True, True, False, True, True]
    before = train_population_allowing_divergence(task, data, genomes, step, backend=backend,
                                                  compile_update=compile_update)  # stopped before that step
    frozen = with_bad.parameters_of(2)
    assert all(torch.isfinite(t).all() for t in frozen.values())
    assert all(torch.equal(frozen[k], v) for k, v in before.parameters_of(2).items())
    # ... and retired at the checkpoint, without touching the others
    assert with_bad.settle() == (2,) and without.settle() == ()
    assert with_bad.diverged == [2] and 2 not in with_bad.active
    assert all(torch.equal(frozen[k], v) for k, v in with_bad.parameters_of(2).items())
    for i in (0, 1, 3, 4):
        a, b = with_bad.parameters_of(i), without.parameters_of(i)
        assert all(torch.equal(a[k], b[k]) for k in a), i


def test_nan_member_is_frozen_before_its_update(digits):
    task, data = digits
    genomes = [NAMED["adam"], NAMED["rmsprop"], NAMED["lion"]]
    model = build_model(task, SEED, device=torch.device("cpu"), dtype=torch.float32)
    pop = Population(genomes, model, 10)
    clean = Population(genomes, model, 10)
    pop.theta[1, :5] = float("nan")
    x, y = data.train_x[:64], data.train_y[:64]
    losses = pop.step(x, y)
    clean.step(x, y)
    assert torch.isnan(losses[1]) and pop.settle() == (1,) and pop.diverged == [1] and pop.active == (0, 2)
    assert torch.isnan(pop.parameters_of(1)["1.weight"]).sum() == 5  # frozen, not stepped
    for i in (0, 2):
        a, b = pop.parameters_of(i), clean.parameters_of(i)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_pruned_member_stops_updating(digits):
    task, data = digits
    genomes = [NAMED["adam"], NAMED["rmsprop"], NAMED["sgd_momentum"]]
    model = build_model(task, SEED, device=torch.device("cpu"), dtype=torch.float32)
    pop = Population(genomes, model, 20)
    reference = Population([genomes[0], genomes[2]], model, 20, members=[0, 2])
    order = batch_indices(len(data.train_x), 64, 20, data_seed(SEED, task.name))
    for t, idx in enumerate(order):
        if t == 5:
            pop.retire([1])
            at_prune = pop.parameters_of(1)
            assert pop.pruned == [1] and pop.active == (0, 2)
        losses = pop.step(data.train_x[idx], data.train_y[idx])
        reference.step(data.train_x[idx], data.train_y[idx])
        if t >= 5:
            assert 1 not in pop.members and len(losses) == 2  # costs no compute
    assert all(torch.equal(at_prune[k], v) for k, v in pop.parameters_of(1).items())
    for i in (0, 2):  # the others never noticed (rows 0..4 were trained with member 1 present)
        a, b = pop.parameters_of(i), reference.parameters_of(i)
        assert max_diff(a, b) == 0.0


def test_compiled_update_matches_eager(digits):
    """The optional compiled update agrees with eager (Inductor may fuse into FMAs: fp32 tolerance)."""
    pytest.importorskip("torch._inductor")
    task, data = digits
    genomes = [NAMED["adam"], dataclasses.replace(NAMED["rmsprop"], clip="norm", clip_threshold=0.1),
               dataclasses.replace(NAMED["adamw"], clip="value", clip_threshold=0.01)]
    model = build_model(task, SEED, device=torch.device("cpu"), dtype=torch.float32)
    eager = Population(genomes, model, 20)
    compiled = Population(genomes, model, 20, compile_update=True)
    for idx in batch_indices(len(data.train_x), 64, 20, data_seed(SEED, task.name)):
        eager.step(data.train_x[idx], data.train_y[idx])
        compiled.step(data.train_x[idx], data.train_y[idx])
    for i in range(3):
        assert max_diff(eager.parameters_of(i), compiled.parameters_of(i)) < FP32_ATOL


def break_the_compiler(monkeypatch) -> None:
    """Make compiling the update fail as it does on a machine without a C++ compiler."""
    import optsearch.train.update as update

    def broken():
        def fail(*args):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(update, "_compiled_apply", broken)
    monkeypatch.setattr(update, "_COMPILE_FAILED", False)


def test_compile_failure_falls_back_to_the_eager_update(digits, monkeypatch):
    break_the_compiler(monkeypatch)
    task, data = digits
    model = build_model(task, SEED, device=torch.device("cpu"), dtype=torch.float32)
    eager = Population([NAMED["adam"], NAMED["lion"]], model, 5)
    fallback = Population([NAMED["adam"], NAMED["lion"]], model, 5, compile_update=True)
    x, y = data.train_x[:64], data.train_y[:64]
    eager.step(x, y)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler.*runs eagerly"):
        fallback.step(x, y)
    fallback.step(x, y)  # no second warning: the fallback is remembered, and counted
    eager.step(x, y)
    assert all(torch.equal(eager.theta[i], fallback.theta[i]) for i in range(2))
    assert fallback.update.eager_fallbacks == 2 and eager.update.eager_fallbacks == 0

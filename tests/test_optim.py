"""GenomeOptimizer: equivalence with torch.optim, both code paths, state_dict, schedule, NaN handling."""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optsearch import Genome, GenomeOptimizer
from optsearch.errors import GenomeError
from optsearch.genome import NAMED, define_search_space
from optsearch.genome.primitives import NONE, PRIMITIVES

# fp32: the genome runs the same math as torch in a slightly different operation order (e.g. m̂/(√v̂+ε)
# vs torch's addcdiv with lr/bc1), so each step may differ by a few ulps. Over these 200 steps the largest
# difference measured was 1.2e-7 (Adam), 2.4e-7 (AdamW), 1.8e-7 (SGD), 2.0e-6 (RMSprop, whose g/√v
# amplifies ulps while v is small), 0 (Lion). 1e-5 abs + 1e-4 rel leaves headroom for other CPUs and
# still catches a real difference (e.g. not pre-seeding SGD's buffer moves parameters by 5.6e-2).
ATOL, RTOL = 1e-5, 1e-4
STEPS = 200


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def _data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, 8, generator=gen, dtype=dtype), torch.randint(0, 3, (32,), generator=gen)


def _trajectory(model: nn.Module, opt: torch.optim.Optimizer, steps: int, sched=None) -> list[list[torch.Tensor]]:
    """Parameters after every step of full-batch training on the fixed data."""
    x, y = _data(next(model.parameters()).dtype)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


def _assert_same_trajectory(a, b, atol: float, rtol: float) -> None:
    for t, (pa, pb) in enumerate(zip(a, b, strict=True)):
        for x, y in zip(pa, pb, strict=True):
            torch.testing.assert_close(x, y, atol=atol, rtol=rtol, msg=lambda m: f"step {t + 1}: {m}")


def _torch_reference(name: str, params) -> torch.optim.Optimizer:
    g = Genome.named(name)
    if name == "adam":
        return torch.optim.Adam(params, lr=g.lr, betas=(g.beta1, g.beta2), eps=g.eps)
    if name == "adamw":
        assert g.wd == pytest.approx(0.01)
        return torch.optim.AdamW(params, lr=g.lr, betas=(g.beta1, g.beta2), eps=g.eps, weight_decay=g.wd)
    if name == "rmsprop":
        assert (g.beta2, g.eps) == (0.99, pytest.approx(1e-8))
        return torch.optim.RMSprop(params, lr=g.lr, alpha=g.beta2, eps=g.eps)
    assert name == "sgd_momentum" and g.beta1 == pytest.approx(0.9)
    return _torch_sgd_for(g, params)


def _torch_sgd_for(g: Genome, params) -> torch.optim.Optimizer:
    """torch's SGD that runs the sgd_momentum genome: the genome's m is an EMA from zero,
    m_t = (1−μ)·Σ_s μ^(t−s)·g_s; torch's buffer (dampening 0) is Σ_s μ^(t−s)·g_s from buf_1 = g_1, i.e.
    m_t/(1−μ) at every step, so lr·m_t is torch's step at lr·(1−μ)."""
    return torch.optim.SGD(params, lr=g.lr * (1 - g.beta1), momentum=g.beta1)


def test_sgd_momentum_is_torch_sgd_with_scaled_lr_not_dampening():
    # The mapping once documented, SGD(momentum=μ, dampening=μ), starts its buffer at g_1 (no dampening on the
    # first step), so it weighs g_1 by μ^(t−1) where the genome weighs it by (1−μ)·μ^(t−1): off from step 1.
    g = Genome.named("sgd_momentum")
    ours, exact, damped = _mlp(torch.float64), _mlp(torch.float64), _mlp(torch.float64)
    a = _trajectory(ours, GenomeOptimizer(ours.parameters(), g), 30)
    b = _trajectory(exact, _torch_sgd_for(g, exact.parameters()), 30)
    c = _trajectory(damped, torch.optim.SGD(damped.parameters(), lr=g.lr, momentum=g.beta1, dampening=g.beta1), 30)
    _assert_same_trajectory(a, b, atol=1e-12, rtol=1e-10)
    assert max((p - q).abs().max().item() for p, q in zip(a[0], c[0])) > 1e-3


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "sgd_momentum"])
def test_named_genome_follows_torch_optimizer(name, foreach):
    ours, ref = _mlp(), _mlp()
    a = _trajectory(ours, GenomeOptimizer(ours.parameters(), Genome.named(name), foreach=foreach), STEPS)
    b = _trajectory(ref, _torch_reference(name, ref.parameters()), STEPS)
    _assert_same_trajectory(a, b, ATOL, RTOL)
    moved = max((p - q).abs().max().item() for p, q in zip(a[-1], _mlp().parameters()))
    assert moved > 1e-2  # the comparison is of a real trajectory, not of two idle models


def _reference_lion(params, lr: float, beta1: float, beta2: float, wd: float):
    """Lion (Chen et al. 2023), written out.

    c = β1·m + (1−β1)·g;  θ ← θ(1−lr·wd) − lr·sign(c);  m ← β2·m + (1−β2)·g.
    """
    params = list(params)
    ms = [torch.zeros_like(p) for p in params]

    class Lion:
        def zero_grad(self):
            for p in params:
                p.grad = None

        @torch.no_grad()
        def step(self):
            for p, m in zip(params, ms):
                c = m * beta1 + p.grad * (1 - beta1)
                p.mul_(1 - lr * wd)
                p.add_(c.sign() * -lr)
                m.mul_(beta2).add_(p.grad * (1 - beta2))

    return Lion()


@pytest.mark.parametrize("foreach", [True, False])
def test_lion_follows_reference(foreach):
    g = Genome.named("lion")
    ours, ref = _mlp(), _mlp()
    a = _trajectory(ours, GenomeOptimizer(ours.parameters(), g, foreach=foreach), STEPS)
    b = _trajectory(ref, _reference_lion(ref.parameters(), g.lr, g.beta1, g.beta2, g.wd), STEPS)
    _assert_same_trajectory(a, b, ATOL, RTOL)
    moved = max((p - q).abs().max().item() for p, q in zip(a[-1], _mlp().parameters()))
    assert moved > 5e-3


def test_param_groups_follow_torch_adam():
    ours, ref = _mlp(), _mlp()
    groups = lambda m: [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 3e-3}]  # noqa: E731
    a = _trajectory(ours, GenomeOptimizer(groups(ours), Genome.named("adam")), 50)
    b = _trajectory(ref, torch.optim.Adam(groups(ref), lr=1e-3), 50)
    _assert_same_trajectory(a, b, ATOL, RTOL)


def _random_genomes(n: int) -> list[Genome]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    return [define_search_space(study.ask()) for _ in range(n)]


@pytest.mark.parametrize("genome", [NAMED["paper_evolved"], *_random_genomes(3)], ids=lambda g: g.formula()[:40])
def test_foreach_equals_loop(genome):
    # On CPU the for-each kernels run the same per-tensor kernels in the same order, so the two paths
    # agree bitwise; the tolerance only allows for backends whose fused kernels round differently.
    a_model, b_model = _mlp(), _mlp()
    a = _trajectory(a_model, GenomeOptimizer(a_model.parameters(), genome, 50, foreach=True), 50)
    b = _trajectory(b_model, GenomeOptimizer(b_model.parameters(), genome, 50, foreach=False), 50)
    _assert_same_trajectory(a, b, atol=1e-7, rtol=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(a[-1], _mlp().parameters()))


EVERYTHING = Genome(
    terms=("adam", "lion", "nesterov", "rms_norm"),
    alphas=(1.0, 0.5, 0.5, 0.2),
    lr_log10=-2.5,
    weight_decay=True,
    wd_log10=-2.0,
    clip="norm",
    clip_threshold=0.5,
    warmup=True,
    warmup_frac=0.1,
    cosine_decay=True,
)
"""A genome that uses every state buffer, weight decay, clipping and both schedule parts."""


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_roundtrip_resumes_exact_trajectory(foreach):
    straight = _mlp()
    full = _trajectory(straight, GenomeOptimizer(straight.parameters(), EVERYTHING, 40, foreach=foreach), 40)

    first = _mlp()
    opt = GenomeOptimizer(first.parameters(), EVERYTHING, 40, foreach=foreach)
    _trajectory(first, opt, 20)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    assert set(saved["opt"]["state"][0]) == {"step", "m", "v", "mu"}
    assert saved["opt"]["state"][0]["step"].item() == 20

    resumed = _mlp()
    resumed.load_state_dict(saved["model"])
    opt2 = GenomeOptimizer(resumed.parameters(), EVERYTHING, 40, foreach=foreach)
    opt2.load_state_dict(saved["opt"])
    rest = _trajectory(resumed, opt2, 20)
    for p, q in zip(rest[-1], full[-1]):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "terms, buffers",
    [(("adam",), {"step", "m", "v"}), (("sign_grad", "grad"), {"step"}), (("lion",), {"step", "mu"}),
     (("rms_norm", "momentum"), {"step", "m", "v"})],
)
def test_state_holds_only_needed_buffers(terms, buffers):
    g = Genome(terms=(*terms, *[NONE] * (4 - len(terms))), alphas=(1.0,) * len(terms) + (0.0,) * (4 - len(terms)))
    model = _mlp()
    opt = GenomeOptimizer(model.parameters(), g)
    _trajectory(model, opt, 1)
    assert all(set(s) == buffers for s in opt.state_dict()["state"].values())


ZERO_GRAD_GENOMES = {
    **{f"named:{n}": dataclasses.replace(g, weight_decay=False) for n, g in NAMED.items()},
    **{f"term:{t}": Genome.single(t) for t in PRIMITIVES},
}


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("genome", ZERO_GRAD_GENOMES.values(), ids=ZERO_GRAD_GENOMES.keys())
def test_zero_gradients_without_weight_decay_leave_parameters_unchanged(genome, foreach):
    # Every primitive is 0 at g = 0 with zero moments: sign(0) = 0, and unit_grad g/(|g|+ε) and
    # rms_norm g/(√v+ε) are 0/ε = 0 (ε > 0 keeps them finite).
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = GenomeOptimizer(model.parameters(), genome, 10, foreach=foreach)
    for _ in range(5):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert opt.state[next(model.parameters())]["step"].item() == 5


def test_weight_decay_is_decoupled_and_scaled_by_lr():
    g = Genome(terms=("grad", NONE, NONE, NONE), alphas=(1.0, 0.0, 0.0, 0.0), lr_log10=-1.0,
               weight_decay=True, wd_log10=-1.0)
    p = nn.Parameter(torch.tensor([2.0, -4.0]))
    opt = GenomeOptimizer([p], g)
    p.grad = torch.tensor([1.0, 0.5])
    opt.step()
    # AdamW order: θ ← θ·(1 − η·λ), then θ ← θ − η·g
    torch.testing.assert_close(p.detach(), torch.tensor([2.0 * 0.99 - 0.1, -4.0 * 0.99 - 0.05]))


def test_value_clipping_clamps_each_element():
    g = Genome(terms=("grad", NONE, NONE, NONE), alphas=(1.0, 0.0, 0.0, 0.0), lr_log10=-1.0, clip="value",
               clip_threshold=0.5)
    p = nn.Parameter(torch.zeros(3))
    opt = GenomeOptimizer([p], g)
    p.grad = torch.tensor([2.0, -0.2, -3.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.05, 0.02, 0.05]))
    assert torch.equal(p.grad, torch.tensor([2.0, -0.2, -3.0]))  # the user's gradient is not modified


@pytest.mark.parametrize("foreach", [True, False])
def test_norm_clipping_matches_clip_grad_norm(foreach):
    g = Genome(terms=("grad", NONE, NONE, NONE), alphas=(1.0, 0.0, 0.0, 0.0), lr_log10=-1.0, clip="norm",
               clip_threshold=0.25)
    ours, ref = _mlp(), _mlp()
    opt = GenomeOptimizer([{"params": ours[0].parameters()}, {"params": ours[2].parameters()}], g, foreach=foreach)
    a = _trajectory(ours, opt, 30)
    x, y = _data()
    sgd = torch.optim.SGD(ref.parameters(), lr=g.lr)
    active = []
    for t in range(30):
        sgd.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.25)  # across both groups, like ours
        active.append(bool(norm > 0.25))
        sgd.step()
        for p, q in zip(a[t], ref.parameters()):
            torch.testing.assert_close(p, q.detach(), atol=ATOL, rtol=RTOL)
    assert any(active) and not all(active)  # the gradient norm (≈0.31 → 0.22) crosses c: both regimes ran


def test_schedule_composes_with_lambda_lr():
    # Δθ = −η_t·g with g ≡ 1, so each step reveals η_t = base_lr · LambdaLR factor · warmup · cosine.
    T, base = 20, 1e-2
    g = Genome(terms=("grad", NONE, NONE, NONE), alphas=(1.0, 0.0, 0.0, 0.0), lr_log10=-2.0, warmup=True,
               warmup_frac=0.2, cosine_decay=True)
    p = nn.Parameter(torch.zeros((), dtype=torch.float64))
    opt = GenomeOptimizer([p], g, total_steps=T)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.9**epoch)
    seen = []
    for _ in range(T + 2):
        before = p.item()
        p.grad = torch.ones((), dtype=torch.float64)
        opt.step()
        sched.step()
        seen.append(before - p.item())
    W = 4  # round(0.2 · 20)
    expected = []
    for t in range(1, T + 3):
        warm = min(1.0, t / W)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (t - W) / (T - W)))) if t > W else 1.0
        expected.append(base * 0.9 ** (t - 1) * warm * cos)
    assert seen == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert seen[W - 1] == pytest.approx(base * 0.9 ** (W - 1))  # end of warmup: full lr
    assert seen[T - 1] == pytest.approx(0.0, abs=1e-15) and seen[T + 1] == 0.0  # decayed to 0, stays there


@pytest.mark.parametrize("field", ["warmup", "cosine_decay"])
def test_schedule_without_total_steps_is_a_clear_error(field):
    g = dataclasses.replace(Genome.named("adam"), **{field: True})
    with pytest.raises(GenomeError, match="total_steps"):
        GenomeOptimizer(_mlp().parameters(), g)
    with pytest.raises(GenomeError, match="positive integer"):
        GenomeOptimizer(_mlp().parameters(), g, total_steps=0)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_skips_the_whole_step(bad, foreach):
    model, clean = _mlp(), _mlp()
    opt = GenomeOptimizer(model.parameters(), EVERYTHING, 20, foreach=foreach)
    clean_opt = GenomeOptimizer(clean.parameters(), EVERYTHING, 20, foreach=foreach)
    _trajectory(model, opt, 3)
    _trajectory(clean, clean_opt, 3)

    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(opt.state_dict())
    x, y = _data()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    model[2].bias.grad[1] = bad  # one poisoned element in one tensor
    opt.step()
    assert opt.nonfinite_steps == 1
    for p, q in zip(model.parameters(), params_before):
        assert torch.equal(p, q)
    for i, st in state_before["state"].items():
        for k, v in st.items():
            assert torch.equal(opt.state_dict()["state"][i][k], v), (i, k)

    # Training goes on as if the bad step never happened.
    a = _trajectory(model, opt, 5)
    b = _trajectory(clean, clean_opt, 5)
    for p, q in zip(a[-1], b[-1]):
        assert torch.equal(p, q)
    assert opt.nonfinite_steps == 1


def test_nonfinite_gradient_propagates_when_not_skipping():
    model = _mlp()
    opt = GenomeOptimizer(model.parameters(), Genome.named("adam"), skip_nonfinite=False)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[0].weight.grad[0, 0] = float("nan")
    opt.step()
    assert opt.nonfinite_steps == 0
    assert torch.isnan(model[0].weight[0, 0])


def test_params_without_grad_are_left_alone_and_public_api():
    import optsearch

    assert optsearch.GenomeOptimizer is GenomeOptimizer
    model = _mlp()
    opt = GenomeOptimizer(model.parameters(), Genome.named("adam"))
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    frozen = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    _trajectory(model, opt, 2)
    assert torch.equal(model[0].weight, frozen) and model[0].weight not in opt.state
    with pytest.raises(TypeError):
        GenomeOptimizer(model.parameters(), "adam")  # type: ignore[arg-type]

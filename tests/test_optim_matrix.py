"""GenomeOptimizer's generic contract, in the spirit of torch's OptimizerInfo tests.

Every named genome (and one per sign term) × {foreach, loop} × {maximize} × {complex} × {closure} ×
{LR scheduler} × {state_dict round trip}: each variant must follow the plain run (real parameters,
the loop path, minimising, ``step()`` after an explicit backward, no interruption) under the same
scheduler. Float64, tiny tensors, a few steps: sign terms are chaotic, so the horizon is short and
the tolerance tight (a last-bit difference flips a sign and separates long trajectories). Then the features torch's own optimizers have: ``foreach=None`` by
device, ``capturable`` (no host read), ``differentiable``, complex parameters as ``torch.optim.Adam``,
per-group hyperparameters, the genome in ``state_dict``.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from optsearch import Genome, GenomeOptimizer
from optsearch.errors import GenomeError
from optsearch.genome import NAMED

GENOMES = {
    **NAMED,
    "add_sign": Genome.single("add_sign", lr_log10=-2.0, clip="value", clip_threshold=0.5),
    "power_sign": dataclasses.replace(NAMED["adamw"], sign_term="power_sign", sign_alpha=0.5, clip="norm",
                                      warmup=True, warmup_frac=0.2, cosine_decay=True),
}
STEPS = 6
ROUND_TRIP_AT = 3
ATOL = 1e-12

_A = torch.randn(4, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _start() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(5, 2, dtype=torch.float64, generator=gen), torch.randn(3, 2, dtype=torch.float64, generator=gen)]


def _loss(reals: list[torch.Tensor]) -> torch.Tensor:
    """A smooth non-quadratic objective of the real views (so complex and real runs see the same gradients)."""
    w, b = reals
    return ((torch.einsum("ijk,jk->i", _A, w) - 1.0) ** 2).sum() + (b**4).sum() + (w * b[:1]).sum()


def run(genome: Genome, *, foreach=False, maximize=False, complex_=False, closure=False, scheduler=False,
        round_trip=False) -> list[torch.Tensor]:
    """The parameters' real views after STEPS steps of one configuration."""
    params = [torch.view_as_complex(x.clone()).requires_grad_() if complex_ else x.clone().requires_grad_()
              for x in _start()]

    def reals() -> list[torch.Tensor]:
        return [torch.view_as_real(p) if complex_ else p for p in params]

    def objective() -> torch.Tensor:
        loss = _loss(reals())
        return -loss if maximize else loss

    def make() -> tuple[GenomeOptimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        opt = GenomeOptimizer(params, genome, total_steps=STEPS, foreach=foreach, maximize=maximize)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if scheduler else None
        return opt, sched

    opt, sched = make()
    for t in range(STEPS):
        if round_trip and t == ROUND_TRIP_AT:
            saved = copy.deepcopy((opt.state_dict(), sched.state_dict() if sched else None))
            opt, sched = make()
            opt.load_state_dict(saved[0])
            if sched:
                sched.load_state_dict(saved[1])
        if closure:
            def fn() -> torch.Tensor:
                opt.zero_grad()
                loss = objective()
                loss.backward()
                return loss

            assert torch.is_tensor(opt.step(fn))
        else:
            opt.zero_grad()
            objective().backward()
            opt.step()
        if sched:
            sched.step()
    return [r.detach().clone() for r in reals()]


FLAGS = ("foreach", "maximize", "complex_", "closure", "round_trip", "scheduler")
VARIANTS = [tuple(i == j for j in range(len(FLAGS))) for i in range(len(FLAGS))] + [(True,) * len(FLAGS)]
"""Each feature alone (a failure names its feature) and all together. With the all-off run as the reference these
cover every pair of features in every combination of on/off (for i, j: both on in the last row, i alone on in row i,
both off in a third feature's row), the interactions a full 2^6 product would test, in 7 runs instead of 64."""


@pytest.mark.parametrize("flags", VARIANTS, ids=lambda f: "-".join(n.rstrip("_") for n, on in zip(FLAGS, f) if on))
@pytest.mark.parametrize("name", GENOMES)
def test_variant_follows_the_plain_run(name, flags, plain_cache={}):  # noqa: B006 (a cache)
    *flags, scheduler = flags
    genome = GENOMES[name]
    key = (name, scheduler)
    if key not in plain_cache:
        plain_cache[key] = run(genome, scheduler=scheduler)
    plain = plain_cache[key]
    start = _start()
    assert max((p - s).abs().max().item() for p, s in zip(plain, start)) > 1e-4  # the plain run moved
    got = run(genome, scheduler=scheduler, **dict(zip(FLAGS[:-1], flags)))
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_scheduler_and_maximize_change_the_run():
    """The matrix compares like with like; these show both dimensions do something."""
    g = GENOMES["adam"]
    plain = run(g)
    assert not torch.allclose(run(g, scheduler=True)[0], plain[0], atol=1e-9)
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = GenomeOptimizer([p], NAMED["sgd_momentum"], maximize=True)
    (-(p - 1.0) ** 2).sum().backward()  # a maximum at 1
    grad = p.grad.clone()
    opt.step()
    assert (p > 0).all() and torch.equal(p.grad, grad)  # it climbed, and p.grad was not negated in place


# ----------------------------------------------------------------------------- torch's features
def test_foreach_none_is_chosen_by_device_as_torch_does(monkeypatch):
    import optsearch.optim as optim

    seen = []
    real = optim._default_to_fused_or_foreach

    def spy(params, differentiable, use_fused=False):
        out = real(params, differentiable, use_fused=use_fused)
        seen.append(out[1])
        return out

    monkeypatch.setattr(optim, "_default_to_fused_or_foreach", spy)
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.ones(3)
    GenomeOptimizer([p], NAMED["adam"]).step()
    assert seen == [False]  # CPU: torch picks the loop
    meta = torch.zeros(3, device="meta")
    assert real([meta], False)[1] is False
    if torch.cuda.is_available():
        assert real([torch.zeros(1, device="cuda")], False)[1] is True


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", ["adam", "paper_evolved", "lion", "power_sign"])
def test_capturable_makes_no_host_read_and_follows_the_default(name, foreach, monkeypatch):
    genome = GENOMES[name]
    default = run(genome, foreach=foreach)
    params = [x.clone().requires_grad_() for x in _start()]
    opt = GenomeOptimizer(params, genome, total_steps=STEPS, foreach=foreach, capturable=True)
    assert opt.skip_nonfinite is False
    for t in range(STEPS):
        opt.zero_grad()
        _loss(params).backward()
        if t == 1:  # state exists from here on: any host read of a tensor fails
            for attr in ("item", "tolist", "__bool__", "__float__", "__int__"):
                monkeypatch.setattr(torch.Tensor, attr, _no_host_read)
        opt.step()
    monkeypatch.undo()
    assert all(s["step"].device == p.device and s["step"].item() == STEPS for p, s in opt.state.items())
    for a, b in zip(params, default):
        # step counts live in float32 tensors (torch's dtype), so β^t is rounded in float32
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-6)
    with pytest.raises(GenomeError, match="capturable"):
        GenomeOptimizer(params, genome, total_steps=STEPS, capturable=True, skip_nonfinite=True)


def _no_host_read(*_args, **_kwargs):
    raise AssertionError("host read in a capturable step")


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "add_sign", "rmsprop", "paper_evolved"])
def test_differentiable_step_is_differentiable(name):
    """The updated parameters carry a gradient back to the gradient they were updated with (gradcheck)."""
    genome = GENOMES[name]
    theta = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g0 = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def after_two_steps(grad: torch.Tensor) -> torch.Tensor:
        p = theta.clone().requires_grad_()
        q = p.clone()  # not a leaf: in-place updates are recorded
        opt = GenomeOptimizer([q], genome, total_steps=STEPS, differentiable=True)
        for scale in (1.0, -0.5):
            q.grad = grad * scale
            opt.step()
        return q

    g = g0.clone().requires_grad_()
    assert torch.autograd.gradcheck(after_two_steps, (g,))
    with pytest.raises(GenomeError, match="differentiable"):
        GenomeOptimizer([theta], genome, total_steps=STEPS, differentiable=True, foreach=True)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_complex_parameters_follow_torch_adam(name, foreach):
    gen = torch.Generator().manual_seed(4)
    z0 = torch.randn(6, 3, dtype=torch.complex128, generator=gen)
    target = torch.randn(6, 3, dtype=torch.complex128, generator=gen)
    ours, theirs = z0.clone().requires_grad_(), z0.clone().requires_grad_()
    g = GENOMES[name]
    a = GenomeOptimizer([ours], g, foreach=foreach)
    cls = torch.optim.AdamW if g.weight_decay else torch.optim.Adam
    b = cls([theirs], lr=g.lr, betas=(g.beta1, g.beta2), eps=g.eps, weight_decay=g.wd, foreach=foreach)
    for _ in range(20):
        for p, o in ((ours, a), (theirs, b)):
            o.zero_grad()
            ((p - target).abs() ** 3).sum().backward()
            o.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-9, atol=1e-12)


def test_genome_hyperparameters_live_in_param_groups():
    p, q = (torch.zeros(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    g = NAMED["adam"]
    opt = GenomeOptimizer([{"params": [p]}, {"params": [q], "betas": (0.5, 0.9), "eps": 1e-3,
                                                 "alphas": {"sign_grad": 2.0}}], g)
    assert opt.param_groups[0]["betas"] == (g.beta1, g.beta2) and opt.param_groups[0]["alphas"] == {"adam": 1.0}
    for _ in range(3):
        opt.zero_grad()
        (p.sum() + q.sum()).backward()
        opt.step()
    assert torch.allclose(q, torch.full_like(q, -3 * 2.0 * g.lr))  # q's group ran 2·sign(g)
    assert "m" in opt.state[p] and "m" not in opt.state[q]  # each group's buffers follow its own terms
    adam_alone = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ref = torch.optim.Adam([adam_alone], lr=g.lr)
    for _ in range(3):
        ref.zero_grad()
        adam_alone.sum().backward()
        ref.step()
    torch.testing.assert_close(p.detach(), adam_alone.detach())
    with pytest.raises(GenomeError, match="alphas"):
        GenomeOptimizer([{"params": [p], "alphas": {"adamm": 1.0}}], g)
    with pytest.raises(GenomeError, match="total_steps"):
        GenomeOptimizer([{"params": [p], "schedule": {"warmup": True, "warmup_frac": 0.1, "cosine_decay": False}}], g)


def test_per_group_schedule_and_total_steps():
    g = dataclasses.replace(NAMED["sgd_momentum"], cosine_decay=True)
    p, q = (torch.zeros(1, dtype=torch.float64, requires_grad=True) for _ in range(2))
    opt = GenomeOptimizer([{"params": [p]}, {"params": [q], "total_steps": 2}], g, total_steps=100)
    for _ in range(3):
        opt.zero_grad()
        (p + q).sum().backward()
        opt.step()
    assert p.item() < q.item() < 0  # q's cosine reached 0 after 2 steps, p's barely decayed


def test_state_dict_carries_the_genome_and_refuses_another():
    p = torch.zeros(3, requires_grad=True)
    opt = GenomeOptimizer([p], NAMED["adam"])
    p.sum().backward()
    opt.step()
    sd = opt.state_dict()
    assert Genome.from_params(sd["genome"]) == NAMED["adam"]
    GenomeOptimizer([p], NAMED["adam"]).load_state_dict(copy.deepcopy(sd))
    with pytest.raises(GenomeError, match="different genome"):
        GenomeOptimizer([p], NAMED["lion"]).load_state_dict(copy.deepcopy(sd))
    older = {k: v for k, v in copy.deepcopy(sd).items() if k != "genome"}  # an older GenomeOptimizer's state
    for key in ("betas", "eps", "alphas", "schedule", "total_steps", "maximize", "capturable"):
        del older["param_groups"][0][key]
    fresh = GenomeOptimizer([p], NAMED["adam"])
    fresh.load_state_dict(older)
    assert fresh.param_groups[0]["alphas"] == {"adam": 1.0}
    fresh.step()


def test_step_peak_temporaries_stay_small():
    """In-place for-each updates: peak temporaries of a step, in parameter-sized buffers, counted by
    benchmarks/optim_memory.py (before the in-place core: Adam 4, SGD 2, the paper's genome 5)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "optim_memory.py"
    spec = importlib.util.spec_from_file_location("optim_memory", path)
    mem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mem)
    n = 40_000
    assert mem.measure(NAMED["adam"], n, foreach=True) <= 2.0
    assert mem.measure(NAMED["sgd_momentum"], n, foreach=True) <= 1.0
    assert mem.measure(NAMED["lion"], n, foreach=True) <= 1.0
    assert max(mem.measure(g, n, foreach=True) for g in mem.genomes().values()) <= 3.0
    assert mem.measure(NAMED["adam"], n, foreach=False) <= 1.0  # the loop: per tensor, the largest is half

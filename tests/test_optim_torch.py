"""PyTorch's optimizer-agnostic tests (test/test_optim.py), ported to GenomeOptimizer for every named genome.

torch.optim runs one suite against every optimizer it ships (``optim_db`` in
torch/testing/_internal/common_optimizers.py): state dicts whose ``step`` is a Python number, deepcopy keeping
every public attribute, hooks, hyperparameter validation, tensor lr, differentiable steps, foreach vs for-loop.
A genome used in someone's own training code must honour the same contract, so the same checks run here for
each genome of ``Genome.named``.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch.nn import Parameter
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from optsearch import Genome, GenomeOptimizer
from optsearch.genome import NAMED

NAMES = ("sgd_momentum", "adam", "adamw", "rmsprop", "signum", "lion", "paper_evolved")
T = 20  # total_steps: paper_evolved has warmup and cosine decay


def _params(n: int = 2, dtype: torch.dtype = torch.float32) -> list[Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [Parameter(torch.randn(2, 3, generator=gen, dtype=dtype)) for _ in range(n)]


def _grads(params: list[Parameter], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _run(opt: torch.optim.Optimizer, params: list[Parameter], steps: int, first_seed: int = 0) -> None:
    for t in range(steps):
        _grads(params, first_seed + t)
        opt.step()


def test_all_named_genomes_are_covered():
    assert set(NAMES) <= set(NAMED)


# ------------------------------------------------------------------ a step count that is a Python number
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_load_nontensor_step(name, capturable, foreach):
    """torch: test_load_nontensor_step. A state dict whose step is a number (older torch wrote those) loads,
    and the next step counts on from it, exactly as a run that never went through the number."""
    ref_params, params = _params(), _params()
    ref = GenomeOptimizer(ref_params, Genome.named(name), T, foreach=foreach, capturable=capturable)
    opt = GenomeOptimizer(params, Genome.named(name), T, foreach=foreach, capturable=capturable)
    _run(ref, ref_params, 3)
    _run(opt, params, 3)
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        st["step"] = st["step"].item()
    opt.load_state_dict(sd)
    _run(ref, ref_params, 2, first_seed=3)
    _run(opt, params, 2, first_seed=3)
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q)
        assert torch.is_tensor(opt.state[p]["step"]) and opt.state[p]["step"].item() == 5


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_step_set_to_a_number(name, capturable, foreach):
    """A step count set directly to a number (no load_state_dict) is converted, and keeps advancing."""
    ref_params, params = _params(), _params()
    ref = GenomeOptimizer(ref_params, Genome.named(name), T, foreach=foreach, capturable=capturable)
    opt = GenomeOptimizer(params, Genome.named(name), T, foreach=foreach, capturable=capturable)
    _run(ref, ref_params, 3)
    _run(opt, params, 3)
    for p in params:
        opt.state[p]["step"] = 3
    _run(ref, ref_params, 2, first_seed=3)
    _run(opt, params, 2, first_seed=3)
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q)
        assert torch.is_tensor(opt.state[p]["step"]) and opt.state[p]["step"].item() == 5


# ------------------------------------------------------------------ copies
def _public_attrs(obj) -> set[str]:
    return {k for k in obj.__dict__ if not k.startswith("_")}


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", NAMES)
def test_copy_keeps_all_public_attrs(name, how):
    """torch: test_deepcopy_copies_all_public_attrs; and the copy still steps and saves."""
    params = _params()
    opt = GenomeOptimizer(params, Genome.named(name), T, skip_nonfinite=True)
    _run(opt, params, 3)
    opt.nonfinite_steps = 2
    clone = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert _public_attrs(clone) == _public_attrs(opt)
    for k in ("genome", "skip_nonfinite", "nonfinite_steps", "defaults"):
        assert getattr(clone, k) == getattr(opt, k), k
    cparams = clone.param_groups[0]["params"]
    _grads(cparams, 9)
    clone.step()
    assert clone.state_dict()["genome"] == opt.genome.to_params()
    assert clone.state[cparams[0]]["step"].item() == 4


# ------------------------------------------------------------------ differentiable
def _diff_fn(p, grad, state, kwargs, name, *ignored):
    """torch's _diff_fn, over two differentiable steps (the second advances buffers that autograd saved in the
    first), returning p and the state tensors."""
    p = p.clone()
    p.grad = grad
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    opt = GenomeOptimizer([{"params": [p], **kwargs}], Genome.named(name), T, differentiable=True)
    opt.state[p].update(state)
    opt.step()
    opt.step()
    return (p,) + tuple(v for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.requires_grad)


def _diff_inputs(name: str):
    gen = torch.Generator().manual_seed(3)
    rand = lambda: torch.rand(10, generator=gen, dtype=torch.float64).add_(0.1).requires_grad_()  # noqa: E731
    p, grad = rand(), rand()
    state = {"step": torch.tensor(4.0, dtype=torch.float64)}
    from optsearch.genome.primitives import state_needed

    for b in sorted(state_needed(tuple(Genome.named(name).merged_terms()))):
        state[b] = rand()
    return p, grad, state


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_with_tensor_betas(name):
    """torch: TestDifferentiableOptimizer (betas as tensors): gradcheck through the steps."""
    g = Genome.named(name)
    betas = (torch.tensor(g.beta1, dtype=torch.float64, requires_grad=True),
             torch.tensor(g.beta2, dtype=torch.float64, requires_grad=True))
    p, grad, state = _diff_inputs(name)
    torch.autograd.gradcheck(_diff_fn, (p, grad, state, {"betas": betas}, name, *betas, *state.values()))


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_with_tensor_lr(name):
    """torch: test_*_differentiable_lr: gradcheck with respect to a tensor lr."""
    lr = torch.tensor(Genome.named(name).lr, dtype=torch.float64, requires_grad=True)
    p, grad, state = _diff_inputs(name)
    torch.autograd.gradcheck(_diff_fn, (p, grad, state, {"lr": lr}, name, lr, *state.values()))


# ------------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr(name, foreach, capturable):
    """torch: test_tensor_lr. A 1-element tensor lr runs the same trajectory as the number (capturable keeps
    it a tensor on the device, else it is read once per step)."""
    g = Genome.named(name)
    a, b = _params(), _params()
    oa = GenomeOptimizer(a, g, T, foreach=foreach, capturable=capturable)
    ob = GenomeOptimizer([{"params": b, "lr": torch.tensor([g.lr])}], g, T, foreach=foreach, capturable=capturable)
    _run(oa, a, 4)
    _run(ob, b, 4)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr_must_be_one_element(name):
    """torch: 'Tensor lr must be 1-element' (a per-column lr would broadcast silently)."""
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        GenomeOptimizer([{"params": _params(), "lr": torch.tensor([1e-3, 1e-2])}], Genome.named(name), T)


BAD_GROUPS = {
    "negative lr": ({"lr": -1e-3}, "Invalid learning rate"),
    "negative weight_decay": ({"weight_decay": -0.1}, "Invalid weight_decay"),
    "negative eps": ({"eps": -1e-8}, "Invalid epsilon"),
    "beta1 = 1": ({"betas": (1.0, 0.9)}, "Invalid beta"),
    "negative beta2": ({"betas": (0.9, -0.1)}, "Invalid beta"),
    "one beta": ({"betas": (0.9,)}, "betas"),
}


@pytest.mark.parametrize("bad", BAD_GROUPS.values(), ids=BAD_GROUPS.keys())
@pytest.mark.parametrize("name", NAMES)
def test_invalid_hyperparameters_raise_value_error(name, bad):
    """torch: test_errors (optim_error_inputs): out-of-range hyperparameters are ValueErrors, as in torch.optim,
    both in the constructor and in add_param_group."""
    group, match = bad
    with pytest.raises(ValueError, match=match):
        GenomeOptimizer([{"params": _params(), **group}], Genome.named(name), T)
    opt = GenomeOptimizer(_params(), Genome.named(name), T)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group({"params": _params(1), **group})


# ------------------------------------------------------------------ hooks
@pytest.mark.parametrize("name", NAMES)
def test_step_hooks(name):
    """torch: test_step_pre_hook, test_step_post_hook, test_step_all_hooks."""
    params = _params()
    opt = GenomeOptimizer(params, Genome.named(name), T)
    sgd = torch.optim.SGD(_params(), lr=0.1)
    data: list[int] = []
    handles = [
        register_optimizer_step_pre_hook(lambda *a: data.append(0)),
        register_optimizer_step_post_hook(lambda *a: data.append(5)),
        opt.register_step_pre_hook(lambda *a: data.append(1)),
        opt.register_step_post_hook(lambda *a: data.append(2)),
        sgd.register_step_pre_hook(lambda *a: data.append(1)),
        sgd.register_step_post_hook(lambda *a: data.append(2)),
    ]
    try:
        _grads(params, 0)
        opt.step()
        assert data == [0, 1, 2, 5]
        sgd.step()
        opt.step()
        assert data == [0, 1, 2, 5] * 3
    finally:
        for h in handles:
            h.remove()
    opt.step()
    assert data == [0, 1, 2, 5] * 3


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_hooks(name):
    """torch: test_state_dict_pre/post_hook, test_load_state_dict_pre_hook_and_prepend, ..._post_hook."""
    param = torch.rand(2, 3, requires_grad=True)
    opt = GenomeOptimizer([param], Genome.named(name), T)

    def pre(o):
        o.state["test"] = 1

    def post(o, sd):
        sd["ran_pre"] = sd["state"].pop("test", None) == 1
        return sd

    opt.register_state_dict_pre_hook(pre)
    opt.register_state_dict_post_hook(post)
    sd = opt.state_dict()
    assert sd["ran_pre"] and "test" not in sd["state"] and sd["genome"] == opt.genome.to_params()
    del opt.state["test"]

    def load_pre1(o, sd):
        sd["param_groups"][0]["lr"] = 0.002

    def load_pre2(o, sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.003
        return sd

    ran = []
    opt.register_load_state_dict_pre_hook(load_pre1)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.002
    opt.register_load_state_dict_pre_hook(load_pre2, prepend=True)
    opt.register_load_state_dict_post_hook(lambda o: ran.append(o.param_groups[0]["lr"]))
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.002 and ran == [0.002]  # pre1 ran after the prepended pre2


# ------------------------------------------------------------------ param groups
@pytest.mark.parametrize("name", NAMES)
def test_add_param_group(name):
    """A group added later takes the genome's defaults for what it does not set, and trains."""
    g = Genome.named(name)
    first, second = _params(1), _params(1)
    start = second[0].detach().clone()
    opt = GenomeOptimizer(first, g, T)
    opt.add_param_group({"params": second, "lr": 2 * g.lr})
    group = opt.param_groups[1]
    assert group["lr"] == 2 * g.lr and group["betas"] == (g.beta1, g.beta2) and group["eps"] == g.eps
    _run(opt, first + second, 2)
    assert not torch.equal(second[0], start) and opt.state[second[0]]["step"].item() == 2
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": first})


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_with_different_hyperparameters(name):
    """torch: test_param_groups_lr / _weight_decay. A group's overrides run as the genome variant would."""
    g = Genome.named(name)
    lr, wd = g.lr * 0.5, 0.05
    variant = Genome.from_params({**g.to_params(), "lr_log10": math.log10(lr), "weight_decay": True,
                                  "wd_log10": math.log10(wd)})
    a, b1, b2 = _params(1), _params(1), _params(1)
    b2[0].data.copy_(a[0])
    opt = GenomeOptimizer([{"params": b1}, {"params": b2, "lr": lr, "weight_decay": wd}], g, T)
    ref = GenomeOptimizer(a, variant, T)
    for t in range(4):
        _grads(a, t)
        _grads(b1 + b2, t)
        b2[0].grad = a[0].grad.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(b2[0], a[0], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_step_is_noop_when_params_have_no_grad(name, foreach):
    """torch: test_step_is_noop_when_params_have_no_grad; a param whose grad is None keeps no state either."""
    params = _params(3)
    before = [p.detach().clone() for p in params]
    opt = GenomeOptimizer(params, Genome.named(name), T, foreach=foreach)
    opt.step()
    _grads(params[:1], 0)
    opt.step()
    for p, q in zip(params[1:], before[1:]):
        assert torch.equal(p, q) and p not in opt.state
    assert not torch.equal(params[0], before[0])


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_foreach_matches_forloop(name, capturable):
    """torch: test_foreach_matches_forloop, with weight decay and mixed shapes and dtypes."""
    g = Genome.from_params({**Genome.named(name).to_params(), "weight_decay": True, "wd_log10": -2.0})
    runs = []
    for foreach in (False, True):
        gen = torch.Generator().manual_seed(1)
        params = [*_params(2), Parameter(torch.randn(5, generator=gen, dtype=torch.float64)),
                  Parameter(torch.randn((), generator=gen))]
        opt = GenomeOptimizer(params, g, T, foreach=foreach, capturable=capturable)
        _run(opt, params, 5)
        runs.append((params, opt))
    (pa, oa), (pb, ob) = runs
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, atol=1e-7, rtol=1e-6)
        for k, v in oa.state[p].items():
            torch.testing.assert_close(v, ob.state[q][k], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_can_be_printed(name):
    """torch: test_optimizer_can_be_printed."""
    assert "GenomeOptimizer" in repr(GenomeOptimizer(_params(), Genome.named(name), T))


# ------------------------------------------------------------------ the functional form
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_genome_update_matches_optimizer(name, foreach):
    """``genome_update`` (as ``torch.optim.adam.adam`` for Adam) runs the optimizer's step, step for step."""
    from optsearch import genome_update

    g = Genome.named(name)
    a, b = _params(), _params()
    opt = GenomeOptimizer(a, g, T, foreach=foreach)
    states: list[dict] = [{} for _ in b]
    for t in range(5):
        _grads(a, t)
        _grads(b, t)
        opt.step()
        with torch.no_grad():
            genome_update(b, [p.grad for p in b], states, genome=g, total_steps=T, foreach=foreach)
        for p, q, st in zip(a, b, states):
            assert torch.equal(p, q)
            assert st.keys() == opt.state[p].keys()
            assert all(torch.equal(v, opt.state[p][k]) for k, v in st.items())

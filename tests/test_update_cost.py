"""The compiled population update computes each primitive only for the members that use it (issue 26)."""

from __future__ import annotations

import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from optsearch.genome import NAMED
from optsearch.genome.primitives import PRIMITIVES, Layout
from optsearch.train import update as update_mod
from optsearch.train.update import PopulationUpdate
from tests.test_population import random_genomes

CPU = torch.device("cpu")
D = 48
LAYOUT = Layout(((4, 8), (8,), (8,)))


class _ElementsComputed(TorchDispatchMode):
    """Counts the elements every op writes: the work an update does, whichever terms it holds."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.elements += t.numel()
        return out


def _step(genomes, compiled: bool, rows: bool = True, seed: int = 0):
    """One eager run of the update with the compiled graph's arguments (every term in it); its θ and work."""
    upd = PopulationUpdate(genomes, D, 10, device=CPU, dtype=torch.float64, compile_update=compiled, layout=LAYOUT)
    if not rows:
        upd.rows = None
    upd.compiled = False  # run _apply_rows eagerly, but with the compiled update's arguments (``full``)
    gen = torch.Generator().manual_seed(seed)
    p = len(genomes)
    theta = torch.randn(p, D, generator=gen, dtype=torch.float64)
    calls = {n: 0 for n in PRIMITIVES}
    with _ElementsComputed() as counter:
        for _ in range(3):
            grad = torch.randn(p, D, generator=gen, dtype=torch.float64)
            args = upd.coefficients(upd.step_count + 1)
            upd.step_count += 1
            update_mod._apply_rows(theta, grad, upd.state, upd.weights, upd.all_alive, upd.beta1, upd.beta2, upd.eps,
                                   args["bc1"], args["bc2"], args["lr_t"], args["decay"], upd.value_clip, upd.ones,
                                   True, True, True, upd.beta3, upd.trust, upd.layout, True, upd.rows)
    return theta, counter.elements, upd


def test_each_term_computed_only_for_its_members_with_identical_results():
    genomes = random_genomes(30, seed=3)
    with_rows, work_rows, upd = _step(genomes, compiled=True)
    without, work_all, _ = _step(genomes, compiled=True, rows=False)
    assert set(upd.rows) >= {n for n in PRIMITIVES if not PRIMITIVES[n].per_tensor}  # one graph: every term in it
    torch.testing.assert_close(with_rows, without, rtol=1e-12, atol=1e-12)
    assert work_rows < work_all


def test_an_adam_population_does_not_compute_the_other_terms(monkeypatch):
    called: list[str] = []
    for name, prim in PRIMITIVES.items():  # spy on every term's function
        def spy(s, _fn=prim.fn, _name=name):
            if s.g.shape[0]:
                called.append(_name)
            return _fn(s)
        monkeypatch.setitem(PRIMITIVES, name, dataclasses.replace(prim, fn=spy))
    genomes = [NAMED["adam"]] * 6
    theta, _, upd = _step(genomes, compiled=True)
    assert len(upd.weights) > 1 and set(called) == {"adam"}  # the others are in the graph, on no rows
    eager, _, _ = _step(genomes, compiled=False)  # the eager update holds the used terms only
    torch.testing.assert_close(theta, eager, rtol=0, atol=0)

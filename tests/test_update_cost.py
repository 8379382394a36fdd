"""The population update computes each term only for the members that use it: every term in the compiled update,
Newton–Schulz and the trust ratio in the eager one too (issue 26); counted through patched primitives, never timed."""

from __future__ import annotations

import dataclasses

import torch

from optsearch.genome import NAMED
from optsearch.genome import tensors as tensors_mod
from optsearch.genome.primitives import PRIMITIVES, Layout
from optsearch.train import update as update_mod
from optsearch.train.update import PopulationUpdate
from tests.test_population import random_genomes

CPU = torch.device("cpu")
D = 48
LAYOUT = Layout(((4, 8), (8,), (8,)))


def _step(genomes, compiled: bool, rows: bool = True, seed: int = 0):
    """Three eager runs of the update with the arguments ``apply`` passes (the compiled graph's with
    ``compiled``: every elementwise term in it); θ after them and the update."""
    upd = PopulationUpdate(genomes, D, 10, device=CPU, dtype=torch.float64, compile_update=compiled, layout=LAYOUT)
    if not rows:
        upd.rows = upd.trust_rows = None
    full = compiled
    gen = torch.Generator().manual_seed(seed)
    p = len(genomes)
    theta = torch.randn(p, D, generator=gen, dtype=torch.float64)
    for _ in range(3):
        grad = torch.randn(p, D, generator=gen, dtype=torch.float64)
        upd.step_count += 1
        c = upd.coefficients(upd.step_count)
        update_mod._apply_rows(theta, grad, upd.state, upd.weights, upd.all_alive, upd.beta1, upd.beta2, upd.eps,
                               c["bc1"], c["bc2"], c["lr_t"], c["decay"], upd.value_clip, upd.ones,
                               full or upd.use_value_clip, full or upd.use_norm_clip, full or upd.use_decay, upd.beta3,
                               upd.trust, upd.layout, full or upd.use_trust, upd.rows, upd.trust_rows)
    return theta, upd


def _spy_rows(monkeypatch) -> dict[str, list[int]]:
    """Patch every primitive and the trust ratio to record how many rows each call computes."""
    seen: dict[str, list[int]] = {}
    for name, prim in PRIMITIVES.items():
        def spy(s, _fn=prim.fn, _name=name):
            seen.setdefault(_name, []).append(s.g.shape[0])
            return _fn(s)
        monkeypatch.setitem(PRIMITIVES, name, dataclasses.replace(prim, fn=spy))
    ratio = tensors_mod._ratio

    def spy_ratio(theta_norm, update_norm):  # one call per tensor of the layout
        seen.setdefault("trust_ratio", []).append(theta_norm.shape[0])
        return ratio(theta_norm, update_norm)
    monkeypatch.setattr(tensors_mod, "_ratio", spy_ratio)
    return seen


def test_newton_schulz_and_trust_ratio_computed_only_for_their_members(monkeypatch):
    seen = _spy_rows(monkeypatch)
    plain = [NAMED["adam"], NAMED["sgd_momentum"], NAMED["lion"]]
    genomes = [NAMED["muon"], *plain, NAMED["lamb"], *plain]
    for compiled in (False, True):
        seen.clear()
        _step(genomes, compiled)
        assert seen["ortho_momentum"] == [1] * 3  # the one Muon member, each of the 3 steps
        # eager: the norms of the one LAMB member only (θ and u); compiled: every row, ratio 1 where off
        assert seen["trust_ratio"] == [1 if not compiled else len(genomes)] * 3 * len(LAYOUT.shapes)
        elementwise = {n for n in seen if n not in ("ortho_momentum", "trust_ratio")}
        used = {n for g in genomes for n in g.merged_terms()} - {"ortho_momentum"}
        if compiled:  # one graph: every elementwise term in it, each on its members' rows only (maybe none)
            assert elementwise == {n for n in PRIMITIVES if not PRIMITIVES[n].per_tensor}
            assert {n for n in elementwise if seen[n][0]} == used
            assert all(r == sum(n in g.merged_terms() for g in genomes) for n in elementwise for r in seen[n])
        else:  # eager: the terms some member uses only, on every row
            assert elementwise == used and all(r == len(genomes) for n in elementwise for r in seen[n])


def test_a_population_without_newton_schulz_never_runs_it(monkeypatch):
    seen = _spy_rows(monkeypatch)
    for compiled in (False, True):
        seen.clear()
        _, upd = _step([NAMED["adam"], NAMED["lamb"]], compiled)
        assert "ortho_momentum" not in seen and "ortho_momentum" not in upd.weights
        assert (upd.rows is not None) == compiled
    seen.clear()
    _, upd = _step([NAMED["muon"]] * 3, compiled=False)  # every member uses it: eager gathers nothing
    assert upd.rows is None and seen["ortho_momentum"] == [3] * 3


def test_member_rows_give_the_same_update_as_every_row():
    genomes = random_genomes(30, seed=3) + [NAMED["muon"], NAMED["lamb"]]
    for compiled in (False, True):
        with_rows, upd = _step(genomes, compiled)
        without, _ = _step(genomes, compiled, rows=False)
        assert upd.rows is not None and (compiled or upd.trust_rows is not None)
        torch.testing.assert_close(with_rows, without, rtol=1e-12, atol=1e-12)
    eager, _ = _step(genomes, compiled=False)
    torch.testing.assert_close(with_rows, eager, rtol=1e-12, atol=1e-12)


def test_retiring_members_renumbers_their_rows():
    genomes = [NAMED["adam"], NAMED["muon"], NAMED["lamb"], NAMED["muon"], NAMED["lamb"]]
    upd = PopulationUpdate(genomes, D, 10, device=CPU, dtype=torch.float64, layout=LAYOUT)
    assert upd.rows["ortho_momentum"].tolist() == [1, 3] and upd.trust_rows.tolist() == [2, 4]
    upd.keep_rows(torch.tensor([0, 3, 4]))
    assert upd.rows["ortho_momentum"].tolist() == [1] and upd.trust_rows.tolist() == [2]


def test_member_rows_are_written_back_without_a_scatter_add():
    """Compiled, ``index_add_`` becomes an atomic add per element (the rows are distinct: a copy does);
    the compiled graph holds the ops the update calls with the graph's arguments, recorded here eagerly."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Ops() as ops:
        _step(random_genomes(12, seed=1) + [NAMED["muon"]], compiled=True)
    assert "index_copy_" in ops.seen or "index_copy" in ops.seen  # rows were written back…
    assert not {"index_add", "index_add_", "scatter_add", "scatter_add_", "index_put_"} & ops.seen  # …not added

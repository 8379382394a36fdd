"""The modern terms (orthogonalised momentum, AdEMAMix's slow EMA, Adan's gradient difference), the trust-ratio
switch and β searched as log10(1 − β): each against a hand-written reference, the population update against
GenomeOptimizer, the declared state against what the optimizers allocate, and mutation inside β's range."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from optsearch import Genome, GenomeOptimizer
from optsearch.genome import FLOAT_RANGES, NAMED, search_space, upgrade_params
from optsearch.genome.primitives import NS_COEFFICIENTS, Layout, orthogonalize, state_needed
from optsearch.search.sampler.config import GAConfig
from optsearch.search.sampler.mutation import mutate
from optsearch.search.sampler.space import random_params
from optsearch.train.population import Population
from optsearch.train.update import PopulationUpdate

SHAPES = ((4, 3), (5,), (3, 6))
"""A tall and a wide matrix (Newton–Schulz) and a vector (falls back to momentum)."""
STEPS = 8
LR = 1e-2


def _ns_reference(x: torch.Tensor) -> torch.Tensor:
    """Muon's quintic Newton–Schulz written out for one matrix, as in Keller Jordan's reference code."""
    a, b, c = 3.4445, -4.7750, 2.0315
    y = x.T if x.shape[0] > x.shape[1] else x
    y = y / max(float(torch.linalg.norm(y)), 1e-7)
    for _ in range(5):
        gram = y @ y.T
        y = a * y + (b * gram + c * gram @ gram) @ y
    y = y.T if x.shape[0] > x.shape[1] else y
    return y * math.sqrt(max(1.0, x.shape[0] / x.shape[1]))


def _grads(steps: int = STEPS, rows: int | None = None) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    lead = () if rows is None else (rows,)
    return [[torch.randn(*lead, *s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]


def _theta0(rows: int | None = None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    lead = () if rows is None else (rows,)
    return [torch.randn(*lead, *s, generator=gen, dtype=torch.float64) for s in SHAPES]


def _run(genome: Genome, grads: list[list[torch.Tensor]], *, foreach: bool) -> list[torch.Tensor]:
    ps = [t.clone().requires_grad_() for t in _theta0()]
    opt = GenomeOptimizer(ps, genome, foreach=foreach)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps]


def _reference(kind: str, alpha: float, g: Genome, grads: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Each tensor on its own, the update written out from the papers (bias-corrected Adam part)."""
    b1, b2, b3, eps, lam = g.beta1, g.beta2, g.beta3, g.eps, g.wd
    out = []
    for i, theta in enumerate(_theta0()):
        theta = theta.clone()
        m = torch.zeros_like(theta)
        v = torch.zeros_like(theta)
        slow = torch.zeros_like(theta)
        diff = torch.zeros_like(theta)
        prev = torch.zeros_like(theta)  # g_0 = 0
        for t, gs in enumerate(grads, start=1):
            gr = gs[i]
            m = b1 * m + (1 - b1) * gr
            v = b2 * v + (1 - b2) * gr * gr
            if kind == "ortho_momentum":  # Muon without Nesterov, no bias correction
                u = alpha * (_ns_reference(m) if theta.dim() == 2 else m)
            else:
                denom = (v / (1 - b2**t)).sqrt() + eps
                adam = (m / (1 - b1**t)) / denom
                if kind == "ademamix":
                    slow = b3 * slow + (1 - b3) * gr
                    u = adam + alpha * slow / denom
                elif kind == "adan_diff":
                    diff = b3 * diff + (1 - b3) * (gr - prev)
                    prev = gr
                    u = adam + alpha * diff / denom
                else:  # lamb: trust ratio on θ before this step's decay, decay outside it
                    tn, un = float(theta.norm()), float(adam.norm())
                    u = adam * (tn / un if tn > 0 and un > 0 else 1.0)
            theta = theta * (1 - LR * lam) - LR * u
        out.append(theta)
    return out


GENOMES = {
    "ortho_momentum": Genome.single("ortho_momentum", 0.7, lr_log10=-2.0, beta1_log1m=math.log10(0.05),
                                    bias_correction=False),
    "ademamix": dataclasses.replace(NAMED["adam"], lr_log10=-2.0, extra_term="ademamix", extra_alpha=1.5,
                                    beta3_log1m=-2.0),
    "adan_diff": dataclasses.replace(NAMED["adam"], lr_log10=-2.0, extra_term="adan_diff", extra_alpha=0.9,
                                     beta3_log1m=math.log10(0.08)),
    "lamb": dataclasses.replace(NAMED["lamb"], lr_log10=-2.0, wd_log10=-1.0),
}


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kind", list(GENOMES))
def test_term_equals_the_hand_written_reference(kind, foreach):
    g = GENOMES[kind]
    grads = _grads()
    alpha = 1.0 if kind == "lamb" else g.extra_alpha
    got, want = _run(g, grads, foreach=foreach), _reference(kind, alpha, g, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_newton_schulz_orthogonalises_and_matches_torch_muon():
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    o = orthogonalize(x, None)
    assert NS_COEFFICIENTS == (3.4445, -4.7750, 2.0315)
    sv = torch.linalg.svdvals(o / math.sqrt(6 / 4))
    assert ((sv > 0.6) & (sv < 1.25)).all()  # Muon's iteration lands near, not on, 1 (by design)
    # torch.optim.Muon (bf16 iteration) on one 2-D weight: the same step up to bf16 rounding
    p1 = x.float().clone().requires_grad_()
    p2 = x.float().clone().requires_grad_()
    gr = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    theirs = torch.optim.Muon([p1], lr=0.02, momentum=0.95, nesterov=False, weight_decay=0.0)
    ours = GenomeOptimizer([p2], NAMED["muon"])
    for opt, p in ((theirs, p1), (ours, p2)):
        p.grad = gr.clone()
        opt.step()
    step_theirs, step_ours = (p1 - x.float()).detach(), (p2 - x.float()).detach()
    assert float((step_theirs - step_ours).norm() / step_ours.norm()) < 0.03


def test_population_update_equals_genome_optimizer_row_by_row():
    """The batched [P, D] update with a per-tensor layout runs each row as its genome alone."""
    genomes = [*GENOMES.values(), NAMED["muon"], NAMED["adam"],
               dataclasses.replace(NAMED["lamb"], extra_term="ortho_momentum", extra_alpha=0.3)]
    p_count = len(genomes)
    layout = Layout(SHAPES)
    d = sum(math.prod(s) for s in SHAPES)
    pop = PopulationUpdate(genomes, d, STEPS, device=torch.device("cpu"), dtype=torch.float64, layout=layout)
    theta = torch.cat([t.reshape(p_count, -1) for t in _theta0(p_count)], dim=1)
    theta0 = theta.clone()
    grads = _grads(rows=p_count)
    for gs in grads:
        pop.apply(theta, torch.cat([g.reshape(p_count, -1) for g in gs], dim=1))
    for i, g in enumerate(genomes):
        ps = [seg.clone().requires_grad_() for seg in _split(theta0[i])]
        opt = GenomeOptimizer(ps, g, total_steps=STEPS)
        for gs in grads:
            for p, gr in zip(ps, gs):
                p.grad = gr[i].clone()
            opt.step()
        torch.testing.assert_close(theta[i], torch.cat([p.detach().reshape(-1) for p in ps]), rtol=0, atol=1e-10,
                                   msg=g.formula())


def _split(row: torch.Tensor) -> list[torch.Tensor]:
    out, o = [], 0
    for s in SHAPES:
        n = math.prod(s)
        out.append(row[o:o + n].view(s))
        o += n
    return out


def test_population_passes_each_tensors_shape():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    pop = Population([NAMED["muon"], NAMED["adam"]], model, 5, backend="vmap")
    assert pop.update.layout.shapes == ((3, 4), (3,), (2, 3), (2,))


def test_declared_state_is_what_the_optimizer_allocates():
    expected = {"muon": {"m"}, "ortho_momentum": {"m"}, "lamb": {"m", "v"}, "ademamix": {"m", "v", "m3"}, "adan_diff": {"m", "v", "m3"}}
    for name, g in {**GENOMES, **{k: NAMED[k] for k in ("muon", "lamb")}}.items():
        want = expected[name]
        assert set(state_needed(tuple(g.merged_terms()))) == want
        p = torch.zeros(3, 2, requires_grad=True)
        opt = GenomeOptimizer([p], g)
        p.grad = torch.ones(3, 2)
        opt.step()
        assert set(opt.state[p]) - {"step"} == want
    assert NAMED["muon"].state_floats() == 1 and NAMED["lamb"].state_floats() == 2


def test_betas_are_searched_as_log_one_minus_beta_and_mutation_keeps_them_in_range():
    space = search_space()
    assert "beta1" not in space and space["beta1_log1m"].low == -3.0 and not space["beta1_log1m"].log
    cfg = GAConfig()
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(300):
        p = mutate(random_params(rng), rng, rate=1.0, cfg=cfg)
        g = Genome.from_params(p)  # validates every range
        tol = 1e-12  # an end of a log range maps back to β up to rounding (1 − 10^log10(0.2) = 0.7999…9)
        assert -tol <= g.beta1 <= 0.999 + tol and 0.8 - tol <= g.beta2 <= 0.9999 + tol
        assert 0.9 - tol <= g.beta3 <= 0.9999 + tol
        seen.append(g.beta2)
    # uniform in log10(1 − β2) over [−4, log10 0.2]: about a fifth of the draws beyond 0.999 (uniform β: 0.5 %)
    assert sum(b > 0.999 for b in seen) > 30
    lo, hi, _ = FLOAT_RANGES["beta2_log1m"]
    assert 1 - 10**lo == pytest.approx(0.9999) and 1 - 10**hi == pytest.approx(0.8)


def test_old_params_store_beta_itself_and_upgrade_in_one_place():
    old = {k: v for k, v in NAMED["adam"].to_params().items() if not k.startswith("beta") and k not in (
        "extra_term", "extra_alpha", "trust_ratio", "sign_term", "sign_alpha")}
    old.update(beta1=0.9, beta2=0.999)
    assert Genome.from_params(old) == NAMED["adam"]
    assert upgrade_params(old)["beta2_log1m"] == -3.0
    with pytest.raises(Exception, match="beta2"):
        upgrade_params({**old, "beta2": 0.5})


def test_muon_and_lamb_can_seed_generation_zero():
    names = [n for n, _ in GAConfig(seed_modern=True).seed_genomes()]
    assert names[-2:] == ["muon", "lamb"] and "muon" not in [n for n, _ in GAConfig().seed_genomes()]
    assert NAMED["muon"].formula().startswith("Δθ = −η_t·(NS(m))")
    assert NAMED["lamb"].formula().startswith("Δθ = −η_t·trust(m/(√v+ε))")

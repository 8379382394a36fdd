"""AddSign and PowerSign (Bello et al. 2017): hand-written references, both optimizer paths, the population.

They live in the genome's ``sign_term`` gene (a slot's choices cannot grow in a stored study), so an
old trial or file without that gene must read as "no sign term".
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import optuna
import pytest
import torch

from optsearch import Genome, GenomeOptimizer
from optsearch.errors import GenomeError
from optsearch.genome import LATER_GENES, NAMED, define_search_space, search_space
from optsearch.train.update import PopulationUpdate

FIXTURES = Path(__file__).parent / "fixtures"


def reference(term: str, alpha: float, lr: float, beta1: float, grads: list[torch.Tensor],
              theta: torch.Tensor) -> torch.Tensor:
    """The rule as the paper writes it, element by element, with no optsearch code."""
    theta = theta.clone()
    m = torch.zeros_like(theta)
    for g in grads:
        m = beta1 * m + (1 - beta1) * g
        agree = torch.tensor([float(math.copysign(1, a) * math.copysign(1, b)) if a != 0 and b != 0 else 0.0
                              for a, b in zip(g.tolist(), m.tolist())], dtype=theta.dtype)
        scale = 1 + agree if term == "add_sign" else torch.exp(agree)
        theta = theta - lr * alpha * scale * g
    return theta


def _grads(n: int, steps: int, dtype=torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    gs = [torch.randn(n, generator=gen, dtype=dtype) for _ in range(steps)]
    gs[2][:3] = 0.0  # sign(0) = 0: AddSign then takes a plain step, PowerSign e^0 = 1
    return gs


@pytest.mark.parametrize("bias_correction", [False, True])  # sign(m̂) = sign(m): no difference
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("term", ["add_sign", "power_sign"])
def test_sign_terms_equal_the_hand_written_reference(term, foreach, bias_correction):
    g = Genome.single(term, 0.7, lr_log10=-2.0, beta1_log1m=math.log10(0.2), bias_correction=bias_correction)
    grads = _grads(12, 10)
    theta0 = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p = theta0.clone().requires_grad_()
    opt = GenomeOptimizer([p], g, foreach=foreach)
    for gr in grads:
        p.grad = gr.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), reference(term, 0.7, 1e-2, g.beta1, grads, theta0), rtol=0, atol=1e-14)


FP64_ATOL = 1e-10
"""float64, 12 steps: as in tests/test_population.py, sign terms are compared in float64 over a short horizon."""


def test_population_update_equals_genome_optimizer_row_by_row():
    """The batched [P, D] update (the evaluator's) runs the same terms: every row equals its genome run alone."""
    adam = NAMED["adam"]
    genomes = [
        Genome.single("add_sign", 1.3, lr_log10=-2.0),
        Genome.single("power_sign", 0.4, lr_log10=-2.5, beta1_log1m=math.log10(0.5)),
        dataclasses.replace(adam, sign_term="power_sign", sign_alpha=0.2, weight_decay=True),
        dataclasses.replace(NAMED["paper_evolved"], sign_term="add_sign", sign_alpha=2.0),
        adam,  # no sign term: its weight column is 0
    ]
    d, steps = 9, 12
    pop = PopulationUpdate(genomes, d, steps, device=torch.device("cpu"), dtype=torch.float64)
    assert {"add_sign", "power_sign"} <= set(pop.weights)
    theta0 = torch.randn(len(genomes), d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    theta = theta0.clone()
    grads = [torch.randn(len(genomes), d, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + t))
             for t in range(steps)]
    for gr in grads:
        pop.apply(theta, gr.clone())
    for i, g in enumerate(genomes):
        p = theta0[i].clone().requires_grad_()
        opt = GenomeOptimizer([p], g, total_steps=steps)
        for gr in grads:
            p.grad = gr[i].clone()
            opt.step()
        torch.testing.assert_close(theta[i], p.detach(), rtol=0, atol=FP64_ATOL, msg=g.formula())


# ----------------------------------------------------------------------------- the gene and old data
def test_sign_gene_in_space_formula_and_file(tmp_path):
    space = search_space()
    assert space["sign_term"].choices == ("none", "add_sign", "power_sign")
    assert "add_sign" not in space["term_0"].choices  # slot choices unchanged: old studies stay compatible
    g = dataclasses.replace(NAMED["adam"], sign_term="power_sign", sign_alpha=0.5)
    assert g.merged_terms() == {"adam": 1.0, "power_sign": 0.5}
    assert "0.5·e^(sign(g)·sign(m))·g" in g.formula()
    g.save(tmp_path / "g.json")
    assert Genome.load(tmp_path / "g.json") == g
    assert g.without("power_sign") == NAMED["adam"]
    with pytest.raises(GenomeError, match="sign_term"):
        dataclasses.replace(g, sign_term="adam")


def test_old_params_and_files_read_as_no_sign_term(tmp_path):
    old = {k: v for k, v in NAMED["adam"].to_params().items() if k not in LATER_GENES}
    assert Genome.from_params(old) == NAMED["adam"]
    # a genome file written before the gene existed loads, and a genome without the term writes no sign gene
    for name in ("old", "oldnsga"):
        path = FIXTURES / f"study_v0_{name}_best.json"
        g = Genome.load(path)
        assert g.sign_term == "none"
        assert not set(LATER_GENES) & set(g.to_dict()["genome"])
        assert Genome.from_params(g.to_dict()["genome"]) == g


def test_sampled_genomes_use_the_sign_gene():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {define_search_space(study.ask()).sign_term for _ in range(30)}
    assert drawn == {"none", "add_sign", "power_sign"}


def test_old_study_accepts_trials_with_the_new_gene(tmp_path):
    """A stored study refuses a categorical whose choices changed; new genes are new names, so it accepts them."""
    db = tmp_path / "old.db"
    db.write_bytes((FIXTURES / "study_v0.db").read_bytes())
    study = optuna.load_study(study_name="old", storage=f"sqlite:///{db}")
    trial = study.ask()
    g = define_search_space(trial)
    study.tell(trial, 0.5)
    assert Genome.from_params(study.trials[-1].params) == g
    assert all(Genome.from_params(t.params).sign_term == "none" for t in study.trials[:-1] if t.params)


def test_crossover_and_mutation_keep_the_sign_term_with_its_weight():
    import numpy as np

    from optsearch.search.sampler.config import GAConfig
    from optsearch.search.sampler.crossover import one_point_crossover
    from optsearch.search.sampler.mutation import mutate_gene
    from optsearch.search.sampler.space import expressed_genes

    a = dataclasses.replace(NAMED["adam"], sign_term="add_sign", sign_alpha=1.5).to_params()
    b = dataclasses.replace(NAMED["rmsprop"], sign_term="power_sign", sign_alpha=0.25).to_params()
    pairs = set()
    for seed in range(40):
        child = one_point_crossover(a, b, np.random.default_rng(seed))
        pairs.add((child["sign_term"], child["sign_alpha"]))
    assert pairs == {("add_sign", 1.5), ("power_sign", 0.25)}
    none = NAMED["adam"].to_params()
    assert "sign_alpha" not in expressed_genes(none) and "sign_term" in expressed_genes(none)
    mutate_gene(none, "sign_term", np.random.default_rng(0), GAConfig())
    assert none["sign_term"] in ("add_sign", "power_sign") and 0.0 <= none["sign_alpha"] <= 4.0
    assert Genome.from_params(none).merged_terms().keys() == {"adam", none["sign_term"]}

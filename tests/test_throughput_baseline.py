"""The throughput script's one-at-a-time baseline computes the same rule as the library, every term included.

Its ratio "batched / one at a time" is only fair if the baseline does the same work: a notebook loop that
skipped Newton–Schulz or the trust ratio (as it once did) made the population look several times slower
relative to it than it is."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from optsearch.genome import Genome
from optsearch.genome.primitives import NONE
from optsearch.optim import GenomeOptimizer

ROOT = Path(__file__).resolve().parent.parent


def _throughput():
    spec = importlib.util.spec_from_file_location("throughput_script", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE = Genome(terms=("adam", "sign_grad", "lion", NONE), alphas=(0.7, 0.2, 0.1, 0.0), lr_log10=-2.0,
              weight_decay=True, warmup=True, cosine_decay=True, clip="norm", clip_threshold=0.5)
GENOMES = [
    BASE,
    replace(BASE, extra_term="ortho_momentum", extra_alpha=0.5),
    replace(BASE, extra_term="ademamix", extra_alpha=0.4, trust_ratio=True),
    replace(BASE, extra_term="adan_diff", extra_alpha=0.3, sign_term="add_sign", sign_alpha=0.2, bias_correction=False),
    replace(BASE, sign_term="power_sign", sign_alpha=0.3, clip="value", clip_threshold=0.01),
]


@pytest.mark.parametrize("g", GENOMES, ids=["slots", "ortho", "ademamix+trust", "adan+addsign", "powersign"])
def test_the_notebook_baseline_follows_the_genome_optimizer(g):
    tp = _throughput()
    torch.manual_seed(0)
    shapes = [(6, 4), (4,), (3, 6)]  # a wide and a tall matrix (Newton–Schulz) and a vector (its fallback)
    init = [torch.randn(s, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, dtype=torch.float64) for s in shapes] for _ in range(6)]
    a = [p.clone() for p in init]
    b = [p.clone().requires_grad_() for p in init]
    opt = GenomeOptimizer(b, g, total_steps=len(grads))
    state: dict = {}
    for t, gs in enumerate(grads, start=1):
        for p, q, gr in zip(a, b, gs):
            p.grad, q.grad = gr.clone(), gr.clone()
        tp.notebook_update(a, state, g, t, len(grads))
        opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q.detach(), rtol=1e-9, atol=1e-11)

"""Known optimizers as genomes (:data:`optsearch.genome.NAMED`): the first generation's seeds and the baselines."""

from __future__ import annotations

import math
from pathlib import Path

from optsearch.errors import GenomeError
from optsearch.genome.core import K, NAMED, Genome, log1m
from optsearch.genome.primitives import NONE


def _none_slots(*terms: tuple[str, float]) -> dict[str, tuple]:
    ts = [t for t, _ in terms] + [NONE] * (K - len(terms))
    al = [a for _, a in terms] + [0.0] * (K - len(terms))
    return {"terms": tuple(ts), "alphas": tuple(al)}


NAMED.update({
    # Plain SGD, torch.optim.SGD without momentum: no optimizer state (the zero end of a memory front).
    "sgd": Genome(**_none_slots(("grad", 1.0)), lr_log10=-1.0, bias_correction=False),
    # SGD with momentum in EMA form, m_t = μ·m_{t−1} + (1−μ)·g_t from m_0 = 0: exactly
    # torch.optim.SGD(lr=η·(1−μ), momentum=μ) (dampening 0), whose buffer is m_t/(1−μ) from step 1.
    "sgd_momentum": Genome(**_none_slots(("momentum", 1.0)), lr_log10=-1.0, beta1_log1m=-1.0,
                           bias_correction=False),
    "adam": Genome(**_none_slots(("adam", 1.0)), lr_log10=-3.0, beta1_log1m=-1.0, beta2_log1m=-3.0,
                   eps_log10=-8.0),
    "adamw": Genome(**_none_slots(("adam", 1.0)), lr_log10=-3.0, weight_decay=True, wd_log10=-2.0),
    # torch.optim.RMSprop defaults: α (our β2) = 0.99, ε = 1e-8, lr = 0.01, no bias correction.
    "rmsprop": Genome(**_none_slots(("rms_norm", 1.0)), lr_log10=-2.0, beta2_log1m=-2.0,
                      bias_correction=False),
    "signum": Genome(**_none_slots(("sign_momentum", 1.0)), lr_log10=-3.0, beta1_log1m=-1.0,
                     bias_correction=False),
    "lion": Genome(
        **_none_slots(("lion", 1.0)), lr_log10=-4.0, beta1_log1m=-1.0, beta2_log1m=-2.0, weight_decay=True, wd_log10=-1.0,
        bias_correction=False,
    ),
    # "Evolving Deep Learning Optimizers" (2025), the published evolved genome. Its warmup of 100
    # steps was over a 500-step run, hence warmup_frac = 0.2.
    "paper_evolved": Genome(
        terms=("sign_grad", "sign_grad", "adam", "adam"),
        alphas=(0.4121, 0.3224, 2.0030, 1.6322),
        lr_log10=-2.9199,
        beta1_log1m=log1m(0.8553),
        beta2_log1m=log1m(0.9358),
        eps_log10=-8.2642,
        weight_decay=True,
        wd_log10=-3.0112,
        bias_correction=False,
        clip="none",
        warmup=True,
        warmup_frac=0.2,
        cosine_decay=True,
    ),
    # torch.optim.Muon(nesterov=False)'s update for every 2-D weight (Newton–Schulz in the working dtype,
    # not bf16), momentum for the other tensors; lr 0.02 and β = 0.95 as Muon's reference code.
    "muon": Genome(terms=(NONE,) * K, alphas=(0.0,) * K, extra_term="ortho_momentum", extra_alpha=1.0,
                   lr_log10=math.log10(0.02), beta1_log1m=log1m(0.95), bias_correction=False),
    # LAMB: Adam's direction scaled per tensor by ‖θ‖/‖u‖, decoupled weight decay outside the ratio.
    "lamb": Genome(**_none_slots(("adam", 1.0)), lr_log10=-3.0, weight_decay=True, wd_log10=-2.0, trust_ratio=True),
})

BASELINES: tuple[str, ...] = ("sgd_momentum", "adam", "adamw", "rmsprop")
"""Named genomes the first generation is seeded with."""


def resolve(spec: str) -> Genome:
    """A genome from a name in :data:`NAMED` or a JSON file path."""
    if spec in NAMED:
        return NAMED[spec]
    if spec.endswith(".json") or Path(spec).exists():
        return Genome.load(spec)
    raise GenomeError(f"unknown genome {spec!r}: not a named genome ({', '.join(NAMED)}) nor a file")

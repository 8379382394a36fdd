"""optsearch: discover deep-learning optimizers by evolutionary search (Optuna + PyTorch)."""

from __future__ import annotations

from optsearch.errors import OptsearchError
from optsearch.genome import Genome

__all__ = ["Genome", "GenomeOptimizer", "OptsearchError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # GenomeOptimizer pulls in torch.optim; import it lazily so `optsearch --help` stays fast.
    if name == "GenomeOptimizer":
        from optsearch.optim import GenomeOptimizer

        return GenomeOptimizer
    raise AttributeError(name)

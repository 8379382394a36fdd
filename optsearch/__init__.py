"""optsearch: discover deep-learning optimizers by evolutionary search (Optuna + PyTorch)."""

from __future__ import annotations

from optsearch.errors import OptsearchError

__all__ = ["Genome", "GenomeOptimizer", "OptsearchError", "genome_update"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Genome pulls in torch (through the primitives) and GenomeOptimizer torch.optim: import them on first
    # use so that `python -m optsearch --help` imports neither.
    if name == "Genome":
        from optsearch.genome import Genome

        return Genome
    if name in ("GenomeOptimizer", "genome_update"):
        from optsearch import optim

        return getattr(optim, name)
    raise AttributeError(name)

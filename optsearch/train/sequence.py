"""A sequence task family that needs no files: associative recall with a small causal transformer.

Why: image CNNs alone reward rules that suit convolutions; attention models are where Adam-like and
newer rules (Lion, Muon) differ most, so a proxy from a second model family makes the search prefer
rules that transfer. Associative recall is the standard small probe of in-context retrieval (the
induction-head task of Olsson et al., 2022, and the Zoology/H3 recall benchmarks): a sequence of
key–value pairs, then a query key; the answer is the value paired with it. It is generated from a fixed
seed in a second, learnable in a few hundred steps by a 2-layer model, and it is a 10-way classification,
so its fitness (validation accuracy + loss bonus) sits on the image tasks' scale with chance at 0.1.

The model reads token ids stored as floats (the training loop keeps one input dtype for every task) and
classifies from the last position. Its attention is written with plain matmuls, so it runs under the
population's ``vmap`` engine like any other model, and a ``[B, T]`` batch of tokens is shared by all members.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RecallSpec:
    """The shape of an associative-recall task.

    Attributes:
        keys: key vocabulary size (token ids ``0..keys-1``).
        values: value vocabulary size and number of classes (ids ``keys..keys+values-1``).
        pairs: key–value pairs per sequence (keys distinct within a sequence).
        train, test: examples generated for each split (validation is carved from train by the loader).
        seed: the generator's seed (fixed: the data are part of the task's definition).
    """

    keys: int = 16
    values: int = 10
    pairs: int = 6
    train: int = 20_000
    test: int = 2_000
    seed: int = 4321

    @property
    def length(self) -> int:
        return 2 * self.pairs + 1

    @property
    def vocab(self) -> int:
        return self.keys + self.values


def recall_arrays(spec: RecallSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences ``k1 v1 … kP vP q`` (float32 token ids) and the index of q's value (int64)."""
    keys = np.argsort(rng.random((n, spec.keys)), axis=1)[:, : spec.pairs]  # distinct keys per row
    vals = rng.integers(0, spec.values, size=(n, spec.pairs))
    which = rng.integers(0, spec.pairs, size=n)
    seq = np.empty((n, spec.length), dtype=np.float32)
    seq[:, 0:-1:2] = keys
    seq[:, 1:-1:2] = vals + spec.keys
    seq[:, -1] = keys[np.arange(n), which]
    return seq, vals[np.arange(n), which].astype(np.int64)


@cache
def recall_splits(spec: RecallSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` generated from the spec's seed (cached: tasks on one spec share them)."""
    rng = np.random.default_rng(spec.seed)
    return (*recall_arrays(spec, spec.train, rng), *recall_arrays(spec, spec.test, rng))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention from plain ops (no fused kernel, so ``vmap`` batches it)."""

    def __init__(self, d: int, heads: int, length: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.register_buffer("mask", torch.ones(length, length).tril().bool(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, d: int, heads: int, length: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, length)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """A causal transformer over token ids (given as floats) that classifies from the last position."""

    def __init__(self, vocab: int, length: int, classes: int, *, d: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads, length) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[-1]
        x = self.embed(tokens.long()) + self.pos[:t]
        x = self.ln(self.blocks(x))
        return self.head(x[:, -1])


def transformer(spec: RecallSpec, **kw: int) -> Callable[[], nn.Module]:
    """A factory of the task's model (the registry builds a fresh one per unit)."""
    return lambda: TinyTransformer(spec.vocab, spec.length, spec.values, **kw)


__all__ = ["Block", "CausalSelfAttention", "RecallSpec", "TinyTransformer", "recall_arrays", "recall_splits", "transformer"]

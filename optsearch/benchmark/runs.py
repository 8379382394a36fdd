"""Training for the benchmark: genome contenders batched through the evaluator, Muon one model at a time.

``torch.optim.Muon`` is not a genome; it trains one model at a time through :func:`train_single`, which follows
the evaluator's conventions for data, initialisation and batch order (a test checks that an Adam genome scores the
same on both paths), so every contender is paired seed by seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from optsearch.benchmark.config import BenchmarkConfig
from optsearch.benchmark.contenders import Contender
from optsearch.genome import Genome
from optsearch.train.spec import RunSpec


@dataclass(frozen=True)
class UnitScore:
    """One contender on one (task, seed): test (or validation) accuracy, final train loss, fitness."""

    accuracy: float
    loss: float
    fitness: float
    diverged: bool
    curve: list[list[float]] = field(default_factory=list, compare=False)
    """[step, mean training loss since the previous point] pairs."""


def evaluate_settings(task: str, settings: Sequence[tuple[Contender, dict[str, float]]], seeds: Sequence[int],
                       cfg: BenchmarkConfig, *, split: str) -> list[list[UnitScore]]:
    """Scores per (contender setting, seed): genome settings batched in one evaluator call, Muon one by one."""
    out: list[list[UnitScore] | None] = [None] * len(settings)
    genome_idx = [i for i, (c, _) in enumerate(settings) if c.is_genome]
    if genome_idx:
        genomes = [settings[i][0].with_params(settings[i][1]) for i in genome_idx]
        for i, per_seed in zip(genome_idx, evaluate_genomes(genomes, task, seeds, cfg, split=split)):
            out[i] = per_seed
    for i, (c, params) in enumerate(settings):
        if not c.is_genome:
            make = muon_factory(params, recipe=c.recipe)
            out[i] = [train_single(task, make, seed=s, spec=cfg.run_spec(task, split=split)) for s in seeds]
    return out  # type: ignore[return-value]


def evaluate_genomes(genomes: Sequence[Genome], task: str, seeds: Sequence[int], cfg: BenchmarkConfig, *,
                     split: str) -> list[list[UnitScore]]:
    """Train the genomes together with the batched evaluator; scores per genome and seed (seed order kept).

    Every seed is trained for every genome (``stop_diverged=False``): a paired comparison needs all of
    them, and a diverged seed is scored, not skipped.
    """
    from optsearch.train.evaluate import evaluate

    res = evaluate(list(genomes), [task], list(seeds), cfg.run_spec(task, split=split))
    by_key = {(u.member, u.seed): u for u in res.per_unit}
    out = []
    for i in range(len(genomes)):
        row = []
        for s in seeds:
            u = by_key[(i, s)]
            row.append(UnitScore(accuracy=float(u.accuracy), loss=float(u.loss), fitness=float(u.fitness),
                                 diverged=bool(u.diverged), curve=[[int(a), float(b)] for a, b in u.curve]))
        out.append(row)
    return out


class OptimizerGroup:
    """Several torch optimizers (and LR schedulers) stepped as one, e.g. Muon + AdamW, after one gradient clip.

    ``clip`` (``none``, ``value``, ``norm``) and ``threshold`` clip the gradients of ``params`` as a genome does
    (:meth:`optsearch.optim.GenomeOptimizer._clip`: per element, or one global norm over all of them).
    """

    def __init__(self, optimizers: Sequence[Any], schedulers: Sequence[Any] = (), *, params: Sequence[Any] = (),
                 clip: str = "none", threshold: float = 1.0):
        self.optimizers = list(optimizers)
        self.schedulers = list(schedulers)
        self.params, self.clip, self.threshold = list(params), clip, threshold

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        import torch

        from optsearch.genome.primitives import NORM_CLIP_EPS

        grads = [p.grad for p in self.params if p.grad is not None]
        if grads and self.clip == "value":
            torch._foreach_clamp_min_(grads, -self.threshold)
            torch._foreach_clamp_max_(grads, self.threshold)
        elif grads and self.clip == "norm":
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, torch.clamp(self.threshold / (norm + NORM_CLIP_EPS), max=1.0))
        for o in self.optimizers:
            o.step()
        for s in self.schedulers:
            s.step()


OptimizerFactory = Callable[[Any, int], Any]
"""``(model, total_steps) -> optimizer``: anything with ``zero_grad()`` and ``step()``."""


def train_single(task: str, make_optimizer: OptimizerFactory, *, seed: int, spec: RunSpec) -> UnitScore:
    """Train one model with any torch optimizer on one (task, seed) unit through the evaluator's unit loop.

    :func:`optsearch.train.single.train_optimizer` runs the same per-unit loop as
    :func:`optsearch.train.evaluate.evaluate` (data, initial weights, batches, augmentation, dropout seeds,
    divergence rule, scoring), so a non-genome optimizer is paired seed by seed with the genomes.
    """
    from optsearch.train.single import train_optimizer

    u = train_optimizer(task, make_optimizer, seed=seed, spec=spec)
    return UnitScore(accuracy=float(u.accuracy), loss=float(u.loss), fitness=float(u.fitness),
                     diverged=bool(u.diverged), curve=[[int(a), float(b)] for a, b in u.curve])


def muon_factory(params: dict[str, float], *, recipe: Mapping[str, Any] | None = None) -> OptimizerFactory:
    """Muon on the 2-D weights (``match_rms_adamw``) + AdamW on the rest, one lr and one weight decay.

    Convolution kernels (4-D) and biases go to AdamW: torch's Muon accepts only 2-D parameters and its
    documentation recommends AdamW for the others. ``recipe`` (default: cosine decay only) applies the
    schedule (:func:`optsearch.genome.primitives.schedule_factor`) and the clipping the baseline genomes get.
    """
    import torch

    from optsearch.benchmark.contenders import NAMED_RECIPE
    from optsearch.genome.primitives import schedule_factor

    r = dict(NAMED_RECIPE if recipe is None else recipe)
    lr = 10 ** float(params["lr_log10"])
    wd = 10 ** float(params["wd_log10"])

    def make(model: Any, total_steps: int) -> OptimizerGroup:
        two_d = [p for p in model.parameters() if p.requires_grad and p.ndim == 2]
        other = [p for p in model.parameters() if p.requires_grad and p.ndim != 2]
        opts = []
        if two_d:
            opts.append(torch.optim.Muon(two_d, lr=lr, weight_decay=wd, adjust_lr_fn="match_rms_adamw"))
        if other:
            opts.append(torch.optim.AdamW(other, lr=lr, weight_decay=wd))
        scheds = []
        if r["cosine_decay"] or r["warmup"]:  # LambdaLR's k counts finished steps; the genome schedule's t is 1-based
            scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: schedule_factor(
                k + 1, total_steps, r["warmup"], r["warmup_frac"], r["cosine_decay"])) for o in opts]
        return OptimizerGroup(opts, scheds, params=two_d + other, clip=r["clip"], threshold=r["clip_threshold"])

    return make

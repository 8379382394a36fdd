"""Genome-steps per second: one genome at a time vs the population-batched evaluator, side by side.

    python benchmarks/throughput.py                              # digits and mnist, P = 50, 500 steps
    python benchmarks/throughput.py --tasks digits --reference-genomes 10
    python benchmarks/throughput.py --tasks mnist --population 4 --steps 20   # the CNN is slow on a CPU
    python benchmarks/throughput.py --tasks cifar10_small --population 20 --steps 20 --backends looped,vmap,fused

Columns, all on the same genomes, batches and initial weights:

(a) notebook: one genome at a time, a per-parameter Python loop computing every term separately
    (as the paper's notebook does);
(b) GenomeOptimizer: one genome at a time with ``optsearch.GenomeOptimizer``;
(c) population: the evaluator's inner loop (``Population.step``), eager update and compiled update, with
    the engine chosen for the model and device, or each of ``--backends`` (then also their ratios).

Then the ceiling: the batched forward+backward alone and the fraction of a batched step it takes,
with the achieved GFLOP/s (3 × forward FLOPs less the first layer's input gradient, per example,
times the batch, per genome-step). One-at-a-time
throughput does not depend on P, so ``--reference-genomes`` may time (a) and (b) on N evenly spaced
genomes only (a sample with the population's mix of terms: Newton–Schulz members cost several times more). The population is the named baselines plus random genomes from the search space (a
first generation); members that diverge are retired by (c) and not counted as trained steps.
Timings are minima over ``--repeats`` interleaved repeats; on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import optuna
import torch
import torch.nn.functional as F

from optsearch.train.device import retain_freed_host_memory
from optsearch.train.evaluate import batch_indices, build_model, data_seed, task_data
from optsearch.genome import NAMED, Genome, define_search_space
from optsearch.optim import GenomeOptimizer
from optsearch.train.population import Population
from optsearch.genome.primitives import NS_COEFFICIENTS, NS_EPS, NS_STEPS, schedule_factor
from optsearch.train.tasks import get_task

CPU = torch.device("cpu")


def population(n: int, seed: int = 0) -> list[Genome]:
    """The named optimizers, then random genomes from the search space: a realistic first generation."""
    named = [NAMED[k] for k in ("adam", "adamw", "sgd_momentum", "rmsprop", "signum", "lion", "paper_evolved")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    randoms = [define_search_space(study.ask()) for _ in range(max(0, n - len(named)))]
    return (named + randoms)[:n]


# ----------------------------------------------------------------------------- (a) notebook style
@torch.no_grad()
def notebook_update(params: list[torch.Tensor], state: dict, g: Genome, step: int, total: int) -> None:
    """The paper notebook's way: per parameter, update the moments, compute each term separately, sum, apply.

    It computes every term the genome holds (the slots, the sign-agreement gene, the modern ``extra_term``
    and the trust ratio), each written out here by hand: a baseline that skipped Newton–Schulz or the
    trust ratio would make the population look faster than it is."""
    lr_t = g.lr * schedule_factor(step, total, g.warmup, g.warmup_frac, g.cosine_decay)
    if g.clip == "norm":
        torch.nn.utils.clip_grad_norm_(params, g.clip_threshold)
    terms = g.merged_terms()
    b3 = g.beta3
    for p in params:
        grad = p.grad
        if g.clip == "value":
            grad = grad.clamp(-g.clip_threshold, g.clip_threshold)
        st = state.setdefault(p, {k: torch.zeros_like(p) for k in ("m", "v", "mu", "m3")})
        if "ademamix" in terms or "adan_diff" in terms:  # the slow EMA only where a term reads it, as the library
            dm3 = (1 - b3) * (grad - st["m3"])  # Adan's EMA of g_t − g_{t−1} is m3's change (g_0 = 0)
            st["m3"] = b3 * st["m3"] + (1 - b3) * grad
        st["m"] = g.beta1 * st["m"] + (1 - g.beta1) * grad
        st["v"] = g.beta2 * st["v"] + (1 - g.beta2) * grad * grad
        m_hat = st["m"] / (1 - g.beta1**step) if g.bias_correction else st["m"]
        v_hat = st["v"] / (1 - g.beta2**step) if g.bias_correction else st["v"]
        denom = v_hat.sqrt() + g.eps
        update = torch.zeros_like(p)
        for term, alpha in terms.items():
            if term == "grad":
                u = grad
            elif term == "momentum":
                u = m_hat
            elif term == "rms_norm":
                u = grad / denom
            elif term == "adam":
                u = m_hat / denom
            elif term == "sign_grad":
                u = grad.sign()
            elif term == "unit_grad":
                u = grad / (grad.abs() + g.eps)
            elif term == "nesterov":
                u = g.beta1 * m_hat + (1 - g.beta1) * grad
            elif term == "sign_momentum":
                u = m_hat.sign()
            elif term == "lion":
                u = (g.beta1 * st["mu"] + (1 - g.beta1) * grad).sign()
            elif term == "add_sign":
                u = (1 + grad.sign() * m_hat.sign()) * grad
            elif term == "power_sign":
                u = torch.exp(grad.sign() * m_hat.sign()) * grad
            elif term == "ortho_momentum":
                u = newton_schulz(m_hat) if p.dim() == 2 else m_hat
            elif term == "ademamix":
                u = st["m3"] / denom
            elif term == "adan_diff":
                u = dm3 / denom
            else:
                raise ValueError(f"the notebook baseline does not know the term {term!r}")
            update = update + alpha * u
        if "lion" in terms:
            st["mu"] = g.beta2 * st["mu"] + (1 - g.beta2) * grad
        if g.trust_ratio:
            pn, un = p.norm(), update.norm()
            if pn > 0 and un > 0:
                update = update * (pn / un)
        if g.weight_decay:
            p.mul_(1 - lr_t * g.wd)
        p.sub_(lr_t * update)


def newton_schulz(m: torch.Tensor) -> torch.Tensor:
    """Muon's quintic iteration on one matrix, written out (scaled by √max(1, rows/cols) as the library's)."""
    a, b, c = NS_COEFFICIENTS
    x = m.T if m.shape[0] > m.shape[1] else m
    x = x / x.norm().clamp(min=NS_EPS)
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    x = x.T if m.shape[0] > m.shape[1] else x
    return x * math.sqrt(max(1.0, m.shape[0] / m.shape[1]))


def one_by_one(task, data, genomes: list[Genome], order: torch.Tensor, kind: str) -> tuple[float, int]:
    """Train each genome alone; returns (seconds, genome-steps)."""
    steps = len(order)
    total = 0.0
    for g in genomes:
        model = build_model(task, 0, device=CPU, dtype=torch.float32)
        params = list(model.parameters())
        opt = GenomeOptimizer(params, g, total_steps=steps) if kind == "optimizer" else None
        state: dict = {}
        t0 = time.perf_counter()
        for t, idx in enumerate(order, start=1):
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            for p in params:
                p.grad = None
            loss.backward()
            if opt is not None:
                opt.step()
            else:
                notebook_update(params, state, g, t, steps)
        total += time.perf_counter() - t0
    return total, len(genomes) * steps


def batched(task, data, genomes: list[Genome], order: torch.Tensor, compile_update: bool,
            checkpoint_every: int = 50, backend: str | None = None) -> tuple[float, int, int]:
    """The evaluator's inner loop (diverged members frozen on the device, compacted away at checkpoints);
    returns (seconds, genome-steps trained by members still alive, members diverged)."""
    pop = Population(genomes, build_model(task, 0, device=CPU, dtype=torch.float32), len(order),
                     compile_update=compile_update, backend=backend)
    done = torch.zeros((), dtype=torch.long)
    t0 = time.perf_counter()
    for t, idx in enumerate(order, start=1):
        pop.step(data.train_x[idx], data.train_y[idx])
        done += pop.alive.sum()  # on the device: no host read per step
        if t % checkpoint_every == 0:
            pop.settle()
    return time.perf_counter() - t0, int(done), len(pop.diverged) + len(pop.settle())


def breakdown(task, data, genomes: list[Genome], order: torch.Tensor, compile_update: bool,
              backend: str | None = None) -> tuple[float, float]:
    """Seconds per batched step in forward+backward and in the update, timed in one loop (a host read
    after each part, so each is timed whole)."""
    pop = Population(genomes, build_model(task, 0, device=CPU, dtype=torch.float32), len(order),
                     compile_update=compile_update, backend=backend)
    fb = up = 0.0
    for idx in order:
        t0 = time.perf_counter()
        pop._engine.loss_and_grad(data.train_x[idx], data.train_y[idx], None).tolist()
        t1 = time.perf_counter()
        pop.update.apply(pop.theta, pop.grad, pop.alive)
        t2 = time.perf_counter()
        fb, up = fb + t1 - t0, up + t2 - t1
    return fb / len(order), up / len(order)


def flops_per_genome_step(task, batch_size: int) -> int:
    """Forward, backward to the inputs and to the weights: 3 × the forward FLOPs, less the first layer's
    input gradient, which is never computed (the data needs none)."""
    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)))
    seen: list[int] = []

    def hook(m, _inp, out):
        k = m.in_features if isinstance(m, torch.nn.Linear) else math.prod(m.kernel_size) * m.in_channels // m.groups
        seen.append(2 * k * out[0].numel())

    handle = first.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.zeros(1, *task.input_shape))
    handle.remove()
    return (3 * task.traits.flops_per_example - seen[0]) * batch_size


def run_task(name: str, p: int, steps: int, batch_size: int, n_ref: int, repeats: int, compile_update: bool,
             backends: list[str | None]) -> None:
    task = get_task(name)
    data = task_data(task, device=CPU, data_dir=None, subsample=None)
    genomes = population(p)
    order = batch_indices(len(data.train_x), batch_size, steps, data_seed(0, name))
    flops = flops_per_genome_step(task, min(batch_size, len(data.train_x)))
    n = max(1, min(n_ref or p, p))  # evenly spaced: the sample has the population's mix of terms
    ref = [genomes[i * p // n] for i in range(n)]
    print(f"\n## {name}: {task.description}; P = {p}, {steps} steps, batch {batch_size}; "
          f"(a), (b) timed on {len(ref)} of the {p} genomes; ≈ {flops / 1e6:.1f} MFLOP per genome-step")
    if compile_update:  # compile once, outside the timings (a one-time cost per process)
        t0 = time.perf_counter()
        batched(task, data, genomes, order[:2], True)
        print(f"one-time compile of the update: {time.perf_counter() - t0:.1f} s")
    rows: dict[str, tuple] = {}
    chosen = Population(genomes[:1], build_model(task, 0, device=CPU, dtype=torch.float32), 1).backend
    name_of = {b: b or f"{chosen} (default)" for b in backends}

    def population_rows(b: str | None) -> list[tuple[str, object]]:
        return [(f"(c) {name_of[b]}, eager update", lambda: batched(task, data, genomes, order, False, backend=b)),
                *(((f"(c) {name_of[b]}, compiled update",
                    lambda: batched(task, data, genomes, order, True, backend=b)),) if compile_update else ())]

    for _ in range(repeats):  # interleaved repeats, minimum kept
        for label, fn in (
            ("(a) notebook loop, one at a time", lambda: one_by_one(task, data, ref, order, "notebook")),
            ("(b) GenomeOptimizer, one at a time", lambda: one_by_one(task, data, ref, order, "optimizer")),
            *(row for b in backends for row in population_rows(b)),
        ):
            r = fn()
            if label not in rows or r[0] / r[1] < rows[label][0] / rows[label][1]:
                rows[label] = r
    fb_steps = order[: min(len(order), 100)]
    split = {(b, c): min((breakdown(task, data, genomes, fb_steps, c, b) for _ in range(repeats)), key=sum)
             for b in backends for c in ((False, True) if compile_update else (False,))}

    rate = {k: r[1] / r[0] for k, r in rows.items()}
    base = rate["(a) notebook loop, one at a time"]
    print(f"{'':38s} {'genome-steps/s':>15s} {'× (a)':>7s} {'ms/step of P':>13s} {'GFLOP/s':>8s}")
    for k, r in rows.items():
        per_step = r[0] / r[1] * p * 1e3
        note = f"   ({r[2]} diverged, retired)" if len(r) > 2 and r[2] else ""
        print(f"{k:38s} {rate[k]:15.1f} {rate[k] / base:7.2f} {per_step:13.2f} {rate[k] * flops / 1e9:8.1f}{note}")
    best = max((k for k in rows if k.startswith("(c)")), key=rate.get)
    print(f"ratio c/a (best batched): {rate[best] / base:.2f}")
    if len(backends) > 1:  # each backend at its better update against the first backend's
        best_of = {b: max(rate[k] for k in rate if k.startswith(f"(c) {name_of[b]},")) for b in backends}
        first = backends[0]
        print("backends (genome-steps/s, best update): " + ", ".join(
            f"{name_of[b]} {best_of[b]:.1f} ({best_of[b] / best_of[first]:.2f}× {name_of[first]})" for b in backends))
    for (b, c), (fb, up) in split.items():
        print(f"{name_of[b]} step of {p} ({'compiled' if c else 'eager'} update), timed in one loop: forward+backward "
              f"{fb * 1e3:.2f} ms ({p * flops / fb / 1e9:.1f} GFLOP/s) + update {up * 1e3:.2f} ms; "
              f"forward+backward = {fb / (fb + up):.0%} of the step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="digits,mnist")
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reference-genomes", type=int, default=0, help="time (a), (b) on this many evenly spaced genomes (0: all)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled-update column")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--backends", default="", help="comma-separated engines to time side by side "
                    "(batched, vmap, looped, fused; default: the one chosen for the model)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows through pipes
    torch.set_num_threads(args.threads)
    retained = retain_freed_host_memory()  # as every CPU training unit does; (a), (b) and (c) alike
    print(f"# throughput — torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads of {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
          f"freed host memory {'kept' if retained else 'returned to the OS'}")
    for name in args.tasks.split(","):
        run_task(name.strip(), args.population, args.steps, args.batch_size, args.reference_genomes, args.repeats,
                 not args.no_compile, [b.strip() for b in args.backends.split(",") if b.strip()] or [None])
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other processes share these CPUs)")


if __name__ == "__main__":
    main()

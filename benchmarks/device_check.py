"""Device check: is the training step right and fast on this device? One script, printing and writing JSON.

    python benchmarks/device_check.py                                   # CUDA, P = 50, the paper's tasks
    python benchmarks/device_check.py --device cpu --population 4 --tasks digits --steps 6   # CI smoke

Per task (real data when the data directory has it, else random data of the task's shape, which
costs the same per step):

* sync_free: ``--steps`` steps of the real unit loop with every host read forbidden between
  checkpoints (and ``torch.cuda.set_sync_debug_mode("error")`` on CUDA);
* equivalence: the population on this device through the ``vmap`` engine in FP32 against the same
  genomes in float64 on the CPU (dropout off, since the devices' RNGs differ), and with dropout
  against one-genome-at-a-time ``GenomeOptimizer`` runs on this device with the same seeds;
* replay_bitwise: the same unit twice, final parameters compared bit for bit, with the default kernels
  and with ``deterministic=True`` (what ``evaluate`` offers when a GPU run must replay exactly);
* step_ms (CUDA events on a GPU), and for a channels-last population the same steps contiguous,
  peak memory, FLOPs per model-step (``FlopCounterMode``), achieved TFLOP/s, and the top kernels of
  a few profiled steps;
* backends: the step time of every engine the model supports (``--backends``; the fused one also
  compiled with ``--compile-model``), side by side with the default engine's.

Then the update's compile count and eager fallbacks, and the paper preset's projected wall time:
generations × seeds × Σ_task steps × the fastest engine's step time at P × the share of member-steps
trained (``--trained-share``: below 1 when pruning stops members early; 1 assumes none; or measured by a
study with ``--study NAME --storage URL``: its generations' stored member-steps), plus the
measured cost of its evaluations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from optsearch.errors import OptsearchError
from optsearch.genome import NAMED
from optsearch.optim import GenomeOptimizer
from optsearch.train import update as update_mod
from optsearch.train.device import HostReadError, forbid_host_reads, precision_mode, preserve_rng
from optsearch.train.population import Population
from optsearch.train.results import PROXY_EXAMPLES
from optsearch.train.tasks import Arrays, get_task
from optsearch.train.spec import RunSpec
from optsearch.train.unit import UnitRun, batch_indices, build_model, data_seed, task_data

ROOT = Path(__file__).resolve().parents[1]
SMOOTH = ("adam", "sgd_momentum", "adamw")


def genomes_for(p: int) -> list:
    """The named genomes, repeated: a population of P members (the step cost does not depend on which)."""
    names = list(NAMED)
    return [NAMED[names[i % len(names)]] for i in range(p)]


def synthetic(task):
    """The task with random data of its shape (when its files are absent): same cost per step."""
    def read(_root):
        rng = np.random.default_rng(0)
        shape = task.input_shape
        x = rng.standard_normal((6000, *shape)).astype(np.float32)
        xt = rng.standard_normal((1000, *shape)).astype(np.float32)
        return Arrays(x, rng.integers(0, task.num_classes, 6000), xt, rng.integers(0, task.num_classes, 1000))
    return dataclasses.replace(task, read=read, embedded=True, val_size=1000, subsample=None)


def load(name: str, dev: torch.device):
    task = get_task(name)
    try:
        return task, task_data(task, device=dev, data_dir=None, subsample=None), "real"
    except (OptsearchError, OSError):
        task = synthetic(task)
        return task, task_data(task, device=dev, data_dir=None, subsample=None), "synthetic"


def unit(task, genomes, steps, dev, *, backend=None, compile_update=False, precision="tf32", dtype=torch.float32,
         checkpoint_every=10):
    """The real unit loop; returns (its population, its results)."""
    built = []

    def make(model, ids):
        built.append(Population([genomes[i] for i in ids], model, steps, backend=backend, members=ids,
                                compile_update=compile_update, precision=precision))
        return built[-1]

    spec = RunSpec(steps=steps, device=str(dev), dtype=dtype, precision=precision, checkpoint_every=checkpoint_every)
    run = UnitRun(0, 1, task, 0, list(range(len(genomes))), make, [[] for _ in genomes], set(), spec,
                  callback=lambda cp: None)
    with preserve_rng(dev):
        results, _ = run.train()
    return built[0], results


def sync_free(task, genomes, steps, dev, compile_update, precision) -> dict:
    unit(task, genomes, 2, dev, compile_update=compile_update, precision=precision)  # compile outside the guard
    reads: list[str] = []
    try:
        with forbid_host_reads() as reads:
            unit(task, genomes, steps, dev, compile_update=compile_update, precision=precision)
        return {"host_reads": len(reads), "ok": not reads}
    except (HostReadError, RuntimeError) as e:  # a CUDA sync raises RuntimeError under the debug mode
        return {"host_reads": max(1, len(reads)), "ok": False, "error": str(e)[:300]}


def replay(task, genomes, steps, dev, compile_update, precision, deterministic) -> bool | str:
    """Whether two runs of one unit end with bit-identical parameters (or why they could not run)."""
    try:
        with precision_mode(precision, deterministic=deterministic):
            pop_a, _ = unit(task, genomes, steps, dev, compile_update=compile_update, precision=precision)
            pop_b, _ = unit(task, genomes, steps, dev, compile_update=compile_update, precision=precision)
        return bool(torch.equal(pop_a.theta, pop_b.theta))
    except RuntimeError as e:  # an op with no deterministic kernel raises under deterministic=True
        return f"error: {str(e)[:200]}"


def equivalence(task, data, dev, steps: int = 4) -> dict:
    genomes = [NAMED[n] for n in SMOOTH]
    no_dropout = dataclasses.replace(task, build_model=lambda: _without_dropout(task.build_model()))
    cpu = torch.device("cpu")
    order = batch_indices(len(data.train_x), 32, steps, data_seed(0, task.name))

    def run(t, device, dtype, backend):
        pop = Population(genomes, build_model(t, 0, device=device, dtype=dtype), steps, backend=backend,
                         precision="fp32")
        for i, idx in enumerate(order):
            pop.step(data.train_x[idx].to(device, dtype), data.train_y[idx].to(device), seed=1000 + i)
        return pop

    def diff(a: dict, b: dict) -> float:
        return max((a[k].double().cpu() - b[k].double().cpu()).abs().max().item() for k in a)

    with precision_mode("fp32"):
        ref = run(no_dropout, cpu, torch.float64, None)
        vmap = run(no_dropout, dev, torch.float32, "vmap")
        with_dropout = run(task, dev, torch.float32, "vmap")
        gap = 0.0
        for row, g in enumerate(genomes):  # one genome at a time on this device, same dropout seeds and layout
            model = build_model(task, 0, device=dev, dtype=torch.float32)
            if with_dropout.channels_last:
                model = model.to(memory_format=torch.channels_last)
            opt = GenomeOptimizer(model.parameters(), g, total_steps=steps)
            for i, idx in enumerate(order):
                torch.manual_seed(1000 + i)
                loss = F.cross_entropy(model(data.train_x[idx].to(dev)), data.train_y[idx].to(dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
            gap = max(gap, diff(with_dropout.parameters_of(row), dict(model.named_parameters())))
    return {"max_abs_diff": max(diff(vmap.parameters_of(r), ref.parameters_of(r)) for r in range(len(genomes))),
            "dropout_vs_one_by_one": gap, "steps": steps}


def _without_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


def supported_backends(task) -> list[str]:
    """The engines that can train this task's model (vmap and looped train any)."""
    from optsearch.train.engines import BACKENDS, batched_supported
    from optsearch.train.fused import fused_supported

    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    ok = {"batched": batched_supported(model), "fused": fused_supported(model)}
    return [b for b in BACKENDS if ok.get(b, True)]


def timed_steps(task, data, genomes, dev, n, compile_update, precision, channels_last=True, *, backend=None,
                compile_model=False, extras=True) -> dict:
    pop = Population(genomes, build_model(task, 0, device=dev, dtype=torch.float32), n + 3,
                     compile_update=compile_update, precision=precision, channels_last=channels_last,
                     backend=backend, compile_model=compile_model)
    order = batch_indices(len(data.train_x), task.batch_size, n + 3, data_seed(0, task.name)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(1)

    def step(i):
        x = data.train_x[order[i]]
        if task.augment is not None:
            x = task.augment(x, gen)
        pop.step(x, data.train_y[order[i]], seed=i)

    for i in range(3):
        step(i)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for i in range(3, n + 3):
        step(i)
    if cuda:
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / n
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        ms = (time.perf_counter() - t0) * 1e3 / n
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if not extras:
        return {"step_ms": ms, "backend": pop.backend}
    acts = top_kernels(step, cuda)
    t0 = time.perf_counter()
    pop.accuracy(data.val_x, data.val_y)
    if cuda:
        torch.cuda.synchronize()
    eval_s = (time.perf_counter() - t0) / max(1, len(data.val_x))
    return {"step_ms": ms, "peak_bytes": peak, "top_kernels": acts, "eval_s_per_example": eval_s,
            "backend": pop.backend, "channels_last": pop.channels_last}


def top_kernels(step, cuda: bool, steps: int = 3, top: int = 8) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for i in range(steps):
            step(i)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0) or 0, reverse=True)[:top]
    return [{"name": e.key[:80], "ms_per_step": (getattr(e, key, 0) or 0) / 1e3 / steps, "calls": e.count}
            for e in rows]


def flops_per_model_step(task) -> int:
    """Forward + backward FLOPs of one model on one batch (FlopCounterMode on the CPU)."""
    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    x = torch.randn(task.batch_size, *task.input_shape)
    y = torch.randint(0, task.num_classes, (task.batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return int(counter.get_total_flops())


def projection(per_task: dict, preset: Path, trained_share: float = 1.0) -> dict:
    cfg = tomllib.loads(preset.read_text())["search"]
    gens, seeds, pop = cfg["generations"], len(cfg["seeds"]), cfg["population"]
    steps, every = cfg["steps"], cfg.get("checkpoint_every", 50)
    missing = [t for t in cfg["tasks"] if t not in per_task]
    total = 0.0
    flops = 0
    for t in cfg["tasks"]:
        if t not in per_task:
            continue
        r = per_task[t]
        train = steps * min(r.get("backends", {}).values(), default=r["step_ms"]) / 1e3 * trained_share
        evals = ((steps // every) * PROXY_EXAMPLES + 5000) * r["eval_s_per_example"]  # proxies + final val
        total += gens * seeds * (train + evals)
        flops += gens * seeds * steps * pop * r["flops_per_model_step"]
    return {"preset": preset.name, "paper_seconds": total, "paper_minutes": total / 60, "tasks_missing": missing,
            "complete": not missing, "paper_flops": flops,
            "trained_share": trained_share,
            "assumes": f"P = {pop} per generation, {trained_share:.0%} of the member-steps of {steps} steps trained "
                       "(1: no pruning), the fastest engine's step time measured here"}


def measured_share(name: str, storage: str | None) -> float:
    """The share of member-steps a study's generations trained, as its workers stored it (pruning's saving)."""
    from optsearch.search.storage import open_existing_study
    from optsearch.search.worker import trained_share

    study = open_existing_study(name, storage)
    share = trained_share(study.get_trials(deepcopy=False))
    if share is None:
        raise SystemExit(f"study {name!r} stored no member-steps (run before they were measured): "
                         "give --trained-share instead")
    return share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--population", type=int, default=50)
    ap.add_argument("--tasks", default="mnist,fashion_mnist,cifar10,digits")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", default="tf32")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="compile the update (auto: on a GPU)")
    ap.add_argument("--json", default="device_check.json")
    ap.add_argument("--preset", default=str(ROOT / "studies" / "paper.toml"))
    ap.add_argument("--backends", default="all",
                    help="engines to time beside the default (comma-separated, 'all' the model supports, 'none')")
    ap.add_argument("--compile-model", action="store_true", help="also time the fused engine compiled")
    ap.add_argument("--trained-share", type=float, default=1.0,
                    help="share of member-steps a generation trains (a pruned study's measured share; 1: none pruned)")
    ap.add_argument("--study", help="take the trained share measured by this study (every generation it stored) "
                    "instead of --trained-share")
    ap.add_argument("--storage", help="the study's storage URL (with --study)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.study:
        args.trained_share = measured_share(args.study, args.storage)
        print(f"trained share measured by study {args.study!r}: {args.trained_share:.1%} of member-steps")
    dev = torch.device(args.device)
    compile_update = args.compile == "on" or (args.compile == "auto" and dev.type == "cuda")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(f"# device check — torch {torch.__version__}, {name}, P = {args.population}, precision {args.precision}, "
          f"compiled update: {compile_update}")
    torch._dynamo.utils.counters.clear()
    report: dict = {"device": name, "torch": torch.__version__, "population": args.population,
                    "precision": args.precision, "tasks": {}}
    genomes = genomes_for(args.population)
    for tname in args.tasks.split(","):
        t0 = time.perf_counter()
        task, data, source = load(tname.strip(), dev)
        with precision_mode(args.precision):
            r = {"data": source, "sync_free": sync_free(task, genomes, args.steps, dev, compile_update, args.precision)}
            r.update(timed_steps(task, data, genomes, dev, args.steps, compile_update, args.precision))
            if r["channels_last"]:
                r["step_ms_contiguous"] = timed_steps(task, data, genomes, dev, args.steps, compile_update,
                                                      args.precision, channels_last=False)["step_ms"]
            wanted = supported_backends(task) if args.backends == "all" else [
                b for b in args.backends.split(",") if b and b != "none"]
            r["backends"] = {r["backend"]: r["step_ms"]}
            for b in wanted:
                for compiled in (False, True) if b == "fused" and args.compile_model else (False,):
                    key = b + (" compiled" if compiled else "")
                    if key not in r["backends"]:
                        r["backends"][key] = timed_steps(task, data, genomes, dev, args.steps, compile_update,
                                                         args.precision, backend=b, compile_model=compiled,
                                                         extras=False)["step_ms"]
        for deterministic in (False, True):
            r["replay_bitwise" + ("_deterministic" if deterministic else "")] = replay(
                task, genomes, args.steps, dev, compile_update, args.precision, deterministic)
        r["equivalence"] = equivalence(task, data, dev)
        r["flops_per_model_step"] = flops_per_model_step(task)
        r["tflops_achieved"] = args.population * r["flops_per_model_step"] / (r["step_ms"] / 1e3) / 1e12
        r["seconds"] = time.perf_counter() - t0
        report["tasks"][task.name] = r
        Path(args.json).write_text(json.dumps(report, indent=1))  # so far: a run stopped at a limit keeps it
        print(f"{task.name:14s} ({source}) {r['backend']:7s} step {r['step_ms']:8.2f} ms  "
              f"{r['tflops_achieved']:6.2f} TFLOP/s  peak {r['peak_bytes'] / 2**30:6.2f} GiB  "
              + (f"(contiguous {r['step_ms_contiguous']:.2f} ms)  " if "step_ms_contiguous" in r else "")
              + f"host reads {r['sync_free']['host_reads']}  replay bitwise {r['replay_bitwise']}, "
              f"deterministic {r['replay_bitwise_deterministic']}  "
              f"vmap vs CPU fp64 {r['equivalence']['max_abs_diff']:.1e}  "
              f"dropout vs one-by-one {r['equivalence']['dropout_vs_one_by_one']:.1e}")
        print("    step ms by engine: " + ", ".join(f"{b} {ms:.2f}" for b, ms in r["backends"].items()))
        for k in r["top_kernels"][:5]:
            print(f"    {k['ms_per_step']:8.3f} ms/step  {k['calls']:5d} calls  {k['name']}")
    stats = torch._dynamo.utils.counters["stats"]
    report["compile"] = {"graphs": int(stats.get("unique_graphs", 0)), "eager_fallbacks": update_mod.EAGER_FALLBACKS}
    report["projection"] = projection(report["tasks"], Path(args.preset), args.trained_share)
    p = report["projection"]
    print(f"update graphs compiled: {report['compile']['graphs']}, eager fallbacks: {update_mod.EAGER_FALLBACKS}")
    print(f"projected {p['preset']} wall time: {p['paper_minutes']:.1f} min at {p['trained_share']:.0%} of "
          "member-steps trained, each task at its fastest engine"
          + ("" if p["complete"] else f" (without {', '.join(p['tasks_missing'])}: not measured here)"))
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()

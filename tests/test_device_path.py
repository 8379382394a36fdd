"""The GPU-ready step, checked on a CPU: no host reads between checkpoints, one compiled update graph,
precomputed coefficient tables, the precision policy, RNG isolation and the device check script."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optsearch.errors import ConfigError
from optsearch.genome import NAMED
from optsearch.genome.primitives import bias_corrections, schedule_factor
from optsearch.train import device as device_mod
from optsearch.train import update as update_mod
from optsearch.train.device import HostReadError, check_precision, eval_chunk, forbid_host_reads, precision_mode
from optsearch.train.evaluate import batch_indices, build_model, data_seed, evaluate
from optsearch.train.population import Population
from optsearch.train.single import train_optimizer
from optsearch.train.spec import RunSpec
from optsearch.train.tasks import crop_flip, get_task, load_data
from optsearch.train.update import PopulationUpdate
from test_population import DROPOUT_MLP, TINY_CNN, break_the_compiler, random_genomes, unchecked

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    task = get_task("digits")
    return task, load_data(task)


def _steps(pop: Population, data, n: int, seed: bool = False) -> list[torch.Tensor]:
    order = batch_indices(len(data.train_x), 64, n, data_seed(0, "digits"))
    return [pop.step(data.train_x[idx], data.train_y[idx], seed=t if seed else None) for t, idx in enumerate(order)]


@pytest.mark.parametrize("task_name, backend", [("digits", "batched"), ("dropout_mlp", "batched"),
                                                ("tiny_cnn", "looped"), ("tiny_cnn", "vmap"), ("tiny_cnn", "fused")])
def test_population_steps_read_nothing_back_even_when_a_member_diverges(digits, task_name, backend):
    task = {"digits": digits[0], "dropout_mlp": DROPOUT_MLP, "tiny_cnn": TINY_CNN}[task_name]
    data = digits[1] if task_name == "digits" else load_data(task)
    genomes = [NAMED["adam"], unchecked(NAMED["adam"], lr_log10=1.0), NAMED["lion"]]
    pop = Population(genomes, build_model(task, 0, device=CPU, dtype=torch.float32), 12, backend=backend)
    with forbid_host_reads() as reads:
        losses = _steps(pop, data, 12, seed=True)
    assert reads == []
    history = torch.stack(losses)
    assert not bool((history[:, 1] <= 50).all())  # member 1 did diverge in these steps
    assert pop.settle() == (1,) and pop.active == (0, 2)


def test_the_guard_catches_a_read(digits):
    task, data = digits
    pop = Population([NAMED["adam"]], build_model(task, 0, device=CPU, dtype=torch.float32), 5)
    with forbid_host_reads() as reads, pytest.raises(HostReadError):
        float(pop.step(data.train_x[:32], data.train_y[:32])[0])
    assert reads == ["__float__"]
    assert float(torch.ones(())) == 1.0  # restored afterwards


def test_a_whole_call_reads_only_at_checkpoints_and_gives_the_same_result():
    genomes = [NAMED["adam"], unchecked(NAMED["adam"], lr_log10=1.0), NAMED["sgd_momentum"]]
    spec = RunSpec(steps=12, subsample=300, device="cpu", checkpoint_every=5, compile_update=False)

    def prune(cp):
        return [2] if cp.step == 10 else None

    free = evaluate(genomes, ["digits"], [0], spec, callback=prune)
    with forbid_host_reads() as reads:
        guarded = evaluate(genomes, ["digits"], [0], spec, callback=prune)
        # (SGD: a non-capturable Adam reads its CPU step count, which is no GPU sync but trips this CPU guard)
        single = train_optimizer("digits", lambda m, t: torch.optim.SGD(m.parameters(), 0.1, momentum=0.9), seed=0,
                                 spec=RunSpec(steps=7, subsample=300, device="cpu", checkpoint_every=3))
    assert reads == []
    assert repr(guarded) == repr(free)  # (repr: NaN accuracies compare unequal)
    assert free.members[1].diverged and free.members[2].pruned and not free.members[0].diverged
    assert math.isfinite(single.fitness)


def test_augmentation_constants_are_made_once(monkeypatch):
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(1) or real(*a, **k))
    augment = crop_flip(4, (-1.0, -2.0, -3.0))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 12, 12)
    with forbid_host_reads() as reads:
        for _ in range(5):
            out = augment(x, gen)
    assert reads == [] and len(made) == 1 and out.shape == x.shape


class _CountingBackend:
    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_one_compiled_graph_for_every_population_size_and_switch(digits, monkeypatch):
    """P from 50 down to 1, through every combination of value clip, norm clip and decay: one graph."""
    counting = _CountingBackend()
    monkeypatch.setattr(update_mod, "COMPILE_BACKEND", counting)
    monkeypatch.setattr(update_mod, "_COMPILED", None)
    monkeypatch.setattr(update_mod, "_COMPILE_FAILED", False)
    torch._dynamo.reset()
    # Newton–Schulz (matmuls, not elementwise) is compiled only into populations that use it: a second graph.
    base = [dataclasses.replace(g, extra_term="none", extra_alpha=0.0) if g.extra_term == "ortho_momentum" else g
            for g in random_genomes(50, seed=11)]
    switches = {"value": dict(clip="value", clip_threshold=0.1), "norm": dict(clip="norm", clip_threshold=1.0),
                "decay": dict(weight_decay=True, wd_log10=-2.0)}
    for value, norm, decay in itertools.product([False, True], repeat=3):
        for p in (50, 20, 7, 2, 1):
            genomes = []
            for i, g in enumerate(base[:p]):  # each switch on for some members (the first one's when P = 1)
                changes = dict(clip="none", weight_decay=False)
                if value and i % 3 == 0:
                    changes.update(switches["value"])
                elif norm and (i % 3 == 1 or (p == 1 and not value)):
                    changes.update(switches["norm"])
                if decay and i % 2 == 0:
                    changes.update(switches["decay"])
                genomes.append(dataclasses.replace(g, **changes))
            upd = PopulationUpdate(genomes, 33, 10, device=CPU, dtype=torch.float32, compile_update=True)
            theta, grad = torch.randn(p, 33), torch.randn(p, 33)
            upd.apply(theta, grad, torch.ones(p, 1, dtype=torch.bool))
            assert upd.eager_fallbacks == 0
    assert counting.graphs == 1
    torch._dynamo.reset()


def test_coefficient_table_holds_every_step_of_the_unit():
    genomes = [NAMED["adam"], dataclasses.replace(NAMED["adamw"], warmup=True, warmup_frac=0.2, cosine_decay=True),
               dataclasses.replace(NAMED["rmsprop"], bias_correction=False)]
    steps = 40
    upd = PopulationUpdate(genomes, 7, steps, device=CPU, dtype=torch.float64)
    assert upd.table.shape == (4, steps, 3, 1)
    for i, g in enumerate(genomes):
        for t in (1, 2, 7, 8, 39, 40):
            bc1, bc2 = bias_corrections(t, g.beta1, g.beta2, g.bias_correction)
            lr_t = g.lr * schedule_factor(t, steps, g.warmup, g.warmup_frac, g.cosine_decay)
            expected = [bc1, bc2, lr_t, 1.0 - lr_t * g.wd]
            got = upd.coefficients(t)
            for k, e in zip(("bc1", "bc2", "lr_t", "decay"), expected):
                assert got[k][i, 0].item() == pytest.approx(e, rel=1e-14, abs=1e-300), (g.formula(), t, k)
    # a step is a view into the table: no arithmetic per step
    assert upd.coefficients(5)["lr_t"].data_ptr() == upd.table[2, 4].data_ptr()
    # past the table's end (a caller stepping longer than planned) it is computed
    assert upd.coefficients(steps + 3)["bc1"].shape == (3, 1)


def test_precision_policy(digits):
    task, data = digits
    with pytest.raises(ConfigError, match="precision"):
        check_precision("fp16", torch.float32)
    with pytest.raises(ConfigError, match="bf16"):
        check_precision("bf16", torch.float64)
    with pytest.raises(ConfigError, match="precision"):
        evaluate([NAMED["adam"]], ["digits"], [0], RunSpec(steps=2, device="cpu", precision="half"))
    genomes = [NAMED["adam"], NAMED["sgd_momentum"]]
    pops = {p: Population(genomes, build_model(task, 0, device=CPU, dtype=torch.float32), 10, precision=p)
            for p in ("fp32", "tf32", "bf16")}
    for pop in pops.values():
        _steps(pop, data, 10)
    seen = []
    handle = pops["bf16"].model[1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    pops["bf16"].model(data.train_x[:4])  # the template (not trained): fp32 outside the context
    with pops["bf16"].forward_context():
        pops["bf16"].model(data.train_x[:4])
    handle.remove()
    assert seen == [torch.float32, torch.bfloat16]
    bf16 = pops["bf16"]
    assert bf16.theta.dtype == torch.float32 and all(s.dtype == torch.float32 for s in bf16.update.state.values())
    assert torch.equal(pops["fp32"].theta, pops["tf32"].theta)  # TF32 changes nothing on a CPU
    gap = (bf16.theta - pops["fp32"].theta).abs().max().item()
    assert 0 < gap < 0.05  # bf16 forward: a different but close trajectory
    assert set(bf16.accuracy(data.val_x, data.val_y).values()) <= {a / len(data.val_x) for a in range(len(data.val_x) + 1)}


@pytest.mark.parametrize("backend", ["vmap", "looped"])
def test_bf16_trains_a_batch_norm_cnn_with_its_norms_in_float32(backend):
    # vmap's batch-norm rule raised on bfloat16 input with per-member float32 weights (CPU and H200)
    data = load_data(TINY_CNN)
    genomes = [NAMED["adam"], NAMED["sgd_momentum"]]
    pops = {p: Population(genomes, build_model(TINY_CNN, 0, device=CPU, dtype=torch.float32), 6, backend=backend,
                          precision=p) for p in ("fp32", "bf16")}
    seen = []
    pops["bf16"].model[2].register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    for pop in pops.values():
        losses = _steps(pop, data, 6, seed=True)
        assert all(torch.isfinite(x).all() for x in losses)
    assert seen and set(seen) == {(torch.float32, torch.float32)}  # the batch norm ran in float32
    gap = (pops["bf16"].theta - pops["fp32"].theta).abs().max().item()
    assert 0 < gap < 0.05


def test_precision_mode_sets_and_restores_the_global_switches():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled())
    with precision_mode("tf32", deterministic=True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    with precision_mode("fp32"):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled()) == before


def test_every_gpu_rng_is_restored(monkeypatch):
    """Dropout seeding reseeds every GPU, so all of their states are saved and restored (faked GPUs here)."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0", "gpu1", "gpu2"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    with device_mod.preserve_rng(CPU):
        torch.rand(10)
    assert restored == [["gpu0", "gpu1", "gpu2"]]
    assert torch.equal(torch.rand(2), expected)


def test_evaluation_chunk_is_sized_to_gpu_memory(monkeypatch):
    assert eval_chunk(CPU, 50, lambda: 1 / 0, 4) == device_mod.CPU_EVAL_CHUNK  # nothing measured on a CPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 10**9, 8 * 10**9))
    assert eval_chunk(torch.device("cuda"), 50, lambda: 1000, 4) == 5000
    assert eval_chunk(torch.device("cuda"), 50, lambda: 10**7, 4) == 32  # never below a floor
    elements = device_mod.activation_elements(get_task("digits").build_model(), torch.zeros(1, 64))
    assert elements == 64 + 64 + 128 * 2 + 10  # input, Flatten, Linear, ReLU, Linear


def test_eager_fallback_is_counted_in_the_result(monkeypatch):
    break_the_compiler(monkeypatch)
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        result = evaluate([NAMED["adam"], NAMED["lion"]], ["digits"], [0],
                          RunSpec(steps=4, subsample=200, device="cpu", compile_update=True))
    assert result.eager_updates == 4
    assert evaluate([NAMED["adam"]], ["digits"], [0], RunSpec(steps=2, subsample=200, device="cpu")).eager_updates == 0


def test_device_check_runs_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--device", "cpu", "--population", "3",
         "--tasks", "digits", "--steps", "6", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    task = report["tasks"]["digits"]
    assert task["sync_free"]["host_reads"] == 0
    assert task["replay_bitwise"] is True
    assert task["equivalence"]["max_abs_diff"] < 1e-4
    assert task["step_ms"] > 0 and task["flops_per_model_step"] > 0
    assert report["compile"]["graphs"] in (0, 1)
    assert set(task["backends"]) == {"batched", "vmap", "looped", "fused"}  # every engine the MLP supports, timed
    assert all(ms > 0 for ms in task["backends"].values()) and "step ms by engine" in proc.stdout
    projection = report["projection"]  # digits is not a paper task: nothing to project from, and it says so
    assert projection["tasks_missing"] == ["mnist", "fashion_mnist", "cifar10"] and not projection["complete"]
    assert "digits" in proc.stdout


def test_precision_is_a_study_setting_passed_to_the_evaluator(monkeypatch):
    from optsearch.search.config import StudyConfig
    from optsearch.search import worker as worker_mod

    base = {"search": {"tasks": ["digits"], "population": 4, "generations": 1}}
    assert StudyConfig.from_dict(base).precision == "tf32"
    cfg = StudyConfig.from_dict({"search": {**base["search"], "precision": "bf16"}})
    assert cfg.precision == "bf16" and cfg.to_dict()["precision"] == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        StudyConfig.from_dict({"search": {**base["search"], "precision": "fp16"}})
    seen = {}
    monkeypatch.setattr(worker_mod, "Pruning", lambda *a, **k: None)
    monkeypatch.setattr("optsearch.train.evaluate.evaluate", lambda *a, **k: seen.update(spec=a[3]))
    fake = type("W", (), {"cfg": cfg, "study": None, "device": "cpu", "data_dir": None})()
    worker_mod.Worker._evaluate(fake, [], [], 0)
    assert seen["spec"].precision == "bf16"
    assert cfg.funnel_spec(device="cpu", data_dir=None).precision == "bf16"  # the funnel and ablation follow it



_FAULTS = """
import ctypes, resource, sys
from optsearch.train import device

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
if sys.argv[1] == "retain":
    assert device.retain_freed_host_memory()

def step():  # a step's temporaries: eight 1 MiB blocks written and freed (malloc directly: nothing else between)
    blocks = [libc.malloc(1 << 20) for _ in range(8)]
    for b in blocks:
        libc.memset(b, 1, 1 << 20)
    for b in blocks:
        libc.free(b)

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc only")
def test_freed_host_memory_is_kept_for_the_next_step():
    """Megabyte temporaries come back from the heap without page faults (8 MiB a round is 2,048 pages, which
    glibc's default hands back to the OS and faults in again, zeroed, each round)."""
    def faults(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        return float(out.stdout)

    default, retained = faults("default"), faults("retain")
    assert default > 1000  # what a training step pays without it (else this test shows nothing)
    assert retained < 100, (default, retained)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc only")
def test_training_a_unit_on_the_cpu_retains_freed_host_memory():
    code = ("from optsearch.genome import NAMED; from optsearch.train import device; "
            "from optsearch.train.evaluate import evaluate; from optsearch.train.spec import RunSpec; "
            "print(device._RETAINED, end=' '); "
            "evaluate([NAMED['adam']], ['digits'], spec=RunSpec(steps=2, device='cpu', compile_update=False)); "
            "print(device._RETAINED)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "True"]


def test_a_user_tuned_malloc_is_left_alone():
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "1000000"}
    code = "from optsearch.train.device import retain_freed_host_memory as r; print(r())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"

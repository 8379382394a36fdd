"""The device policy of a training call: precision, determinism, RNG isolation, evaluation chunks, host reads,
and on the CPU, freed host memory kept for the next step (:func:`retain_freed_host_memory`).

Precision (``[search] precision``):

* ``fp32``: every matmul and convolution in full FP32 (the reference; what equivalence checks use).
* ``tf32`` (the default): FP32 tensors, but CUDA matmuls and convolutions may use TF32 tensor cores
  (10-bit mantissa inputs, FP32 accumulation). It changes nothing on a CPU and is faster on a GPU
  (docs/measurements.md) while parameters, gradients and optimizer state stay FP32; the rounding it adds
  is far below the run-to-run noise of a fitness (initialisation and batch order move accuracies by
  points), so rankings of genomes do not depend on it.
* ``bf16``: additionally runs the forward pass (and so its backward) under bfloat16 autocast, batch
  norms in float32; parameters and optimizer state stay FP32. The fastest on a GPU, but activations keep
  8 bits of mantissa.

Deterministic mode is opt-in: it asks torch for deterministic kernels (slower, and some ops raise
without one), for when a run must be replayed bit for bit on a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from typing import Callable, Iterator

import torch
from torch import nn

from optsearch.train.spec import DEFAULT_PRECISION, PRECISIONS, check_precision  # declared once, torch-free

CPU_EVAL_CHUNK = 1024
"""Examples per evaluation forward pass on a CPU (memory is not the limit there)."""
CUDA_EVAL_MEMORY_FRACTION = 0.25
"""Share of the GPU's free memory one evaluation chunk's activations may take."""


def forward_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for ``bf16`` (the forward pass only: callers keep backward and update outside)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def precision_mode(precision: str, *, deterministic: bool = False) -> Iterator[None]:
    """Set the global TF32 and determinism switches for a training call, and restore them afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False  # algorithm choice by timing would make runs differ
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible matmuls
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
HOST_MMAP_THRESHOLD = 32 << 20
"""Host blocks below this come from the heap and are reused (glibc's ceiling for the mmap threshold)."""
_RETAINED: bool | None = None


def retain_freed_host_memory() -> bool:
    """Keep freed host memory for reuse instead of handing it back to the OS (glibc only; once per process).

    A CPU training step allocates and frees megabyte-sized temporaries (activations, the update's
    ``[P, D]`` terms). glibc returns a freed block at the top of its heap to the OS whenever more than
    twice its adaptive mmap threshold is free there, so every step faults the same pages in again and
    the kernel zeroes each one: for the digits population that page work is comparable to the update's
    arithmetic (docs/measurements.md). Fixing the thresholds keeps those pages mapped; the price is that
    the process's resident memory stays at its peak, which a training worker reaches anyway.
    Does nothing where the user tuned malloc already (``MALLOC_*_`` variables) or the C library is not
    glibc (a preloaded jemalloc or tcmalloc ignores ``mallopt`` anyway). Returns whether it is in effect.
    """
    global _RETAINED
    if _RETAINED is None:
        _RETAINED = False
        user_tuned = any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"))
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and not user_tuned:
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            _RETAINED = bool(mallopt(_M_MMAP_THRESHOLD, HOST_MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _RETAINED


@contextlib.contextmanager
def preserve_rng(device: torch.device) -> Iterator[None]:
    """Leave the caller's CPU RNG and *every* GPU's RNG as they were (dropout seeding reseeds them all).

    ``torch.manual_seed`` seeds the CPU and all CUDA devices, so restoring one GPU is not enough.
    """
    cuda = torch.cuda.is_available() and (device.type == "cuda" or torch.cuda.is_initialized())
    cpu_state = torch.get_rng_state()
    gpu_states = torch.cuda.get_rng_state_all() if cuda else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if gpu_states is not None:
            torch.cuda.set_rng_state_all(gpu_states)


@torch.no_grad()
def activation_elements(model: nn.Module, example: torch.Tensor) -> int:
    """Elements of every leaf module's output for one example (an upper bound on live activations)."""
    total = [0]

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return max(1, total[0] + example.numel())


def eval_chunk(device: torch.device, members: int, elements_per_example: Callable[[], int], element_size: int) -> int:
    """Examples per evaluation pass: fixed on a CPU; on a GPU, sized so the chunk's activations for all
    members fit in a quarter of the free memory (read once per call, at a checkpoint)."""
    if device.type != "cuda":
        return CPU_EVAL_CHUNK
    free, _total = torch.cuda.mem_get_info(device)
    per_example = max(1, members) * elements_per_example() * element_size
    return int(min(8192, max(32, free * CUDA_EVAL_MEMORY_FRACTION // per_example)))


class HostReadError(RuntimeError):
    """A tensor's value was read back to the host where the training step must not read any."""


_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "__complex__")


class _Guard:
    active = 0  # nesting depth of forbid_host_reads
    allowed = 0  # nesting depth of host_reads_allowed inside it
    sync_mode: int | str = 0


def _set_sync_mode(mode: int | str) -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_sync_debug_mode(mode)


@contextlib.contextmanager
def host_reads_allowed() -> Iterator[None]:
    """Where the unit loop may read values back (setup, checkpoints, final evaluation).

    A no-op unless :func:`forbid_host_reads` is active; then reads (and, on CUDA, syncs) are allowed
    again inside, so a check can wrap a whole training call and catch reads in its steps only.
    """
    if not _Guard.active:
        yield
        return
    _Guard.allowed += 1
    _set_sync_mode(0)
    try:
        yield
    finally:
        _Guard.allowed -= 1
        if not _Guard.allowed:
            _set_sync_mode("error")


@contextlib.contextmanager
def forbid_host_reads() -> Iterator[list[str]]:
    """Make every Python-level read of a tensor's value raise :class:`HostReadError`, except inside
    :func:`host_reads_allowed`.

    On a CPU this is the test that the step loop asks for no value; on CUDA it also sets
    ``torch.cuda.set_sync_debug_mode("error")``, which catches syncs made inside torch's C++.
    Yields the list of attempted reads (each raised as well).
    """
    seen: list[str] = []
    saved = {name: torch.Tensor.__dict__.get(name) for name in _READS}  # None: inherited from the C base
    original = {name: getattr(torch.Tensor, name) for name in _READS}

    def make(name: str):
        def read(self: torch.Tensor, *args: object, **kwargs: object) -> object:
            if _Guard.allowed:
                return original[name](self, *args, **kwargs)
            seen.append(name)
            raise HostReadError(f"host read Tensor.{name} inside a sync-free region")
        return read

    for name in _READS:
        setattr(torch.Tensor, name, make(name))
    _Guard.active += 1
    outer_allowed, _Guard.allowed = _Guard.allowed, 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        _Guard.sync_mode = torch.cuda.get_sync_debug_mode()
    _set_sync_mode("error")
    try:
        yield seen
    finally:
        _Guard.active -= 1
        _Guard.allowed = outer_allowed
        _set_sync_mode(_Guard.sync_mode)
        for name, fn in saved.items():
            if fn is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, fn)


__all__ = [
    "CPU_EVAL_CHUNK", "DEFAULT_PRECISION", "HostReadError", "PRECISIONS", "activation_elements", "check_precision",
    "eval_chunk", "forbid_host_reads", "forward_context", "host_reads_allowed", "precision_mode", "preserve_rng",
    "retain_freed_host_memory",
]

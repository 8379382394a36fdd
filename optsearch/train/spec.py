"""How a unit is trained, as one frozen object: the contract between every caller and the training loop.

The search's workers, the funnel, the ablation and the benchmark all train through
:func:`optsearch.train.evaluate.evaluate` (and :func:`optsearch.train.single.train_optimizer` for
non-genome optimizers). They used to unpack their settings into a dozen keywords at each call site,
and those lists drifted apart (the funnel and the ablation once ran at the default precision whatever
the study said). Now each caller builds one :class:`RunSpec` — from the study config, the benchmark
config, or by hand — and the loop takes it whole; a setting added here reaches every caller at once.

Every default is declared once, as a field default here; the study config takes its defaults from these
fields. The module imports no torch, so a config can be read and checked without it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from optsearch.errors import ConfigError

if TYPE_CHECKING:
    import torch

SPLITS = ("val", "test")
DTYPES = ("float32", "float64")
"""Parameter dtypes a run may use (float64 for exactness checks)."""
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
DEFAULT_PRECISION = "tf32"
"""TF32 changes nothing on a CPU and is faster on GPUs; see :mod:`optsearch.train.device`."""


@dataclass(frozen=True)
class RunSpec:
    """The budget and the device policy of a training call (everything but *what* is trained, and on which seeds).

    Attributes:
        steps, batch_size: the budget per unit (None: each task's own).
        subsample: training examples kept (see :func:`optsearch.train.tasks.load_data`).
        device: ``cpu``, ``cuda``, ``cuda:K`` or ``auto`` (None is ``auto``: CUDA when available).
        data_dir: the real datasets' folder (None: ``$OPTSEARCH_DATA_DIR``, else torchvision's download path).
        split: ``val`` for the search and the funnel; ``test`` only for the benchmark's record.
        dtype: parameter dtype, ``float32`` or ``float64``.
        precision: ``fp32``, ``tf32`` or ``bf16`` (see :mod:`optsearch.train.device`).
        deterministic: ask torch for deterministic kernels (a GPU run then replays bit for bit; slower).
        checkpoint_every: steps between mid-unit checkpoints (0: only at each unit's end).
        compile_update: compile the population update; None decides by the call's size
            (:func:`optsearch.train.evaluate.auto_compile`).
        backend: the population engine (None: chosen per model and device).
        compile_model: compile the population's forward and backward (``torch.compile(fullgraph=True)``; the
            ``fused`` engine pads P to a few fixed sizes so retiring members does not recompile).
        stop_diverged: a member that diverged is not trained on later units (its fitness is already the
            worst); the benchmark turns it off, since a paired comparison needs every seed scored.
    """

    steps: int | None = None
    batch_size: int | None = None
    subsample: int | None = None
    device: str | None = None
    data_dir: str | None = None
    split: str = "val"
    dtype: str = "float32"
    precision: str = DEFAULT_PRECISION
    deterministic: bool = False
    checkpoint_every: int = 50
    compile_update: bool | None = None
    backend: str | None = None
    compile_model: bool = False
    stop_diverged: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str):  # accept torch.float64 as well as "float64"
            object.__setattr__(self, "dtype", str(self.dtype).removeprefix("torch."))

    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with some settings changed (``dataclasses.replace``; the copy is validated when used)."""
        return replace(self, **changes)

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.dtype)

    def torch_device(self) -> "torch.device":
        """The device, resolved (``auto`` → CUDA when available, else CPU) and checked against this machine."""
        import torch

        return torch.device(resolve_device(self.device))

    def validate(self) -> "RunSpec":
        """Raise a one-line :class:`ConfigError` for any setting the loop cannot run; returns ``self``."""
        for name in ("steps", "batch_size", "subsample"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        ce = self.checkpoint_every
        if isinstance(ce, bool) or not isinstance(ce, int) or ce < 0:
            raise ConfigError(f"checkpoint_every must be an integer ≥ 0, got {ce!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_precision(self.precision, self.dtype)
        for name in ("deterministic", "stop_diverged", "compile_model"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.compile_update is not None and not isinstance(self.compile_update, bool):
            raise ConfigError(f"compile_update must be true, false or None, got {self.compile_update!r}")
        if self.backend is not None:
            from optsearch.train.engines import BACKENDS

            if self.backend not in BACKENDS:
                raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for stored headers and reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_precision(precision: str, dtype: "str | torch.dtype") -> str:
    """A known precision, and ``bf16`` only with float32 parameters (autocast keeps them and the state FP32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and str(dtype).removeprefix("torch.") != "float32":
        raise ConfigError(f"precision 'bf16' needs float32 parameters, got {dtype}")
    return precision


def check_device_string(spec: Any) -> str:
    """The device *string* a config or CLI may name: ``auto``, ``cpu``, ``cuda`` or ``cuda:K`` (no torch needed)."""
    ok = isinstance(spec, str) and (spec in ("auto", "cpu", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit()))
    if not ok:
        raise ConfigError(f"'device' must be auto, cpu, cuda or cuda:K, got {spec!r}")
    return spec


def resolve_device(spec: "str | torch.device | None") -> str:
    """``auto``/None → ``cuda`` when available, else ``cpu``; a CUDA device this machine lacks is an error."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = check_device_string("auto" if spec is None else spec)
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available on this machine")
        index = spec.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 …)")
    return spec


__all__ = ["DEFAULT_PRECISION", "DTYPES", "PRECISIONS", "RunSpec", "SPLITS", "check_device_string", "check_precision", "resolve_device"]

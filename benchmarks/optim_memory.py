"""Peak temporary memory of one ``GenomeOptimizer.step``, per named genome, loop and for-each paths.

    python benchmarks/optim_memory.py                 # 1M float32 parameters in 4 tensors, CPU
    python benchmarks/optim_memory.py --params 4000000 --json out.json

What is counted: every tensor storage an operator allocates while ``step`` runs (a
``TorchDispatchMode`` sees each op's outputs; an output sharing its storage with an input is a view or
an in-place result and is not new), held until the last tensor using it is freed. The peak of that
live total, divided by the parameters' own bytes, is the column "peak temp / params": 1.0 means the
step needed one extra parameter-sized buffer at its worst moment. State buffers (m, v, μ) are
allocated on the first step, so the third step is measured. Allocator caching and fragmentation are
not counted: this is what the update asks for, independent of device; on a GPU,
``torch.cuda.max_memory_allocated`` around the same step measures the same quantity plus caching.
"""

from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optsearch.genome import NAMED, Genome  # noqa: E402
from optsearch.genome.primitives import PRIMITIVES  # noqa: E402
from optsearch.optim import GenomeOptimizer  # noqa: E402


class LiveBytes(TorchDispatchMode):
    """Tracks bytes of storages allocated inside the mode that are still referenced; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage data_ptr -> [nbytes, live tensors using it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr in self._refs:
                self._refs[ptr][1] += 1
            elif ptr in inputs or st.nbytes() == 0:
                continue  # a view of, or an in-place result on, a tensor allocated elsewhere
            else:
                self._refs[ptr] = [st.nbytes(), 1]
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, ptr)
        return out

    def _release(self, ptr: int) -> None:
        ref = self._refs.get(ptr)
        if ref is None:
            return
        ref[1] -= 1
        if ref[1] == 0:
            self.live -= ref[0]
            del self._refs[ptr]


def genomes() -> dict[str, Genome]:
    """The named genomes plus one genome per primitive that no named genome uses (every term measured)."""
    out = dict(NAMED)
    used = {t for g in NAMED.values() for t in g.terms}
    for name in PRIMITIVES:
        if name not in used:
            out[f"only_{name}"] = Genome.single(name)
    return out


def measure(genome: Genome, n: int, foreach: bool, steps: int = 3) -> float:
    """Peak temporary bytes of the last of ``steps`` steps over the parameters' bytes."""
    torch.manual_seed(0)
    sizes = [n // 2, n // 4, n // 8, n - n // 2 - n // 4 - n // 8]
    params = [torch.randn(s) for s in sizes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = GenomeOptimizer(params, genome, total_steps=100, foreach=foreach)
    for _ in range(steps - 1):
        opt.step()
    mode = LiveBytes()
    with mode:
        opt.step()
    return mode.peak / sum(p.numel() * p.element_size() for p in params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1_000_000, help="number of float32 parameters")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args(argv)
    rows = {}
    print(f"{'genome':<22} {'loop':>6} {'foreach':>8}   (peak temp / params)")
    for name, g in genomes().items():
        rows[name] = {"loop": measure(g, a.params, False), "foreach": measure(g, a.params, True)}
        print(f"{name:<22} {rows[name]['loop']:>6.2f} {rows[name]['foreach']:>8.2f}")
    worst = {k: max(r[k] for r in rows.values()) for k in ("loop", "foreach")}
    print(f"{'worst':<22} {worst['loop']:>6.2f} {worst['foreach']:>8.2f}")
    if a.json:
        a.json.write_text(json.dumps({"params": a.params, "peak_temp_over_params": rows, "worst": worst}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

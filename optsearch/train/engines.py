"""The three ways a population computes its members' losses and gradients.

Each engine reads a population's flat ``[P, D]`` parameter buffer through per-parameter views and
writes each member's gradient into its row of the gradient buffer; all three share the population's
optimizer state and batched update (:mod:`optsearch.train.update`).

* ``batched``: an ``nn.Sequential`` MLP as ``baddbmm`` over the stacked weights: one matmul per
  layer for the whole population (small models and GPUs).
* ``vmap``: any model, ``vmap(grad(functional_call))`` over the members (CNNs on GPUs; per-member
  BatchNorm buffers batched along).
* ``looped``: each member's forward/backward in turn, its parameters and gradients views of row i
  (compute-bound CNNs on a CPU, where batched convolutions are slower than one at a time).
* ``fused``: an ``nn.Sequential`` CNN or MLP as one wide network in the HFTA layout
  (:mod:`optsearch.train.fused`): grouped convolutions, one batch norm over all members' channels,
  batched matmuls; optionally compiled as one forward/backward graph over a padded population.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optsearch.errors import ConfigError
from optsearch.train.fused import ELEMENTWISE, draw_masks, dropout_shapes, fused_forward, fused_losses, padded_size

BACKENDS: tuple[str, ...] = ("batched", "vmap", "looped", "fused")

FUSED_COMPILE_BACKEND: Any = "inductor"
"""The ``torch.compile`` backend of the fused step (tests use ``aot_eager``: the same graphs, no codegen)."""


def batched_supported(model: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of Linear layers, Flatten, Dropout and elementwise activations."""
    if not isinstance(model, nn.Sequential) or any(True for _ in model.buffers()):
        return False
    if not all(p.requires_grad for p in model.parameters()):
        return False
    return all(isinstance(m, (nn.Linear, nn.Flatten, nn.Dropout, *ELEMENTWISE)) for m in model)


def choose_backend(model: nn.Module, device: torch.device | str) -> str:
    """The fastest engine for this model on this device (`benchmarks/throughput.py` measures the choice).

    Small MLPs: ``batched`` matmuls anywhere. Convolutional models: ``looped`` on a CPU, where they
    are compute-bound and grouped/vmapped convolutions are 1.5–3× slower than one model at a time;
    ``vmap`` on a GPU, where one small CNN cannot fill the device. Anything else: ``vmap``.
    (The looped engine runs channels-last when the population asks for it.)
    """
    if batched_supported(model):
        return "batched"
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return "looped" if has_conv and torch.device(device).type == "cpu" else "vmap"


def norms_in_float32(model: nn.Module) -> None:
    """Run the model's batch norms in float32 under bf16 autocast (usual mixed-precision practice).

    Needed under vmap, whose batch-norm rule multiplies the bfloat16 normalised input by each member's
    float32 weight and raises (on a CPU in the forward pass, on an H200 in the backward).
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and _float32_input not in m._forward_pre_hooks.values():
            m.register_forward_pre_hook(_float32_input)


def _float32_input(_module: nn.Module, args: tuple) -> tuple:
    """Half-precision input to float32; anything else (outside autocast, float64 models) as it is."""
    return tuple(a.float() if torch.is_tensor(a) and a.dtype in (torch.bfloat16, torch.float16) else a for a in args)


def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def prepare_input(pop: Any, x: torch.Tensor) -> torch.Tensor:
    if pop.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class Engine:
    """Computes every active member's loss and writes its gradient into its row of ``pop.grad``."""

    def __init__(self, pop: Any):
        self.pop = pop
        self.rebuild()

    def rebuild(self) -> None:
        """Refresh views after the population's buffers were replaced (members retired)."""

    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, seed: int | None) -> torch.Tensor:
        """Per-member training losses ``[A]`` (gradients land in ``pop.grad``)."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-member outputs ``[A, N, C]`` in the model's current mode."""
        raise NotImplementedError


class BatchedEngine(Engine):
    """The MLP as one ``baddbmm`` per layer over the stacked ``[A, out, in]`` weights.

    Activations are kept features-first, ``[A, features, batch]``: then ``W @ h`` needs no
    transposed weights, each weight gradient comes out in the parameter's own layout, and the
    softmax runs along a strided dimension of size C with the batch contiguous (faster than batch-first,
    where a softmax over 10 classes per row is costly; docs/measurements.md).
    """

    def rebuild(self) -> None:
        pop = self.pop
        views = pop.row_views(pop.theta)
        self.leaves = {n: v.detach().requires_grad_() for n, v in views.items()}
        self.leaf_list = list(self.leaves.values())
        self.grad_views = list(pop.row_views(pop.grad).values())

    def _forward(self, x: torch.Tensor, params: dict[str, torch.Tensor], seed: int | None) -> torch.Tensor:
        """Logits ``[A, C, B]``."""
        a = len(self.pop.members)
        h, batched = x, False  # x: [B, ...] shared by all members; after the first Linear h is [A, F, B]
        if seed is not None and self.pop.dropout and self.pop.model.training:
            torch.manual_seed(seed)
        for k, m in enumerate(self.pop.model):
            if isinstance(m, nn.Linear):
                if not batched:
                    if h.dim() != 2:
                        raise ConfigError("the batched backend needs flat inputs at the first Linear layer; "
                                          "add nn.Flatten or use backend='vmap'")
                    h, batched = h.t().expand(a, *h.t().shape), True
                w, b = params[f"{k}.weight"], params.get(f"{k}.bias")
                h = torch.bmm(w, h) if b is None else torch.baddbmm(b.unsqueeze(2), w, h)
            elif isinstance(m, nn.Flatten) and batched:
                continue  # features are already flat after a Linear layer
            elif isinstance(m, nn.Dropout) and m.training and m.p > 0:
                # One [B, F] mask, drawn exactly as each member's own nn.Dropout would draw it from the same
                # seed, shared by all members: a member's run does not depend on the population.
                shape = (h.shape[2], h.shape[1]) if batched else h.shape
                keep = torch.empty(shape, dtype=h.dtype, device=h.device).bernoulli_(1 - m.p).div_(1 - m.p)
                h = h * (keep.t() if batched else keep)
            else:
                h = m(h)
        return h

    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, seed: int | None) -> torch.Tensor:
        with torch.enable_grad():
            with self.pop.forward_context():
                logits = self._forward(x, self.leaves, seed)
                losses = F.cross_entropy(logits, y.expand(logits.shape[0], -1), reduction="none").mean(1)
            grads = torch.autograd.grad(losses.sum(), self.leaf_list)
        torch._foreach_copy_(self.grad_views, list(grads))
        return losses.detach()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, self.pop.row_views(self.pop.theta), None).transpose(1, 2)


class VmapEngine(Engine):
    """Any model: ``vmap`` over ``functional_call`` with per-member parameters and buffers."""

    def __init__(self, pop: Any):
        from torch.func import functional_call, grad_and_value, vmap

        model = pop.model

        def loss(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

        def forward(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, (params, buffers), (x,))

        # randomness="same": every member draws the same dropout masks (common random numbers).
        self._grad = vmap(grad_and_value(loss), in_dims=(0, 0, None, None), randomness="same")
        self._forward = vmap(forward, in_dims=(0, 0, None), randomness="same")
        super().__init__(pop)

    def rebuild(self) -> None:
        self.grad_views = self.pop.row_views(self.pop.grad)

    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, seed: int | None) -> torch.Tensor:
        pop = self.pop
        if seed is not None and pop.dropout:
            torch.manual_seed(seed)
        with pop.forward_context():  # forward and backward in one call here: autocast's ops decide both
            grads, losses = self._grad(pop.row_views(pop.theta), pop.buffers, prepare_input(pop, x), y)
        torch._foreach_copy_(list(self.grad_views.values()), [grads[n] for n in self.grad_views])
        return losses.detach()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.pop.row_views(self.pop.theta), self.pop.buffers, prepare_input(self.pop, x))


class LoopedEngine(Engine):
    """Each member's forward/backward in turn on views of its rows; the update stays batched."""

    def rebuild(self) -> None:
        pop = self.pop
        self.leaves = [{n: v.detach().requires_grad_() for n, v in pop.member_views(pop.theta, r).items()}
                       for r in range(len(pop.members))]
        self.grad_views = [list(pop.member_views(pop.grad, r).values()) for r in range(len(pop.members))]

    def _buffers(self, row: int) -> dict[str, torch.Tensor]:
        return {n: b[row] for n, b in self.pop.buffers.items()}

    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, seed: int | None) -> torch.Tensor:
        from torch.func import functional_call

        pop = self.pop
        x = prepare_input(pop, x)
        losses = []
        for row, params in enumerate(self.leaves):
            if seed is not None and pop.dropout:
                torch.manual_seed(seed)
            with torch.enable_grad():
                with pop.forward_context():
                    out = functional_call(pop.model, (params, self._buffers(row)), (x,))
                    loss = F.cross_entropy(out, y)
                grads = torch.autograd.grad(loss, list(params.values()))
            torch._foreach_copy_(self.grad_views[row], list(grads))
            losses.append(loss.detach())
        return torch.stack(losses)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        pop = self.pop
        x = prepare_input(pop, x)
        return torch.stack([functional_call(pop.model, (params, self._buffers(row)), (x,))
                            for row, params in enumerate(self.leaves)])


class FusedEngine(Engine):
    """The population as one wide network (:mod:`optsearch.train.fused`); leaves are views of ``pop.theta``.

    With ``pop.compile_model`` the loss (forward; AOTAutograd compiles its backward) runs under
    ``torch.compile(fullgraph=True)`` on a population padded to :func:`padded_size` rows: ``pop.theta``,
    ``pop.grad`` and ``pop.buffers`` become the first A rows of padded buffers whose extra rows are dead
    (zero parameters, their losses masked out of the sum), so retiring members recompiles nothing until
    the population fits a smaller padded size.
    """

    def __init__(self, pop: Any):
        from optsearch.train.fused import fused_supported

        if not fused_supported(pop.model):
            raise ConfigError("the fused backend needs an nn.Sequential of Conv1d/Conv2d, BatchNorm, pooling, "
                              "Flatten, Unflatten, Linear, Dropout and activation layers")
        self._dropout_shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self._compiled = None
        if pop.compile_model:
            import functools

            from optsearch.train.update import quiet_cuda_home_probe

            quiet_cuda_home_probe()
            self._compiled = torch.compile(functools.partial(fused_losses, pop.model), fullgraph=True,
                                           backend=FUSED_COMPILE_BACKEND)
        super().__init__(pop)

    def rebuild(self) -> None:
        pop = self.pop
        a = len(pop.members)
        self.live: torch.Tensor | None = None
        if self._compiled is not None:
            cap = padded_size(a)

            def pad(t: torch.Tensor) -> torch.Tensor:
                full = t.new_zeros(cap, *t.shape[1:])
                full[:a] = t
                return full

            theta, grad = pad(pop.theta), pad(pop.grad)
            buffers = {n: pad(b) for n, b in pop.buffers.items()}
            pop.theta, pop.grad = theta[:a], grad[:a]
            pop.buffers = {n: b[:a] for n, b in buffers.items()}
            self.live = torch.arange(cap, device=pop.device) < a
        else:
            theta, grad, buffers = pop.theta, pop.grad, pop.buffers
        self.buffers = buffers
        self.leaves = {n: v.detach().requires_grad_() for n, v in pop.row_views(theta).items()}
        self.leaf_list = list(self.leaves.values())
        self.grad_views = list(pop.row_views(grad).values())

    def _masks(self, x: torch.Tensor, seed: int | None) -> list[torch.Tensor] | None:
        pop = self.pop
        if not (pop.dropout and pop.model.training):
            return None
        key = tuple(x.shape)
        if key not in self._dropout_shapes:
            self._dropout_shapes[key] = dropout_shapes(pop.model, key)
        if seed is not None:
            torch.manual_seed(seed)
        return draw_masks(pop.model, self._dropout_shapes[key], pop.dtype, x.device)

    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, seed: int | None) -> torch.Tensor:
        pop = self.pop
        masks = self._masks(x, seed)
        with torch.enable_grad():
            with pop.forward_context():
                if self._compiled is not None:
                    losses, total = self._compiled(self.leaves, self.buffers, x, y, masks, self.live)
                else:
                    losses, total = fused_losses(pop.model, self.leaves, self.buffers, x, y, masks)
            grads = torch.autograd.grad(total, self.leaf_list)
        torch._foreach_copy_(self.grad_views, list(grads))
        return losses.detach()[:len(pop.members)]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        pop = self.pop
        return fused_forward(pop.model, pop.row_views(pop.theta), pop.buffers, x, self._masks(x, None),
                             pop.model.training)


ENGINES: dict[str, type[Engine]] = {"batched": BatchedEngine, "vmap": VmapEngine, "looped": LoopedEngine,
                                    "fused": FusedEngine}

__all__ = ["BACKENDS", "ENGINES", "Engine", "batched_supported", "choose_backend", "has_dropout", "prepare_input"]

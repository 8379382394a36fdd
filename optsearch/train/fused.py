"""The fused population layout (HFTA): P copies of one ``nn.Sequential`` CNN as one wide network.

Why: a population of small models cannot fill a GPU one by one, and under ``vmap`` every conv↔pool
boundary reshapes and copies activations both ways. Here the activations keep one layout end to end,
so nothing is reshaped through a copy and the whole step is one graph that ``torch.compile`` can fuse:

* channels ``[N, P·C, *spatial]``: member p owns channels ``p·C … p·C+C−1``. The first convolution is
  dense on the shared input (its weights stacked to ``P·C_out`` output channels); later ones run with
  ``groups = P`` (times the layer's own groups). One batch norm over the ``P·C`` channels is exactly
  per-member batch norm (statistics are per channel); pooling and activations need nothing.
* features ``[N, P, F]`` after ``Flatten`` (a view) or after a first ``Linear`` on the shared input (one
  dense matmul with the stacked ``[P·out, in]`` weights); ``[P, N, F]`` after a ``Linear`` on
  per-member features (one ``baddbmm``, reading ``[N, P, F]`` through a transposed view). Its backward
  copies the flattened features' gradient once into the channels layout (the one activation copy of a
  step, the smallest); a grouped width-1 convolution would avoid it but ran 8× slower than ``bmm`` on a CPU
  (MNIST's fc layer, P = 8, oneDNN).
* logits ``[P, N, classes]``; the loss is the sum of the members' mean losses, so ordinary autograd gives
  each member the gradient of its own loss.

Dropout: each layer's mask is drawn with the member's own shape, in layer order, from torch's global RNG
(seeded by the caller), exactly as one member's ``nn.Dropout`` draws it on a contiguous input, and shared
by every member (common random numbers, as the other engines do). Masks are drawn before the forward
pass (:func:`dropout_shapes` finds their shapes), so a compiled forward takes them as
inputs and draws nothing itself.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from optsearch.errors import ConfigError

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Mish, nn.Identity)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

PAD_SIZES_BASE = (1, 2, 3)
"""Padded population sizes are these times powers of two (1, 2, 3, 4, 6, 8, 12, 16, 24, …): at most a
third of a compiled step is dead rows, and a population retires through a handful of graphs."""


def padded_size(members: int) -> int:
    """The smallest padded size ≥ ``members`` (a compiled fused step sees only these sizes)."""
    k = 1
    while True:
        for b in PAD_SIZES_BASE:
            if b * k >= members:
                return b * k
        k *= 2


def fused_supported(model: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of the layers the fused layout knows, trainable throughout."""
    if not isinstance(model, nn.Sequential) or not all(p.requires_grad for p in model.parameters()):
        return False
    for m in model:
        if isinstance(m, _CONVS):
            if m.padding_mode != "zeros":
                return False
        elif isinstance(m, _NORMS):
            if m.track_running_stats and m.momentum is None:  # cumulative averages need a host-side count
                return False
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                return False
        elif not isinstance(m, (nn.Linear, nn.Unflatten, nn.Dropout, *_POOLS, *ELEMENTWISE)):
            return False
    return True


def dropout_shapes(model: nn.Module, x_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """One member's input shape at each active ``nn.Dropout`` (p > 0), in layer order, for a batch of ``x_shape``.

    Found by one example through the template model in eval mode (no randomness drawn, no batch-norm
    statistic touched); the meta device would do without arithmetic but imports seconds of decompositions.
    """
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: shapes.append((x_shape[0], *args[0].shape[1:])))
             for m in model if isinstance(m, nn.Dropout) and m.p > 0]
    was_training = model.training
    first = next(model.parameters())
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *x_shape[1:], dtype=first.dtype, device=first.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def draw_masks(model: nn.Module, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype,
               device: torch.device) -> list[torch.Tensor]:
    """The scaled keep-masks a member's own dropout layers would draw now, one per layer in order."""
    probs = [m.p for m in model if isinstance(m, nn.Dropout) and m.p > 0]
    return [torch.empty(s, dtype=dtype, device=device).bernoulli_(1 - p).div_(1 - p) for s, p in zip(shapes, probs)]


def fused_forward(model: nn.Sequential, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                  x: torch.Tensor, masks: Sequence[torch.Tensor] | None, training: bool) -> torch.Tensor:
    """Logits ``[P, N, classes]`` of every member on the shared batch ``x``.

    Args:
        params: each parameter stacked over members, ``[P, *shape]`` (views of the population's rows).
        buffers: batch-norm buffers stacked the same way; running statistics are updated in place in
            training mode, as each member's own ``nn.BatchNorm`` would update them.
        masks: from :func:`draw_masks` (training mode with dropout), else None.
        training: batch statistics and dropout (True) or running statistics and no dropout.
    """
    p = next(iter(params.values())).shape[0]
    n = x.shape[0]
    h, layout = x, "shared"  # shared [N, ...]; channels [N, P·C, ...]; npf [N, P, F]; pnf [P, N, F]
    pending = iter(masks or ())
    for k, m in enumerate(model):
        w, b = params.get(f"{k}.weight"), params.get(f"{k}.bias")
        if isinstance(m, _CONVS):
            if layout not in ("shared", "channels"):
                raise ConfigError(f"fused backend: {type(m).__name__} after a Linear layer")
            conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
            groups = m.groups * (p if layout == "channels" else 1)
            h = conv(h, w.reshape(p * w.shape[1], *w.shape[2:]), None if b is None else b.reshape(-1),
                     m.stride, m.padding, m.dilation, groups)
            layout = "channels"
        elif isinstance(m, _NORMS):
            if layout == "npf":
                h2 = h.reshape(n, -1)
            elif layout == "channels":
                h2 = h
            else:
                raise ConfigError(f"fused backend: {type(m).__name__} needs channels or per-member features first")
            mean, var = buffers.get(f"{k}.running_mean"), buffers.get(f"{k}.running_var")
            count = buffers.get(f"{k}.num_batches_tracked")
            if training and count is not None:
                count.add_(1)
            h2 = F.batch_norm(h2, None if mean is None else mean.view(-1), None if var is None else var.view(-1),
                              None if w is None else w.reshape(-1), None if b is None else b.reshape(-1),
                              training or mean is None, 0.0 if m.momentum is None else m.momentum, m.eps)
            h = h2.view(h.shape) if layout == "npf" else h2
        elif isinstance(m, nn.Linear):
            if layout == "shared":
                h = F.linear(h, w.reshape(-1, w.shape[-1]), None if b is None else b.reshape(-1)).view(n, p, -1)
                layout = "npf"
            elif layout in ("npf", "pnf"):
                hp = h.transpose(0, 1) if layout == "npf" else h
                wt = w.transpose(1, 2)
                h = torch.bmm(hp, wt) if b is None else torch.baddbmm(b.unsqueeze(1), hp, wt)
                layout = "pnf"
            else:
                raise ConfigError("fused backend: a Linear layer on channels needs nn.Flatten first")
        elif isinstance(m, nn.Flatten):
            if layout == "shared":
                h = m(h)
            elif layout == "channels":
                h = h.reshape(n, p, -1)
                layout = "npf"
        elif isinstance(m, nn.Unflatten):
            if layout != "shared":
                raise ConfigError("fused backend: nn.Unflatten only on the shared input")
            h = m(h)
        elif isinstance(m, nn.Dropout):
            if training and m.p > 0:
                mask = next(pending)
                if layout == "channels":
                    h = (h.view(n, p, -1, *h.shape[2:]) * mask.unsqueeze(1)).view(h.shape)
                elif layout == "npf":
                    h = h * mask.unsqueeze(1)
                else:  # pnf, or the shared input (the same mask for every member either way)
                    h = h * mask
        else:  # pooling and elementwise activations act per channel or per element: any layout
            h = m(h)
    if layout == "npf":
        return h.transpose(0, 1)
    if layout != "pnf":
        raise ConfigError("fused backend: the model must end with a Linear layer")
    return h


def fused_losses(model: nn.Sequential, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor, masks: Sequence[torch.Tensor] | None,
                 live: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's mean training loss ``[P]`` and their sum (dead rows, ``live`` False, count zero).

    The sum is what autograd differentiates: member p's parameters reach only its own loss.
    """
    logits = fused_forward(model, params, buffers, x, masks, True)
    losses = F.cross_entropy(logits.transpose(1, 2), y.expand(logits.shape[0], -1), reduction="none").mean(1)
    if live is not None:
        losses = torch.where(live, losses, 0.0)
    return losses, losses.sum()


__all__ = ["ELEMENTWISE", "PAD_SIZES_BASE", "draw_masks", "dropout_shapes", "fused_forward", "fused_losses",
           "fused_supported", "padded_size"]

"""Batch normalization fused with an activation (and a residual add): ``act(BN(x) + z)``.

:class:`BatchNormAct2d` has the constructor, parameters, buffers and state_dict
of ``BatchNorm2d`` (it subclasses normkit's, so a BatchNorm2d checkpoint loads
into it and back) plus ``act``; ``forward(x, residual=None)``. On CPU
float32/float64 NCHW input with spatial maps of at least 16 values and at least
two channels per thread (see :mod:`normkit.kernels.act`) it is one pass forward
and one backward, with no intermediate tensor (a channel larger than the cache
is read twice from memory, once for its statistics); otherwise (channels-last,
tiny maps, few channels) it composes normkit's batch norm, the add and torch's
activation (the same mathematics, more passes).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from .. import kernels
from ..kernels import act as act_kernels
from ..kernels import norm as norm_kernels
from ..kernels.stream import streams
from . import _torch_impl
from ._bridge import as_view, new_like_view, param_grad
from ._bridge import numpy_view as _np
from .batchnorm import BatchNorm2d
from .functional import _update, batch_count, batch_norm, check_input, uses_kernels

__all__ = ["BatchNormAct2d", "batch_norm_act"]

_TORCH_ACTS: dict = {
    None: lambda t: t,
    "identity": lambda t: t,
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
}


def _fusable(x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
    if not x.is_contiguous() or (residual is not None and (not residual.is_contiguous() or residual.shape != x.shape
                                                           or residual.dtype != x.dtype or not residual.is_cpu)):
        return False
    N, C = x.shape[:2]
    L = x.numel() // max(1, N * C)
    # no cache budget: above it the per-channel kernel reads a channel twice from memory,
    # still one pass fewer (and two allocations fewer) than BN, add and activation apart
    return N * L > 0 and norm_kernels.fusable(N, C, L, x.element_size(), any_size=True)


class _KernelBatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, running_mean, running_var, batch_stats, eps, act, stats):
        x3, view = as_view(x, 1)
        z3 = None if residual is None else as_view(residual, 1)[0]
        y, y3 = new_like_view(x.shape, view, x.dtype)
        par = x3.size >= norm_kernels.PARALLEL_MIN
        run = act_kernels.act_forward[act][0 if par else 1]
        dummy = np.empty(0)
        mean, var, rstd = run(x3, z3, _np(weight), _np(bias), float(eps), y3, batch_stats,
                              dummy if batch_stats else _np(running_mean), dummy if batch_stats else _np(running_var),
                              streams(y3.nbytes, out=y3))
        stats += (mean, var)
        ctx.save_for_backward(x, residual, weight, bias, torch.from_numpy(mean), torch.from_numpy(rstd))
        ctx.meta = (view, act, batch_stats, eps)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, residual, weight, bias, mean, rstd = ctx.saved_tensors
        view, act, batch_stats, eps = ctx.meta
        need_x, need_z, need_w, need_b = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():
            raise RuntimeError("BatchNormAct2d's fused backward is not differentiable (double backward); "
                               "use BatchNorm2d followed by the activation for higher-order gradients")
        x3 = as_view(x, 1, like=view)[0]
        dy3 = as_view(dy, 1, like=view)[0]
        empty = np.empty((0, 0, 0), x3.dtype)
        z3 = empty if residual is None else as_view(residual, 1, like=view)[0]
        # the kernel writes dx (and dz with a residual); unwanted ones go to scratch
        dx, dx3 = new_like_view(x.shape, view, x.dtype)
        dz, dz3 = (None, empty) if residual is None else new_like_view(x.shape, view, x.dtype)
        par = x3.size >= norm_kernels.PARALLEL_MIN
        run = act_kernels.act_backward[act][0 if par else 1]
        dw, db = run(dy3, x3, z3, _np(weight), _np(bias), mean.numpy(), rstd.numpy(), batch_stats, dx3, dz3)
        dw = param_grad(dw, weight.dtype) if need_w else None
        db = param_grad(db, bias.dtype) if need_b else None
        return (dx if need_x else None), (dz if need_z else None), dw, db, None, None, None, None, None, None


def batch_norm_act(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    act: Optional[str] = "relu",
    residual: Optional[torch.Tensor] = None,
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
    nonfinite: str = "propagate",
    layer: str = "batch_norm_act",
) -> torch.Tensor:
    """``act(batch_norm(input, ...) + residual)``: :func:`normkit.nn.functional.batch_norm`'s
    arguments and conventions, plus ``act`` (``"relu"``, ``"silu"``, ``"gelu"`` -- exact erf
    form -- or None) and an optional ``residual`` of the input's shape."""
    if act not in _TORCH_ACTS:
        raise ValueError(f"{layer} expected act to be one of {sorted(k for k in _TORCH_ACTS if k)} or None, got {act!r}")
    if residual is not None and residual.shape != input.shape:
        raise ValueError(f"{layer} expected a residual of the input's shape {tuple(input.shape)}, "
                         f"got {tuple(residual.shape)}")
    fast = (uses_kernels(input, weight, bias) and input.numel() > 0 and _fusable(input, residual)
            and (running_mean is None or running_mean.is_cpu))
    if not fast:
        y = batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked=num_batches_tracked, nonfinite=nonfinite, layer=layer)
        if residual is not None:
            y = y + residual
        return _TORCH_ACTS[act](y)
    batch_stats = training or running_mean is None or running_var is None
    check_input(layer, input, batch_stats, weight, bias, running_mean, running_var)
    update = training and running_mean is not None and running_var is not None
    count = batch_count(layer, update, momentum, num_batches_tracked)
    stats: list = []
    y = _KernelBatchNormAct.apply(input, residual, weight, bias, running_mean, running_var, batch_stats, eps,
                                  act_kernels.ACTIVATIONS[act], stats)
    if update:
        _update(layer, nonfinite, input, stats[0], stats[1], running_mean, running_var, momentum, count,
                num_batches_tracked)
    return y


class BatchNormAct2d(BatchNorm2d):
    """``act(BatchNorm2d(x) + residual)`` in one pass forward and one backward.

    Args: as :class:`normkit.nn.BatchNorm2d` (``num_features``, ``eps=1e-5``,
    ``momentum=0.1``, ``affine=True``, ``track_running_stats=True``, ``device``,
    ``dtype``, keyword ``nonfinite``) plus keyword ``act``: ``"relu"`` (default),
    ``"silu"``, ``"gelu"`` (exact) or None. ``forward(x, residual=None)``; the
    residual, if given, has ``x``'s shape and is added before the activation
    (the ResNet block's ``relu(bn2(conv2(h)) + shortcut)``).

    Shape: ``(N, C, H, W)`` in and out. State dict: exactly BatchNorm2d's. The
    fused backward is first-order only (double backward raises).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *,
                 act: Optional[str] = "relu", bias: bool = True, nonfinite: str = "propagate") -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias,
                         nonfinite=nonfinite)
        if act not in _TORCH_ACTS:
            raise ValueError(f"BatchNormAct2d expected act to be one of 'relu', 'silu', 'gelu' or None, got {act!r}")
        self.act = act

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_input_dim(input)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return batch_norm_act(
            input, self.running_mean if track else None, self.running_var if track else None,
            self.weight, self.bias, batch_stats, self.momentum, self.eps, self.act, residual,
            num_batches_tracked=self.num_batches_tracked if self.training and self.track_running_stats else None,
            nonfinite=self.nonfinite, layer=self._layer_name,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act={self.act!r}"

"""Batch normalization on the Numba kernels, with and without autograd.

CPU float32/float64 only (the functional routes everything else to
:mod:`._torch_impl`). Forward: one statistics pass and one apply pass. Backward:
one pass for ``sum(dy)`` and ``sum(dy * (x - mean))`` together, one for ``dx``
-- the closed-form gradients, not autograd of the forward. When the graph of
the backward itself is wanted (``create_graph=True``), the backward is written
in differentiable torch operations instead, so double backward works.
When no gradient is needed (inference, ``torch.no_grad()``) the functional calls
:func:`forward` directly and skips the autograd machinery.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from .. import kernels
from ..kernels.layout import ChannelView
from . import _torch_impl
from ._bridge import as_view, new_like_view, param_grad
from ._bridge import numpy_view as _np

__all__ = ["KernelBatchNorm", "forward"]


def forward(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    batch_stats: bool,
    eps: float,
) -> Tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, ChannelView]:
    """``y`` in ``x``'s layout, and the float64 ``(mean, var, rstd)`` it used."""
    x3, view = as_view(x, 1)
    y, y3 = new_like_view(x.shape, view, x.dtype)
    if batch_stats:
        mean, var, rstd = kernels.forward_batch(x3, _np(weight), _np(bias), eps, y3)
    else:
        mean, var = _np(running_mean), _np(running_var)
        rstd = kernels.forward_fixed(x3, mean, var, _np(weight), _np(bias), eps, y3)
    return y, mean, var, rstd, view


class KernelBatchNorm(torch.autograd.Function):
    """``y = weight * (x - mean) * rstd + bias`` over channel dim 1, differentiable.

    ``batch_stats=True``: ``mean``/``var`` are the batch's (``running_*`` unused);
    ``False``: ``running_mean``/``running_var`` are used as constants. The
    statistics used are appended to ``stats`` (a list) for the caller.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, batch_stats: bool, eps: float, stats: list):
        y, mean, var, rstd, view = forward(x, weight, bias, running_mean, running_var, batch_stats, eps)
        stats += (mean, var)
        ctx.save_for_backward(x, weight)
        # float64 (C,) arrays of the kernels', private to this node: kept as they are
        # (saved tensors guard against in-place changes, which nothing else can make here)
        ctx.mean = np.ascontiguousarray(mean, dtype=np.float64)
        ctx.rstd = rstd
        ctx.batch_stats = batch_stats
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.eps = eps
        ctx.view = view
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        mean, rstd = ctx.mean, ctx.rstd
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            dx, dw, db = _torch_impl.normalize_backward(dy, x, weight, ctx.eps, ctx.batch_stats,
                                                         torch.from_numpy(mean), torch.from_numpy(rstd))
        else:
            x3, view = as_view(x, 1, like=ctx.view)
            dy3, _ = as_view(dy, 1, like=view)
            dx3 = None
            if need_x:
                dx, dx3 = new_like_view(x.shape, view, x.dtype)
            dw, db = kernels.backward(dy3, x3, mean, rstd, _np(weight), ctx.batch_stats, dx3)
            dw = param_grad(dw, weight.dtype) if need_w else None
            db = param_grad(db, ctx.bias_dtype) if need_b else None
        grads: List[Optional[torch.Tensor]] = [
            dx if need_x else None,
            dw if need_w else None,
            db if need_b else None,
        ]
        return (*grads, None, None, None, None, None)

"""The autograd function that runs batch normalization on the Numba kernels.

CPU float32/float64 only (the functional routes everything else to
:mod:`._torch_impl`). Forward: one statistics pass and one apply pass. Backward:
one pass for ``sum(dy)`` and ``sum(dy * (x - mean))`` together, one for ``dx``
-- the closed-form gradients, not autograd of the forward. When the graph of
the backward itself is wanted (``create_graph=True``), the backward is written
in differentiable torch operations instead, so double backward works.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from .. import kernels
from . import _torch_impl
from ._bridge import as_view, new_like_view

__all__ = ["KernelBatchNorm", "Stats"]


class Stats:
    """Receives the float64 statistics (NumPy ``(C,)``) a forward used."""

    __slots__ = ("mean", "var")

    def __init__(self) -> None:
        self.mean: Optional[np.ndarray] = None
        self.var: Optional[np.ndarray] = None


def _np64(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().numpy().astype(np.float64)


class KernelBatchNorm(torch.autograd.Function):
    """``y = weight * (x - mean) * rstd + bias`` over channel dim 1.

    ``batch_stats=True``: ``mean``/``var`` are the batch's (``running_*`` unused);
    ``False``: ``running_mean``/``running_var`` are used as constants.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, batch_stats: bool, eps: float, stats: Stats):
        x3, view = as_view(x, 1)
        if batch_stats:
            mean, var = kernels.moments(x3)
        else:
            mean, var = _np64(running_mean), _np64(running_var)
        rstd = kernels.inv_std(var, eps)
        y, y3 = new_like_view(x.shape, view, x.dtype)
        kernels.normalize(x3, mean, rstd, _np64(weight), _np64(bias), y3)
        stats.mean, stats.var = mean, var
        ctx.save_for_backward(x, weight, torch.from_numpy(mean), torch.from_numpy(rstd))
        ctx.batch_stats = batch_stats
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.eps = eps
        ctx.view = view
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            dx, dw, db = _torch_impl.normalize_backward(dy, x, weight, ctx.eps, ctx.batch_stats, mean, rstd)
        else:
            x3, view = as_view(x, 1, like=ctx.view)
            dy3, _ = as_view(dy, 1, like=view)
            dx3 = None
            if need_x:
                dx, dx3 = new_like_view(x.shape, view, x.dtype)
            _, dw, db = kernels.normalize_backward(
                dy3, x3, mean.numpy(), rstd.numpy(), _np64(weight), ctx.batch_stats, dx3
            )
            dw = torch.from_numpy(dw).to(weight.dtype) if need_w else None
            db = torch.from_numpy(db).to(ctx.bias_dtype) if need_b else None
        grads: List[Optional[torch.Tensor]] = [
            dx if need_x else None,
            dw if need_w else None,
            db if need_b else None,
        ]
        return (*grads, None, None, None, None, None)

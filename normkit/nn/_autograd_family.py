"""LayerNorm/RMSNorm, GroupNorm and InstanceNorm on the Numba kernels, with and without autograd.

CPU float32/float64 only (the functionals route everything else to
:mod:`._torch_family`). Forward and backward are the closed forms of
:mod:`normkit.kernels.rowwise` (rows: LayerNorm, RMSNorm) and
:mod:`normkit.kernels.grouped` (GroupNorm, InstanceNorm, on the shared
per-channel core). When the graph of the backward itself is wanted
(``create_graph=True``), the backward is written in differentiable torch
operations instead, so double backward works. When no gradient is needed the
functionals call the ``*_forward`` functions directly.

Layouts: rows need a contiguous input (others are copied, as torch's own
LayerNorm does; the output is contiguous). GroupNorm/InstanceNorm read
contiguous and channels-last inputs in place, and the output keeps the layout.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..kernels import grouped, rowwise
from ..kernels.layout import ChannelView
from . import _torch_family as T
from ._bridge import as_view, new_empty, new_like_view, param_grad

__all__ = ["KernelGroupedNorm", "KernelRowNorm", "grouped_forward", "rows_forward"]


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().contiguous().numpy().reshape(-1)


# --------------------------------------------------------------------------- rows: LayerNorm, RMSNorm


def _rows(t: torch.Tensor, k: int) -> np.ndarray:
    D = math.prod(t.shape[t.dim() - k:])
    return t.detach().contiguous().numpy().reshape(-1, D)


def rows_forward(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], k: int, eps: float, center: bool
) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``y`` (contiguous) and the float64 per-row ``(mean, rstd)``; the rows are the
    trailing ``k`` dims (``center=False``: RMSNorm, ``mean = 0``)."""
    x2 = _rows(x, k)
    y = new_empty(x.shape, x.dtype)
    mean, _, rstd = rowwise.row_forward(x2, _np(weight), _np(bias), eps, y.numpy().reshape(x2.shape), center)
    return y, mean, rstd


class KernelRowNorm(torch.autograd.Function):
    """``y = weight * (x - mean) * rstd + bias`` per row of the trailing ``k`` dims, differentiable."""

    @staticmethod
    def forward(ctx, x, weight, bias, k: int, eps: float, center: bool):
        y, mean, rstd = rows_forward(x, weight, bias, k, eps, center)
        ctx.save_for_backward(x, weight, bias, torch.from_numpy(mean), torch.from_numpy(rstd))
        ctx.k, ctx.eps, ctx.center = k, eps, center
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        k = ctx.k
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            lead = list(range(x.dim() - k))
            dx, dw, db = T.normalize_backward(dy, x, T.row_mean(k), weight, ctx.eps, lead, ctx.center)
            dw = dw.to(weight.dtype) if need_w else None
            db = db.to(bias.dtype) if need_b else None
        else:
            x2 = _rows(x, k)
            dx = dx2 = None
            if need_x:
                dx = new_empty(x.shape, x.dtype)
                dx2 = dx.numpy().reshape(x2.shape)
            dw, db = rowwise.row_backward(_rows(dy, k), x2, mean.numpy(), rstd.numpy(), _np(weight), dx2, ctx.center)
            dw = param_grad(dw, weight.dtype, weight.shape) if need_w else None
            db = param_grad(db, bias.dtype, bias.shape) if need_b else None
        return (dx if need_x else None), dw, db, None, None, None


# --------------------------------------------------------------------------- groups: GroupNorm, InstanceNorm


def _grouped_view(t: torch.Tensor, like: Optional[ChannelView] = None) -> Tuple[np.ndarray, ChannelView]:
    """``(N, C, L)`` (contiguous) or ``(N, L, C)`` (channels-last) NumPy view of ``t`` ``(N, C, *)``."""
    a, view = as_view(t, 1, like)
    N, C, L = t.shape[0], t.shape[1], math.prod(t.shape[2:])
    return (a.reshape(N, C, L) if view.perm is None else a.reshape(N, L, C)), view


def _new_grouped(shape: torch.Size, view: ChannelView, dtype: torch.dtype) -> Tuple[torch.Tensor, np.ndarray]:
    out, o = new_like_view(shape, view, dtype)
    N, C, L = shape[0], shape[1], math.prod(shape[2:])
    return out, (o.reshape(N, C, L) if view.perm is None else o.reshape(N, L, C))


def grouped_forward(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    groups: int,
    eps: float,
    instance: bool,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    batch_stats: bool,
) -> Tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, ChannelView]:
    """``y`` in ``x``'s layout and the float64 ``(mean, var, rstd)`` it used.

    ``instance=True``: InstanceNorm (``groups`` ignored), statistics ``(N, C)``, or
    with ``batch_stats=False`` the ``(C,)`` running statistics. ``instance=False``:
    GroupNorm, statistics ``(N, G)``.
    """
    x3, view = _grouped_view(x)
    y, y3 = _new_grouped(x.shape, view, x.dtype)
    cl = view.perm is not None
    if not instance:
        mean, var, rstd = grouped.group_forward(x3, groups, _np(weight), _np(bias), eps, y3, cl)
    elif batch_stats:
        mean, var, rstd = grouped.instance_forward(x3, _np(weight), _np(bias), eps, y3, cl)
    else:
        mean, var, rstd = grouped.instance_forward(
            x3, _np(weight), _np(bias), eps, y3, cl, _np(running_mean), _np(running_var)
        )
    return y, mean, var, rstd, view


class KernelGroupedNorm(torch.autograd.Function):
    """GroupNorm (``instance=False``) or InstanceNorm (``instance=True``), differentiable.

    The statistics used (float64 NumPy) are appended to ``stats`` (a list) for the
    caller, which folds InstanceNorm's into the running statistics.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float, instance: bool, running_mean, running_var,
                batch_stats: bool, stats: list):
        y, mean, var, rstd, view = grouped_forward(
            x, weight, bias, groups, eps, instance, running_mean, running_var, batch_stats
        )
        stats += (mean, var)
        ctx.save_for_backward(x, weight, bias, *(torch.from_numpy(np.ascontiguousarray(a)) for a in (mean, var, rstd)))
        ctx.groups = x.shape[1] if instance else groups
        ctx.eps, ctx.instance, ctx.batch_stats, ctx.view = eps, instance, batch_stats, view
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, var, rstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            n = x.dim()
            stats = None if ctx.batch_stats else (T.per_channel(mean, n), T.per_channel(var, n))
            dx, dw, db = T.normalize_backward(
                dy, x, T.group_mean(ctx.groups), T.per_channel(weight, n), ctx.eps, [0] + list(range(2, n)),
                True, stats,
            )
            dw = dw.to(weight.dtype) if need_w else None
            db = db.to(bias.dtype) if need_b else None
        else:
            x3, view = _grouped_view(x, ctx.view)
            dy3, _ = _grouped_view(dy, view)
            cl = view.perm is not None
            dx = dx3 = None
            if need_x:
                dx, dx3 = _new_grouped(x.shape, view, x.dtype)
            if ctx.instance:
                dw, db = grouped.instance_backward(dy3, x3, mean.numpy(), rstd.numpy(), _np(weight), ctx.batch_stats,
                                                   dx3, cl)
            else:
                dw, db = grouped.group_backward(dy3, x3, ctx.groups, mean.numpy(), rstd.numpy(), _np(weight), dx3, cl)
            dw = param_grad(dw, weight.dtype, weight.shape) if need_w else None
            db = param_grad(db, bias.dtype, bias.shape) if need_b else None
        grads: List[Optional[torch.Tensor]] = [dx if need_x else None, dw, db]
        return (*grads, None, None, None, None, None, None, None)

"""LayerNorm, RMSNorm, GroupNorm and InstanceNorm in plain torch operations.

Used for every device and dtype the Numba kernels do not cover (CUDA, float16,
bfloat16, ...), under ``torch.compile``/``torch.export``, and for the
differentiable backward that double backward needs. One formula serves the
four layers; they differ in how a statistic is averaged (a "mean function"):

* rows (LayerNorm, RMSNorm): over the trailing ``k`` dims, the affine along them;
* groups (GroupNorm; InstanceNorm is ``G = C``): over the channels of a group
  and the spatial dims, per sample; the affine per channel.

Every mean function returns a tensor of the input's rank that broadcasts
against it, so the apply keeps the input's memory format (a channels-last
input gives a channels-last output). Statistics are computed in at least
float32 with the two-pass algorithm (float16/bfloat16 inputs: float32
statistics and arithmetic, output rounded back).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch

__all__ = [
    "compute_dtype", "group_mean", "normalize", "normalize_backward", "per_channel", "row_mean",
]

MeanFn = Callable[[torch.Tensor], torch.Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def row_mean(k: int) -> MeanFn:
    """Mean over the trailing ``k`` dims, kept as size 1."""

    def mean(t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=tuple(range(t.dim() - k, t.dim())), keepdim=True)

    return mean


def group_mean(groups: int) -> MeanFn:
    """Mean over each group of ``C/groups`` channels and all spatial dims, per sample,
    expanded back to ``(N, C, 1, ...)``."""

    def mean(t: torch.Tensor) -> torch.Tensor:
        N, C = t.shape[:2]
        Cg = C // groups
        m = t.reshape(N, groups, Cg * math.prod(t.shape[2:])).mean(dim=-1)
        if Cg > 1:
            m = m.repeat_interleave(Cg, dim=1)
        return m.reshape([N, C] + [1] * (t.dim() - 2))

    return mean


def per_channel(v: Optional[torch.Tensor], ndim: int) -> Optional[torch.Tensor]:
    """A ``(C,)`` vector shaped to broadcast along dim 1 of an ``ndim``-D input."""
    return None if v is None else v.reshape([-1] + [1] * (ndim - 2))


def _statistics(
    xc: torch.Tensor, mean_fn: MeanFn, center: bool, stats: Optional[Tuple[torch.Tensor, torch.Tensor]]
) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """``(mean, var)`` in ``xc``'s dtype: ``stats`` if given, else two-pass ``mean_fn``
    statistics of ``xc``; uncentred (``center=False``, no ``stats``): ``mean`` is None
    and ``var`` the mean square."""
    if stats is not None:
        mean, var = stats
        return mean.to(xc.dtype), var.to(xc.dtype)
    if not center:
        return None, mean_fn(xc.square())
    mean = mean_fn(xc)
    return mean, mean_fn((xc - mean).square())


def normalize(
    x: torch.Tensor,
    mean_fn: MeanFn,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    center: bool = True,
    stats: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``y = weight * (x - mean) / sqrt(var + eps) + bias`` -> ``(y, mean, var)``, differentiable.

    ``mean``/``var`` are ``mean_fn`` statistics of ``x`` (two-pass, biased), or
    ``stats`` if given (broadcastable constants); ``center=False``: ``mean = 0`` and
    ``var`` is the mean square (RMSNorm). ``weight``/``bias`` broadcast against ``x``
    (already shaped by the caller). ``y`` has ``x``'s dtype.
    """
    xc = x.to(compute_dtype(x.dtype))
    mean, var = _statistics(xc, mean_fn, center, stats)
    y = (xc if mean is None else xc - mean) * torch.rsqrt(var + eps)
    if mean is None:
        mean = torch.zeros((), dtype=xc.dtype, device=xc.device)
    if weight is not None:
        y = y * weight.to(xc.dtype)
    if bias is not None:
        y = y + bias.to(xc.dtype)
    return y.to(x.dtype), mean, var


def normalize_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    mean_fn: MeanFn,
    weight: Optional[torch.Tensor],
    eps: float,
    sum_dims: Sequence[int],
    center: bool = True,
    stats: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form ``(dx, dweight, dbias)`` of :func:`normalize`, in differentiable torch ops.

    Without ``stats`` the statistics are recomputed from ``x`` here, so that
    differentiating this function (double backward) sees their dependence on
    ``x``; with ``g = weight * dy`` and ``x_hat = (x - mean) * rstd``::

        dx = rstd * (g - [center] mean_fn(g) - x_hat * mean_fn(g * x_hat))

    With ``stats`` (fixed statistics, constants): ``dx = rstd * g``.
    ``dweight = sum(dy * x_hat)`` and ``dbias = sum(dy)`` over ``sum_dims``
    (in the compute dtype; the caller reshapes and casts them).
    """
    xc = x.to(compute_dtype(x.dtype))
    dyc = dy.to(xc.dtype)
    mean, var = _statistics(xc, mean_fn, center, stats)
    rstd = torch.rsqrt(var + eps)
    x_hat = (xc if mean is None else xc - mean) * rstd
    g = dyc if weight is None else dyc * weight.to(xc.dtype)
    if stats is not None:
        dx = rstd * g
    elif center:
        dx = rstd * (g - mean_fn(g) - x_hat * mean_fn(g * x_hat))
    else:
        dx = rstd * (g - x_hat * mean_fn(g * x_hat))
    dims = list(sum_dims)
    if not dims:  # Tensor.sum([]) would sum over every dim
        return dx.to(x.dtype), dyc * x_hat, dyc
    return dx.to(x.dtype), (dyc * x_hat).sum(dims), dyc.sum(dims)

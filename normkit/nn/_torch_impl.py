"""Batch normalization in plain torch operations.

Used for every device and dtype the Numba kernels do not cover (CUDA, float16,
bfloat16, ...), under ``torch.compile``/``torch.export``, and for the
differentiable backward that double backward needs. Statistics are computed in
at least float32 with the two-pass algorithm; the output
has the input's dtype and memory format.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

__all__ = ["reduce_dims", "batch_stats", "normalize", "normalize_backward"]


def reduce_dims(ndim: int) -> List[int]:
    return [0] + list(range(2, ndim))


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape([1, -1] + [1] * (ndim - 2))


def _compute(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def batch_stats(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance, shape ``(C,)``, differentiable.

    Two passes (mean, then the mean of squared deviations): as stable as Welford
    and, unlike ``torch.var_mean``, it keeps an Inf in the data as an Inf mean.
    """
    xc = _compute(x)
    dims = reduce_dims(x.dim())
    mean = xc.mean(dims, keepdim=True)
    var = (xc - mean).square().mean(dims)
    return mean.reshape(-1), var


def normalize(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` with per-channel vectors."""
    n = x.dim()
    xc = _compute(x)
    y = (xc - _per_channel(mean.to(xc.dtype), n)) * _per_channel(torch.rsqrt(var.to(xc.dtype) + eps), n)
    if weight is not None:
        y = y * _per_channel(weight.to(xc.dtype), n)
    if bias is not None:
        y = y + _per_channel(bias.to(xc.dtype), n)
    return y.to(x.dtype)


def normalize_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    eps: float,
    batch_stats_used: bool,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form ``(dx, dweight, dbias)`` in differentiable torch ops.

    With batch statistics they are recomputed from ``x`` here, so that
    differentiating this function (double backward) sees their dependence on
    ``x``; with fixed statistics ``mean``/``rstd`` are constants.
    """
    n = x.dim()
    dims = reduce_dims(n)
    xc = _compute(x)
    dyc = dy.to(xc.dtype)
    if batch_stats_used:
        m, v = batch_stats(x)
        rstd = torch.rsqrt(v + eps)
        mean = m
    mean_b = _per_channel(mean.to(xc.dtype), n)
    rstd_b = _per_channel(rstd.to(xc.dtype), n)
    x_hat = (xc - mean_b) * rstd_b
    g = dyc if weight is None else dyc * _per_channel(weight.to(xc.dtype), n)
    if batch_stats_used:
        dx = rstd_b * (g - g.mean(dims, keepdim=True) - x_hat * (g * x_hat).mean(dims, keepdim=True))
    else:
        dx = rstd_b * g
    return dx.to(x.dtype), (dyc * x_hat).sum(dims), dyc.sum(dims)

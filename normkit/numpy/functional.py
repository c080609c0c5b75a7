"""Batch normalization on NumPy arrays, computed by the fused Numba kernels.

Same signatures and results as :mod:`normkit.reference` (to float rounding),
in the input's dtype. float32 and float64 run natively; float16 is computed in
float32 and rounded back. Arrays may be contiguous or channels-last (channel
axis fastest in memory); the output has the input's layout.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

from .. import _checks
from ..kernels import backward, channel_view, forward_batch, forward_fixed, inv_std
from ..kernels.layout import ChannelView
from ..kernels.stream import aligned_empty

__all__ = ["BatchNormResult", "batch_norm", "batch_norm_backward"]

_LAYER = "batch_norm"


class BatchNormResult(NamedTuple):
    """``y`` in the input's dtype; ``mean``/``var`` (float64, ``(C,)``) are the statistics used:
    the batch's (biased variance) in training, the running ones in inference."""

    y: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def _f64(v: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if v is None else np.ascontiguousarray(v, dtype=np.float64)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _view(a: np.ndarray, axis: int, dtype: np.dtype, perm_of: Optional[ChannelView] = None):
    """``(P, C, L)`` C-contiguous view of ``a`` in ``dtype`` (copying only when needed)."""
    if a.dtype != dtype:
        a = a.astype(dtype)
    if perm_of is None:
        strides = [s // a.itemsize if s % a.itemsize == 0 else -1 for s in a.strides]
        view = channel_view(a.shape, strides, axis)
        if view is None:
            a = np.ascontiguousarray(a)
            view = channel_view(a.shape, [s // a.itemsize for s in a.strides], axis)
    else:
        view = perm_of
    moved = a if view.perm is None else a.transpose(view.perm)
    return np.ascontiguousarray(moved).reshape(view.shape), view


def _empty_like_view(shape: Tuple[int, ...], view: ChannelView, dtype: np.dtype):
    """A new array of ``shape`` laid out like ``view``, and its ``(P, C, L)`` view, starting
    on a cache line (streamed faster than NumPy's own allocation)."""
    out3 = aligned_empty(view.shape, dtype)
    if view.perm is None:
        return out3.reshape(shape), out3
    moved_shape = [shape[a] for a in view.perm]
    inverse = np.argsort(view.perm)
    return out3.reshape(moved_shape).transpose(inverse), out3


def _check_inputs(x: np.ndarray, axis: int, training: bool, **params) -> int:
    x = np.asarray(x)
    _checks.check_floating(_LAYER, str(x.dtype), np.issubdtype(x.dtype, np.floating))
    axis = _checks.check_channel_axis(_LAYER, x.shape, axis)
    C = x.shape[axis]
    for name, p in params.items():
        _checks.check_param_shape(_LAYER, name, None if p is None else np.shape(p), (C,))
    if training:
        _checks.check_training_batch(_LAYER, x.shape, axis)
    return axis


def batch_norm(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    *,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    training: bool = True,
    eps: float = 1e-5,
    axis: int = 1,
) -> BatchNormResult:
    """Batch normalization forward.

    Per channel ``c`` (the size of ``x`` along ``axis``), with ``m`` values reduced:
    ``y = weight[c] * (x - mean[c]) / sqrt(var[c] + eps) + bias[c]``, where in training
    ``mean``/``var`` are the batch mean and biased variance and in inference
    (``training=False``) ``running_mean``/``running_var``. Shapes: ``x`` any
    ``(..., C, ...)``; ``weight``, ``bias``, running statistics ``(C,)``.
    Running statistics are read, never written: stateful updates are
    :class:`normkit.numpy.BatchNorm`'s job.

    An empty batch (no values per channel) returns an empty ``y`` with NaN statistics.
    """
    axis = _check_inputs(
        x, axis, training, weight=weight, bias=bias,
        running_mean=None if training else running_mean, running_var=None if training else running_var,
    )
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{_LAYER} with training=False needs running_mean and running_var")
    eps = _checks.check_eps(_LAYER, eps)
    x = np.asarray(x)
    dtype = _compute_dtype(x.dtype)
    x3, view = _view(x, axis, dtype)
    y, y3 = _empty_like_view(x.shape, view, dtype)
    C = view.C
    if training:
        if view.P * view.L == 0:
            nan = np.full(C, np.nan)
            return BatchNormResult(y.astype(x.dtype, copy=False), nan, nan.copy())
        mean, var, _ = forward_batch(x3, _f64(weight), _f64(bias), eps, y3)
    else:
        mean, var = _f64(running_mean), _f64(running_var)
        forward_fixed(x3, mean, var, _f64(weight), _f64(bias), eps, y3)
    return BatchNormResult(y.astype(x.dtype, copy=False), mean, var)


def batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    weight: Optional[np.ndarray] = None,
    *,
    training: bool = True,
    eps: float = 1e-5,
    axis: int = 1,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form gradients ``(dx, dweight, dbias)`` of :func:`batch_norm`.

    ``mean``/``var`` are the statistics the forward used (its result). With
    ``x_hat = (x - mean)/sqrt(var + eps)`` and ``m`` values per channel:

    * training: ``dx = w/sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat))``
    * inference: ``dx = w/sigma * dy``

    and ``dweight = sum(dy * x_hat)``, ``dbias = sum(dy)`` over every axis but
    the channel. ``dx`` has ``x``'s dtype and layout; the parameter gradients are float64.
    """
    axis = _check_inputs(x, axis, False, weight=weight, mean=mean, var=var)
    x = np.asarray(x)
    dy = np.asarray(dy)
    if dy.shape != x.shape:
        raise ValueError(f"{_LAYER} backward expected dy of the input's shape {x.shape}, got {dy.shape}")
    eps = _checks.check_eps(_LAYER, eps)
    dtype = _compute_dtype(x.dtype)
    x3, view = _view(x, axis, dtype)
    dy3, _ = _view(dy, axis, dtype, perm_of=view)
    dx, dx3 = _empty_like_view(x.shape, view, dtype)
    C = view.C
    if view.P * view.L == 0:
        return dx.astype(x.dtype, copy=False), np.zeros(C), np.zeros(C)
    dweight, dbias = backward(dy3, x3, _f64(mean), inv_std(var, eps), _f64(weight), training, dx3)
    return dx.astype(x.dtype, copy=False), dweight, dbias

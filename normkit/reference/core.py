"""The readable NumPy oracle shared by every normalization layer.

Every layer of the batch-normalization family is the same three steps over a
different choice of axes:

* **statistics** -- the mean ``mu`` and the *biased* variance ``var`` of ``x``
  over ``reduce_axes`` (the axes that are averaged away);
* **apply** -- ``x_hat = (x - mu) / sqrt(var + eps)`` and then
  ``y = weight * x_hat + bias`` with ``weight``/``bias`` broadcast along the
  affine axes;
* **backward** -- the closed-form input gradient

  .. math::

      dx = \\frac{w}{\\sqrt{\\sigma^2+\\epsilon}}
           \\Big(dy - \\overline{dy} - \\hat x\\,\\overline{dy\\,\\hat x}\\Big)

  where the bars are means over ``reduce_axes``, plus
  ``dweight = sum(dy * x_hat)`` and ``dbias = sum(dy)`` over every axis the
  affine parameters are broadcast along.

BatchNorm reduces every axis but the channel; LayerNorm the trailing
``normalized_shape``; InstanceNorm the spatial axes; GroupNorm the spatial
axes and the channels of one group. Everything here is computed in float64
(or wider), with the two-pass variance, so it is slow and exact: the oracle
that the fast kernels and the PyTorch modules are tested against.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["moments", "normalize", "normalize_backward"]

Axes = Tuple[int, ...]


def _axes(ndim: int, axes: Sequence[int]) -> Axes:
    return tuple(sorted(a % ndim for a in axes))


def _broadcast_param(p: np.ndarray, ndim: int, param_axes: Axes) -> np.ndarray:
    """Reshape a parameter whose dims are ``param_axes`` of an ndim array."""
    shape = [1] * ndim
    for a, size in zip(param_axes, p.shape):
        shape[a] = size
    return np.asarray(p, dtype=np.float64).reshape(shape)


def moments(x: np.ndarray, reduce_axes: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance of ``x`` over ``reduce_axes``, two-pass, float64.

    Returns arrays with the reduced axes kept as size 1 (``keepdims=True``), so
    they broadcast against ``x``.
    """
    axes = _axes(x.ndim, reduce_axes)
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean, var


def normalize(
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    param_axes: Sequence[int] = (),
) -> np.ndarray:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` in float64.

    ``mean``/``var`` broadcast against ``x``; ``weight``/``bias`` have the
    sizes of ``x`` along ``param_axes`` (for BatchNorm: ``(channel_axis,)``).
    """
    axes = _axes(x.ndim, param_axes)
    y = (np.asarray(x, dtype=np.float64) - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * _broadcast_param(weight, x.ndim, axes)
    if bias is not None:
        y = y + _broadcast_param(bias, x.ndim, axes)
    return y


def normalize_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
    reduce_axes: Sequence[int],
    weight: Optional[np.ndarray] = None,
    param_axes: Sequence[int] = (),
    batch_stats: bool = True,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form gradients of :func:`normalize` -> ``(dx, dweight, dbias)``.

    With ``batch_stats=True`` the mean and variance are the statistics of ``x``
    over ``reduce_axes`` and depend on it (training); with ``False`` they are
    constants (inference with running statistics) and ``dx = dy * w / sigma``.
    ``dweight``/``dbias`` are summed over every axis not in ``param_axes``.
    """
    r_axes = _axes(x.ndim, reduce_axes)
    p_axes = _axes(x.ndim, param_axes)
    dy64 = np.asarray(dy, dtype=np.float64)
    rstd = 1.0 / np.sqrt(var + eps)
    x_hat = (np.asarray(x, dtype=np.float64) - mean) * rstd
    sum_axes = tuple(a for a in range(x.ndim) if a not in p_axes)
    dweight = (dy64 * x_hat).sum(axis=sum_axes)
    dbias = dy64.sum(axis=sum_axes)
    g = dy64 if weight is None else dy64 * _broadcast_param(weight, x.ndim, p_axes)
    if batch_stats:
        g_mean = g.mean(axis=r_axes, keepdims=True)
        gx_mean = (g * x_hat).mean(axis=r_axes, keepdims=True)
        dx = rstd * (g - g_mean - x_hat * gx_mean)
    else:
        dx = rstd * g
    return dx, dweight, dbias

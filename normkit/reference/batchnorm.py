"""Batch normalization in plain NumPy: the oracle for every fast path.

For an input ``x`` with a channel axis (``axis``, default 1) and ``C`` channels:

.. math::

    \\mu_c = \\frac{1}{m}\\sum x_{\\cdot c \\cdot},\\qquad
    \\sigma_c^2 = \\frac{1}{m}\\sum (x_{\\cdot c \\cdot} - \\mu_c)^2,\\qquad
    y = \\gamma_c \\frac{x - \\mu_c}{\\sqrt{\\sigma_c^2 + \\epsilon}} + \\beta_c

where ``m`` is the number of values per channel (every axis but the channel is
reduced). In inference the running statistics replace ``mu`` and ``sigma^2``.
Results are float64 whatever the input dtype.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import core

__all__ = ["batch_norm", "batch_norm_backward", "batch_stats"]


def _reduce_axes(ndim: int, axis: int) -> Tuple[int, ...]:
    axis %= ndim
    return tuple(a for a in range(ndim) if a != axis)


def batch_stats(x: np.ndarray, axis: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance, shape ``(C,)``, float64."""
    mean, var = core.moments(x, _reduce_axes(x.ndim, axis))
    return mean.reshape(-1), var.reshape(-1)


def _per_channel(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


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
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward pass -> ``(y, mean, var)``.

    ``training=True`` normalizes with the batch statistics (``mean``/``var`` are
    the batch's, ``var`` biased); ``False`` with ``running_mean``/``running_var``
    (returned as given). Running statistics are not updated here: see
    :func:`normkit.running.update_running_stats`.
    """
    if training:
        mean, var = batch_stats(x, axis)
    else:
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    y = core.normalize(
        x, _per_channel(mean, x.ndim, axis), _per_channel(var, x.ndim, axis), eps, weight, bias, (axis,)
    )
    return y, mean, var


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
    """Closed-form gradients ``(dx, dweight, dbias)``, float64, for the statistics used forward."""
    return core.normalize_backward(
        dy,
        x,
        _per_channel(mean, x.ndim, axis),
        _per_channel(var, x.ndim, axis),
        eps,
        _reduce_axes(x.ndim, axis),
        weight,
        (axis,),
        batch_stats=training,
    )

"""Per-channel normalization over a ``(P, C, L)`` view: statistics, apply, backward.

This is the shared core of the batch-normalization family on the CPU. A layer
only has to present its input as a C-contiguous ``(P, C, L)`` array in which
"channel" ``c`` owns ``x[:, c, :]``:

* BatchNorm, NCHW:          ``(N, C, H*W)``
* BatchNorm, channels-last: ``(N*H*W, C, 1)``
* InstanceNorm / GroupNorm: one "channel" per (sample, channel) or (sample, group)

Contracts (the same as :mod:`normkit.reference`): ``mean`` and the biased
``var`` are float64 ``(C,)``; ``y = w * (x - mean) / sqrt(var + eps) + b``;
the backward returns the closed-form ``dx``, ``dweight = sum(dy * x_hat)`` and
``dbias = sum(dy)``. Arrays are trusted: shapes, dtypes and contiguity are
checked once by the public front ends.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple, TypeVar

import numpy as np

_F = TypeVar("_F", bound=Callable)


def _quiet(fn: _F) -> _F:
    """NaN/Inf in the data flow through the statistics by design (the layers apply a
    documented policy to them); NumPy's floating-point warnings would only be noise."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

from .elementwise import channel_affine, channel_affine2
from .reduce import channel_sums

__all__ = ["moments", "normalize", "normalize_backward", "inv_std"]


@_quiet
def moments(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance (float64) of a ``(P, C, L)`` view with ``P*L > 0``."""
    P, C, L = x.shape
    n = P * L
    shift = x[0, :, 0].astype(np.float64)
    # an infinite shift would turn sum(x - K) into NaN; 0 keeps +-Inf in the mean, as torch does
    shift[~np.isfinite(shift)] = 0.0
    s1, s2 = channel_sums(x, x, shift, shift)
    d = s1 / n
    mean = shift + d
    var = np.maximum(s2 / n - d * d, 0.0)
    return mean, var


@_quiet
def inv_std(var: np.ndarray, eps: float) -> np.ndarray:
    """``1 / sqrt(var + eps)`` in float64."""
    return 1.0 / np.sqrt(var + eps)


@_quiet
def normalize(
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: Optional[np.ndarray],
    bias: Optional[np.ndarray],
    out: np.ndarray,
) -> np.ndarray:
    """``out = weight * (x - mean) * rstd + bias`` as ``(x - m) * a + b`` per element.

    ``m`` is ``mean`` rounded to ``x``'s dtype, ``a = weight * rstd`` and
    ``b = bias - (mean - m) * a`` takes up the rounding of ``m``.
    """
    t = x.dtype
    scale = rstd if weight is None else rstd * weight
    m = mean.astype(t)
    shift = -(mean - m.astype(np.float64)) * scale
    if bias is not None:
        shift = shift + bias
    return channel_affine(x, m, scale.astype(t), shift.astype(t), out)


@_quiet
def normalize_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: Optional[np.ndarray],
    batch_stats: bool,
    dx: Optional[np.ndarray],
) -> Tuple[Optional[np.ndarray], np.ndarray, np.ndarray]:
    """Closed-form gradients -> ``(dx, dweight, dbias)``; ``dweight``/``dbias`` float64 ``(C,)``.

    One reduction pass gives ``s1 = sum(dy)`` and ``s2 = sum(dy * (x - mean))``
    together; then, with ``n`` values per channel and ``g = weight * rstd``:

    * ``batch_stats=True`` (training): ``dx = g*dy - g*rstd^2*s2/n * (x - mean) - g*s1/n``;
    * ``batch_stats=False`` (fixed statistics): ``dx = g * dy``.

    ``dweight = rstd * s2``, ``dbias = s1``. Pass ``dx=None`` to skip the input
    gradient (only the parameter gradients are needed).
    """
    P, C, L = x.shape
    n = P * L
    s1, s2 = channel_sums(dy, x, np.zeros(C), mean)
    dweight = s2 * rstd
    if dx is not None:
        g = rstd if weight is None else rstd * weight
        if batch_stats:
            t = x.dtype
            m = mean.astype(t)
            b = -g * rstd * rstd * s2 / n
            # b * (x - mean) = b * (x - m) + b * (m - mean): the rounding of m goes to k
            k = -g * s1 / n + b * (m.astype(np.float64) - mean)
            channel_affine2(dy, x, g.astype(t), b.astype(t), m, k.astype(t), dx)
        else:
            zeros = np.zeros(C, dy.dtype)
            channel_affine(dy, zeros, g.astype(dy.dtype), zeros, dx)
    return dx, dweight, s1

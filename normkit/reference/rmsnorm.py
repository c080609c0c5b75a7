"""Root-mean-square normalization in plain NumPy: the oracle for RMSNorm.

For an input ``x`` whose trailing dims are ``normalized_shape`` (``D`` values),
every row ``r`` is scaled by the inverse of its root mean square -- no centering,
no bias:

.. math::

    \\rho_r = \\frac{1}{D}\\sum_j x_{rj}^2,\\qquad
    y_{rj} = \\gamma_j \\frac{x_{rj}}{\\sqrt{\\rho_r + \\epsilon}}

It is :func:`normkit.reference.core.normalize` with a zero mean and the mean
square in place of the variance. Its backward differs from the centred layers'
(there is no mean to differentiate), so it has its own function:

.. math::

    \\hat x = x / \\sqrt{\\rho + \\epsilon},\\qquad
    dx = \\frac{1}{\\sqrt{\\rho + \\epsilon}}
         \\big(g - \\hat x\\,\\overline{g\\,\\hat x}\\big),\\quad g = \\gamma\\,dy,\\qquad
    d\\gamma = \\textstyle\\sum_{\\text{rows}} dy\\,\\hat x

``eps=None`` is the machine epsilon of the dtype the statistics are computed
in, as PyTorch: float64's for float64 input, float32's for everything else
(float16/bfloat16 are computed in float32).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import core
from .layernorm import Shape, normalized_axes

__all__ = ["default_rms_eps", "rms_norm", "rms_norm_backward"]


def default_rms_eps(dtype) -> float:
    """``eps`` used when ``eps=None``: ``finfo(float64).eps`` for float64, ``finfo(float32).eps`` else."""
    return float(np.finfo(np.float64 if np.dtype(dtype) == np.float64 else np.float32).eps)


def rms_norm(
    x: np.ndarray,
    normalized_shape: Shape,
    weight: Optional[np.ndarray] = None,
    eps: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Forward -> ``(y, ms)``, ``ms`` the mean square per row, shape ``x.shape[:-k]``."""
    eps = default_rms_eps(x.dtype) if eps is None else eps
    axes = normalized_axes(x.ndim, normalized_shape)
    x64 = np.asarray(x, dtype=np.float64)
    ms = (x64 ** 2).mean(axis=axes, keepdims=True)
    y = core.normalize(x64, np.zeros_like(ms), ms, eps, weight, None, axes)
    return y, ms.reshape(x.shape[: x.ndim - len(axes)])


def rms_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    normalized_shape: Shape,
    ms: np.ndarray,
    weight: Optional[np.ndarray] = None,
    eps: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Closed-form ``(dx, dweight)`` (``dweight`` has shape ``normalized_shape``)."""
    eps = default_rms_eps(x.dtype) if eps is None else eps
    axes = normalized_axes(x.ndim, normalized_shape)
    lead = x.shape[: x.ndim - len(axes)]
    rstd = 1.0 / np.sqrt(np.reshape(ms, lead + (1,) * len(axes)) + eps)
    dy64 = np.asarray(dy, dtype=np.float64)
    x_hat = np.asarray(x, dtype=np.float64) * rstd
    g = dy64 if weight is None else dy64 * np.asarray(weight, dtype=np.float64)
    dx = rstd * (g - x_hat * (g * x_hat).mean(axis=axes, keepdims=True))
    dweight = (dy64 * x_hat).sum(axis=tuple(range(len(lead))))
    return dx, dweight

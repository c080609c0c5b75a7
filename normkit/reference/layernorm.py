"""Layer normalization in plain NumPy: the oracle for LayerNorm.

For an input ``x`` whose trailing dims are ``normalized_shape`` (``D`` values in
all), every leading index ``r`` (a "row") is normalized on its own:

.. math::

    \\mu_r = \\frac{1}{D}\\sum_j x_{rj},\\qquad
    \\sigma_r^2 = \\frac{1}{D}\\sum_j (x_{rj} - \\mu_r)^2,\\qquad
    y_{rj} = \\gamma_j \\frac{x_{rj} - \\mu_r}{\\sqrt{\\sigma_r^2 + \\epsilon}} + \\beta_j

Statistics reduce the trailing axes; the affine runs *along* them
(``weight``/``bias`` have shape ``normalized_shape``). There are no running
statistics: training and inference compute the same thing. Float64 results.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import core

__all__ = ["layer_norm", "layer_norm_backward", "normalized_axes"]

Shape = Union[int, Sequence[int]]


def normalized_axes(ndim: int, normalized_shape: Shape) -> Tuple[int, ...]:
    """The trailing axes of an ``ndim``-D array that ``normalized_shape`` covers."""
    k = 1 if np.isscalar(normalized_shape) else len(tuple(normalized_shape))
    return tuple(range(ndim - k, ndim))


def layer_norm(
    x: np.ndarray,
    normalized_shape: Shape,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward -> ``(y, mean, var)``; ``mean``/``var`` (biased) have shape ``x.shape[:-k]``
    for ``k = len(normalized_shape)``; ``weight``/``bias`` have shape ``normalized_shape``."""
    axes = normalized_axes(x.ndim, normalized_shape)
    mean, var = core.moments(x, axes)
    y = core.normalize(x, mean, var, eps, weight, bias, axes)
    lead = x.shape[: x.ndim - len(axes)]
    return y, mean.reshape(lead), var.reshape(lead)


def layer_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    normalized_shape: Shape,
    mean: np.ndarray,
    var: np.ndarray,
    weight: Optional[np.ndarray] = None,
    eps: float = 1e-5,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form ``(dx, dweight, dbias)`` for the row statistics of ``x``.

    ``dx = w/sigma * (dy' - mean_row(dy') - x_hat * mean_row(dy' x_hat))`` with
    ``dy' = dy * weight``; ``dweight = sum_rows(dy * x_hat)``, ``dbias = sum_rows(dy)``
    (shape ``normalized_shape``).
    """
    axes = normalized_axes(x.ndim, normalized_shape)
    shape = x.shape[: x.ndim - len(axes)] + (1,) * len(axes)
    return core.normalize_backward(
        dy, x, np.reshape(mean, shape), np.reshape(var, shape), eps, axes, weight, axes, batch_stats=True
    )

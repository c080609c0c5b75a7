"""Group normalization in plain NumPy: the oracle for GroupNorm.

For ``x`` of shape ``(N, C, *)`` and ``G`` groups of ``C/G`` consecutive
channels, each (sample, group) is normalized over its channels and every
spatial position; the affine is per channel:

.. math::

    \\mu_{ng} = \\operatorname{mean}_{c \\in g,\\ s} x_{ncs},\\qquad
    \\sigma_{ng}^2 = \\operatorname{mean}_{c \\in g,\\ s} (x_{ncs} - \\mu_{ng})^2,\\qquad
    y_{ncs} = \\gamma_c \\frac{x_{ncs} - \\mu_{ng(c)}}{\\sqrt{\\sigma_{ng(c)}^2 + \\epsilon}} + \\beta_c

Computed as the generic core over the ``(N, G, C/G, *)`` reshape: reduce axes
``2..``, parameter axes ``(1, 2)``. ``G = 1`` is LayerNorm over ``(C, *)`` with
a per-channel affine; ``G = C`` is InstanceNorm. Float64 results.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import core

__all__ = ["group_norm", "group_norm_backward"]


def _grouped(a: np.ndarray, groups: int) -> np.ndarray:
    N, C = a.shape[:2]
    return np.reshape(a, (N, groups, C // groups) + a.shape[2:])


def _axes(ndim: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(reduce axes, parameter axes) of the grouped ``(N, G, C/G, *)`` array."""
    return tuple(range(2, ndim + 1)), (1, 2)


def _per_group(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.reshape(np.asarray(v, dtype=np.float64), np.shape(v)[:2] + (1,) * (ndim - 1))


def group_norm(
    x: np.ndarray,
    num_groups: int,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward -> ``(y, mean, var)``; ``mean``/``var`` (biased) are ``(N, G)``;
    ``weight``/``bias`` are ``(C,)``."""
    G = num_groups
    xg = _grouped(x, G)
    reduce_axes, param_axes = _axes(x.ndim)
    mean, var = core.moments(xg, reduce_axes)
    C = x.shape[1]
    w = None if weight is None else np.reshape(weight, (G, C // G))
    b = None if bias is None else np.reshape(bias, (G, C // G))
    y = core.normalize(xg, mean, var, eps, w, b, param_axes)
    N = x.shape[0]
    return y.reshape(x.shape), mean.reshape(N, G), var.reshape(N, G)


def group_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    num_groups: int,
    mean: np.ndarray,
    var: np.ndarray,
    weight: Optional[np.ndarray] = None,
    eps: float = 1e-5,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form ``(dx, dweight, dbias)``; ``mean``/``var`` are the ``(N, G)`` statistics of ``x``."""
    G = num_groups
    C = x.shape[1]
    reduce_axes, param_axes = _axes(x.ndim)
    w = None if weight is None else np.reshape(weight, (G, C // G))
    dx, dw, db = core.normalize_backward(
        _grouped(dy, G), _grouped(x, G), _per_group(mean, x.ndim), _per_group(var, x.ndim), eps,
        reduce_axes, w, param_axes, batch_stats=True,
    )
    return dx.reshape(x.shape), dw.reshape(C), db.reshape(C)

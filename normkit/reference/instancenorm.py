"""Instance normalization in plain NumPy: the oracle for InstanceNorm1d/2d/3d.

For ``x`` of shape ``(N, C, *)`` each (sample, channel) is normalized over its
spatial positions alone (``L`` of them); the affine is per channel:

.. math::

    \\mu_{nc} = \\operatorname{mean}_s x_{ncs},\\qquad
    \\sigma_{nc}^2 = \\operatorname{mean}_s (x_{ncs} - \\mu_{nc})^2,\\qquad
    y = \\gamma_c \\frac{x - \\mu_{nc}}{\\sqrt{\\sigma_{nc}^2 + \\epsilon}} + \\beta_c

With running statistics (PyTorch's ``track_running_stats=True``), training
folds the batch average of the per-instance statistics into them::

    running_mean = (1 - momentum) * running_mean + momentum * mean_n(mu)
    running_var  = (1 - momentum) * running_var  + momentum * mean_n(sigma^2 * L / (L - 1))

and inference (``use_input_stats=False``) normalizes every instance with the
running statistics. Float64 results.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import core

__all__ = ["instance_norm", "instance_norm_backward", "instance_norm_running_stats"]


def _per_instance(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.reshape(np.asarray(v, dtype=np.float64), np.shape(v)[:2] + (1,) * (ndim - 2))


def instance_norm(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    *,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    use_input_stats: bool = True,
    eps: float = 1e-5,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward -> ``(y, mean, var)`` with ``mean``/``var`` ``(N, C)``: the instances'
    statistics (biased variance), or with ``use_input_stats=False`` the ``(C,)``
    running statistics broadcast to ``(N, C)``."""
    N, C = x.shape[:2]
    if use_input_stats:
        mean, var = core.moments(x, tuple(range(2, x.ndim)))
        mean, var = mean.reshape(N, C), var.reshape(N, C)
    else:
        mean = np.broadcast_to(np.asarray(running_mean, dtype=np.float64), (N, C))
        var = np.broadcast_to(np.asarray(running_var, dtype=np.float64), (N, C))
    y = core.normalize(x, _per_instance(mean, x.ndim), _per_instance(var, x.ndim), eps, weight, bias, (1,))
    return y, mean, var


def instance_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    weight: Optional[np.ndarray] = None,
    *,
    use_input_stats: bool = True,
    eps: float = 1e-5,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form ``(dx, dweight, dbias)`` for the ``(N, C)`` statistics used forward."""
    return core.normalize_backward(
        dy, x, _per_instance(mean, x.ndim), _per_instance(var, x.ndim), eps, tuple(range(2, x.ndim)),
        weight, (1,), batch_stats=use_input_stats,
    )


def instance_norm_running_stats(
    running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray, var: np.ndarray, L: int, momentum: float
) -> Tuple[np.ndarray, np.ndarray]:
    """The running statistics after one training batch (new arrays, float64).

    ``mean``/``var`` are the ``(N, C)`` instance statistics over ``L`` positions each.
    """
    unbiased = np.asarray(var, dtype=np.float64) * (L / (L - 1))
    new_mean = (1 - momentum) * np.asarray(running_mean, dtype=np.float64) + momentum * np.mean(mean, axis=0)
    new_var = (1 - momentum) * np.asarray(running_var, dtype=np.float64) + momentum * np.mean(unbiased, axis=0)
    return new_mean, new_var

"""Batch normalization's small-batch remedies in plain NumPy: the oracle.

**Batch Renormalization** (Ioffe 2017). With the batch statistics ``mu_B``,
``var_B`` (biased) and the running ones ``mu``, ``var``:

.. math::

    \\sigma_B = \\sqrt{var_B + \\epsilon},\\qquad \\sigma = \\sqrt{var + \\epsilon}

    r = \\mathrm{clip}(\\sigma_B / \\sigma,\\ 1/r_{max},\\ r_{max}),\\qquad
    d = \\mathrm{clip}((\\mu_B - \\mu) / \\sigma,\\ -d_{max},\\ d_{max})

    y = \\gamma \\Big(\\frac{x - \\mu_B}{\\sigma_B}\\, r + d\\Big) + \\beta

``r`` and ``d`` are treated as constants by the backward (no gradient flows
through them), so the input gradient is BatchNorm's with the weight ``gamma*r``,
and ``dgamma = sum(dy * (x_hat * r + d))``, ``dbeta = sum(dy)``.
``r_max = 1, d_max = 0`` gives ``r = 1, d = 0``: plain BatchNorm.

**Ghost Batch Normalization** (Hoffer et al. 2017). The batch is split along
its first axis into consecutive *virtual batches* of ``virtual_batch_size``
samples (the last one may be shorter); each is batch-normalized with its own
statistics, and the running statistics take one update per virtual batch, in
order. In inference the running statistics are used, as in BatchNorm.

Everything is float64, written to be read; the running-statistics rule is
written out here (not imported) so that it is an independent check of
:mod:`normkit.running`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .batchnorm import _per_channel, _reduce_axes, batch_norm, batch_norm_backward, batch_stats

__all__ = ["batch_renorm", "batch_renorm_backward", "ghost_batch_norm", "renorm_corrections"]


def renorm_corrections(
    batch_mean: np.ndarray,
    batch_var: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    rmax: float,
    dmax: float,
    eps: float = 1e-5,
) -> Tuple[np.ndarray, np.ndarray]:
    """Batch Renormalization's per-channel ``(r, d)``, float64 ``(C,)``.

    ``r = clip(sigma_B / sigma, 1/rmax, rmax)`` and
    ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` with
    ``sigma_B = sqrt(batch_var + eps)`` and ``sigma = sqrt(running_var + eps)``.
    """
    sigma_b = np.sqrt(np.asarray(batch_var, np.float64) + eps)
    sigma = np.sqrt(np.asarray(running_var, np.float64) + eps)
    r = np.clip(sigma_b / sigma, 1.0 / rmax, rmax)
    d = np.clip((np.asarray(batch_mean, np.float64) - np.asarray(running_mean, np.float64)) / sigma, -dmax, dmax)
    return r, d


def batch_renorm(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    *,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    rmax: float = 3.0,
    dmax: float = 5.0,
    training: bool = True,
    eps: float = 1e-5,
    axis: int = 1,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward pass -> ``(y, mean, var, r, d)``, float64.

    Training: ``y = weight * ((x - mean) / sqrt(var + eps) * r + d) + bias`` with
    the batch's ``mean`` and biased ``var`` and ``(r, d)`` from
    :func:`renorm_corrections` against the running statistics (not updated
    here). Inference: BatchNorm with the running statistics, ``r = 1``, ``d = 0``.
    ``weight``/``bias`` default to 1 and 0.
    """
    C = x.shape[axis]
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(C) if bias is None else np.asarray(bias, np.float64)
    if not training:
        y, mean, var = batch_norm(
            x, w, b, running_mean=running_mean, running_var=running_var, training=False, eps=eps, axis=axis
        )
        return y, mean, var, np.ones(C), np.zeros(C)
    mean, var = batch_stats(x, axis)
    r, d = renorm_corrections(mean, var, running_mean, running_var, rmax, dmax, eps)
    x_hat, _, _ = batch_norm(x, None, None, training=True, eps=eps, axis=axis)
    y = _per_channel(w, x.ndim, axis) * (x_hat * _per_channel(r, x.ndim, axis) + _per_channel(d, x.ndim, axis))
    return y + _per_channel(b, x.ndim, axis), mean, var, r, d


def batch_renorm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    r: np.ndarray,
    d: np.ndarray,
    weight: Optional[np.ndarray] = None,
    *,
    eps: float = 1e-5,
    axis: int = 1,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode gradients ``(dx, dweight, dbias)`` with ``r``, ``d`` held constant.

    ``dx`` is BatchNorm's training backward with the weight ``weight * r``;
    ``dweight = sum(dy * (x_hat * r + d))``; ``dbias = sum(dy)``.
    """
    C = x.shape[axis]
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    dx, _, dbias = batch_norm_backward(dy, x, mean, var, w * r, training=True, eps=eps, axis=axis)
    mu, s2 = _per_channel(mean, x.ndim, axis), _per_channel(var, x.ndim, axis)
    x_hat = (np.asarray(x, np.float64) - mu) / np.sqrt(s2 + eps)
    z = x_hat * _per_channel(r, x.ndim, axis) + _per_channel(d, x.ndim, axis)
    dweight = (np.asarray(dy, np.float64) * z).sum(axis=_reduce_axes(x.ndim, axis))
    return dx, dweight, dbias


def ghost_batch_norm(
    x: np.ndarray,
    virtual_batch_size: int,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    *,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    num_batches_tracked: int = 0,
    momentum: Optional[float] = 0.1,
    training: bool = True,
    eps: float = 1e-5,
    axis: int = 1,
) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], int]:
    """Forward pass -> ``(y, running_mean, running_var, num_batches_tracked)`` (new arrays).

    Training: ``x`` is cut along axis 0 into chunks ``x[0:v], x[v:2v], ...``
    (``v = virtual_batch_size``; the last chunk holds what is left). Each chunk
    is normalized with its own mean and biased variance; then, chunk after
    chunk, ``running = (1 - f) * running + f * chunk_stat`` with the chunk's
    unbiased variance ``var * m / (m - 1)`` (``m`` values per channel in the
    chunk), ``f = momentum`` or, for ``momentum=None``, ``1 / count`` where
    ``count`` is ``num_batches_tracked`` after counting this chunk. Without
    running statistics the chunks are still normalized, nothing is updated.
    Inference: BatchNorm with the running statistics (no virtual batches).
    """
    if not training:
        y, _, _ = batch_norm(
            x, weight, bias, running_mean=running_mean, running_var=running_var, training=False, eps=eps, axis=axis
        )
        return y, running_mean, running_var, num_batches_tracked
    rm = None if running_mean is None else np.array(running_mean, np.float64)
    rv = None if running_var is None else np.array(running_var, np.float64)
    count = num_batches_tracked
    pieces = []
    for start in range(0, x.shape[0], virtual_batch_size):
        chunk = x[start:start + virtual_batch_size]
        y, mean, var = batch_norm(chunk, weight, bias, training=True, eps=eps, axis=axis)
        pieces.append(y)
        if rm is not None:
            m = chunk.size // chunk.shape[axis]
            count += 1
            f = momentum if momentum is not None else 1.0 / count
            rm = (1 - f) * rm + f * mean
            rv = (1 - f) * rv + f * var * m / (m - 1)
    return np.concatenate(pieces, axis=0), rm, rv, count

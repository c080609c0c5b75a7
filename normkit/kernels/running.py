"""The running-statistics update of :mod:`normkit.running`, compiled, for NumPy buffers.

:func:`normkit.running.update_running_stats` states the rule and works on NumPy
arrays and torch tensors alike, in six array operations and their temporaries.
On the layers' hot path (CPU buffers, float64 batch statistics from the kernels)
this module does the same in one compiled loop, in the same order of roundings,
so the two agree bit for bit (tested): per channel ``c``::

    running_mean[c] *= 1 - factor;  running_mean[c] += factor * mean[c]
    running_var[c]  *= 1 - factor;  running_var[c]  += factor * n / (n - 1) * var[c]
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import running

__all__ = ["update_running_stats"]

_COMPILED = (np.dtype(np.float32), np.dtype(np.float64))


@njit(cache=True, nogil=True)  # no fastmath: no fused multiply-add, NumPy's roundings exactly
def _fold(running_mean, running_var, mean, var, keep_m, keep_v, f_mean, f_var):
    for c in range(running_mean.shape[0]):
        running_mean[c] = running_mean[c] * keep_m  # in the buffer's dtype (keep_m is of it)
        running_mean[c] += f_mean * mean[c]  # in float64, rounded once on the store
        running_var[c] = running_var[c] * keep_v
        running_var[c] += f_var * var[c]


def update_running_stats(running_mean: np.ndarray, running_var: np.ndarray, mean: np.ndarray, var: np.ndarray,
                         n: int, factor: float) -> None:
    """:func:`normkit.running.update_running_stats` on 1-D NumPy buffers, compiled:
    ``running = (1 - factor) * running + factor * batch``, the biased batch ``var``
    over ``n`` values folded in unbiased. ``mean``/``var`` are float64 ``(C,)``; buffers
    other than float32/float64 (float16) take the uncompiled rule."""
    if running_mean.dtype not in _COMPILED or running_var.dtype not in _COMPILED:
        running.update_running_stats(running_mean, running_var, mean, var, n, factor)
        return
    factor = float(factor)
    # NumPy multiplies a buffer by a Python float in the buffer's dtype: so does the fold
    keep_m = running_mean.dtype.type(1.0 - factor)
    keep_v = running_var.dtype.type(1.0 - factor)
    _fold(running_mean, running_var, mean, var, keep_m, keep_v, factor, factor * running.unbiased_variance_scale(n))

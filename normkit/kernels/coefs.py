"""Per-channel coefficients of the element passes, in one place.

Forward: ``y = (x - m) * a + s`` with ``m`` the mean rounded to the input's
dtype, ``a = w * rstd`` and ``s = b - (mean - m) * a`` (the rounding of ``m`` is
absorbed in ``s``, so large offsets cancel exactly in ``x - m``).

Backward, training: ``dx = a * dy + q * (x - m) + k`` with ``a = w * rstd``,
``q = -a * rstd^2 * s2 / n``, ``k = -a * s1 / n + q * (m - mean)``, where
``s1 = sum(dy)``, ``s2 = sum(dy * (x - mean))`` over ``n`` values. With fixed
statistics ``dx = a * dy`` (``q = k = 0``).

Each function writes one channel's coefficients into ``out`` (an array of the
input's dtype, so that assignment performs the rounding).
"""

from __future__ import annotations

import numpy as np

from ._jit import helper

__all__ = ["backward_coefs", "forward_coefs", "shared_forward_coefs"]


@helper
def forward_coefs(mean, rstd, w, b, c, out):
    """``out[:3] = (m, a, s)`` for channel ``c`` (``w``/``b`` arrays or None)."""
    out[0] = mean
    scale = rstd if w is None else rstd * w[c]
    out[1] = scale
    shift = -(mean - np.float64(out[0])) * scale
    out[2] = shift if b is None else shift + b[c]


@helper
def shared_forward_coefs(mean, rstd, w, b, c0, a, s, co):
    """:func:`forward_coefs` for channels ``c0 .. c0 + len(a)`` sharing one ``mean`` and
    ``rstd`` (a GroupNorm group): ``m`` once into ``co[0]``, each channel's ``a`` and ``s``
    into the vectors ``a`` and ``s`` (of the input's dtype) in one loop LLVM vectorises."""
    co[0] = mean
    d = mean - np.float64(co[0])
    for j in range(a.shape[0]):
        scale = rstd if w is None else rstd * w[c0 + j]
        a[j] = scale
        s[j] = -d * scale if b is None else -d * scale + b[c0 + j]


@helper
def backward_coefs(mean, rstd, w, c, s1, s2, n, batch_stats, out):
    """``out[:4] = (a, q, m, k)`` for channel ``c``."""
    g = rstd if w is None else w[c] * rstd
    out[0] = g
    out[2] = mean
    if batch_stats:
        q = -g * rstd * rstd * s2 / n
        out[1] = q
        out[3] = -g * s1 / n + q * (np.float64(out[2]) - mean)
    else:
        out[1] = 0.0
        out[3] = 0.0

"""Per-channel coefficients of the element passes, in one place.

Forward: ``y = (x - m) * a + s`` with ``m`` the mean rounded to the input's
dtype, ``a = w * rstd`` and ``s = b - (mean - m) * a`` (the rounding of ``m`` is
absorbed in ``s``, so large offsets cancel exactly in ``x - m``).

Backward, training: ``dx = a * dy + q * (x - m) + k`` with ``a = w * rstd``,
``q = -a * rstd^2 * s2 / n``, ``k = -a * s1 / n + q * (m - mean)``, where
``s1 = sum(dy)``, ``s2 = sum(dy * (x - mean))`` over ``n`` values. With fixed
statistics ``dx = a * dy`` (``q = k = 0``).

:func:`forward_coefs` and :func:`backward_coefs` write channel ``c``'s
coefficients into column ``c`` of ``out``, a ``(3, C)`` or ``(4, C)`` array of
the input's dtype (so that assignment performs the rounding; its rows are the
element passes' coefficient vectors). Called in a loop over channels, the loop
vectorises: no scratch row between channels, and no division that raises
(the kernels' ``error_model="numpy"``, :mod:`._jit`).

Loops over a range of channels index them as ``np.uint64(c0 + j)``: Numba wraps
a negative signed index around (``i + len`` when ``i < 0``), and with an offset
it cannot rule out, every address becomes a select that keeps LLVM from
vectorising the loop; an unsigned index has no wraparound.
"""

from __future__ import annotations

import numpy as np

from ._jit import helper
from .reduce import finish_moments

__all__ = ["backward_channels", "backward_coefs", "finish_channels", "forward_coefs", "shared_forward_coefs"]


@helper
def forward_coefs(mean, rstd, w, b, c, out):
    """``out[:, c] = (m, a, s)`` for channel ``c`` (``w``/``b`` arrays or None)."""
    out[0, c] = mean
    scale = rstd if w is None else rstd * w[c]
    out[1, c] = scale
    shift = -(mean - np.float64(out[0, c])) * scale
    out[2, c] = shift if b is None else shift + b[c]


@helper
def finish_channels(s1, s2, shift, n, eps, w, b, c0, mean, var, rstd, coefs):
    """Channels ``c = c0 + j`` for ``j < len(s1)``, from the sums ``s1[j] = sum(x - K)``
    and ``s2[j] = sum((x - K)^2)`` of ``n`` values about ``K = shift[c]``: ``mean[c]``,
    the biased ``var[c]`` (:func:`.reduce.finish_moments`), ``rstd[c] = 1/sqrt(var + eps)``
    and the forward coefficients into ``coefs[:, c]`` (:func:`forward_coefs`). One loop
    that LLVM vectorises (square roots and divisions four or eight at a time): the
    blocked forms finish thousands of short channels per call, 65,536 instances for
    InstanceNorm on 32x2048x7x7 (``docs/experiments/block_coefs.py``)."""
    for j in range(s1.shape[0]):
        c = np.uint64(c0 + j)  # unsigned: no negative-index wraparound (see the module's notes)
        mu, v = finish_moments(s1[j], s2[j], shift[c], n)
        r = 1.0 / np.sqrt(v + eps)
        mean[c] = mu
        var[c] = v
        rstd[c] = r
        forward_coefs(mu, r, w, b, c, coefs)


@helper
def shared_forward_coefs(mean, rstd, w, b, c0, a, s, co):
    """:func:`forward_coefs` for channels ``c0 .. c0 + len(a)`` sharing one ``mean`` and
    ``rstd`` (a GroupNorm group): ``m`` once into ``co[0]``, each channel's ``a`` and ``s``
    into the vectors ``a`` and ``s`` (of the input's dtype) in one loop LLVM vectorises."""
    co[0] = mean
    d = mean - np.float64(co[0])
    for j in range(a.shape[0]):
        c = np.uint64(c0 + j)
        scale = rstd if w is None else rstd * w[c]
        a[j] = scale
        s[j] = -d * scale if b is None else -d * scale + b[c]


@helper
def backward_coefs(mean, rstd, w, c, s1, s2, n, batch_stats, out):
    """``out[:, c] = (a, q, m, k)`` for channel ``c``."""
    g = rstd if w is None else w[c] * rstd
    out[0, c] = g
    out[2, c] = mean
    if batch_stats:
        q = -g * rstd * rstd * s2 / n
        out[1, c] = q
        out[3, c] = -g * s1 / n + q * (np.float64(out[2, c]) - mean)
    else:
        out[1, c] = 0.0
        out[3, c] = 0.0


@helper
def backward_channels(mean, rstd, w, s1, s2, n, batch_stats, c0, c1, coefs):
    """:func:`backward_coefs` for channels ``c0 .. c1`` (sums ``s1[c]``, ``s2[c]``) into
    ``coefs[:, c]``; one loop that LLVM vectorises (unsigned indices, as
    :func:`finish_channels`)."""
    for j in range(c1 - c0):
        c = np.uint64(c0 + j)
        backward_coefs(mean[c], rstd[c], w, c, s1[c], s2[c], n, batch_stats, coefs)

"""The two per-element passes: the forward apply and the backward input gradient.

Both are per-channel affine maps over a C-contiguous ``(P, C, L)`` view,
computed in the input's dtype with coefficients prepared in float64 and
rounded once:

* forward / inference: ``y = (x - m[c]) * a[c] + b[c]`` -- normalization and the
  learned affine folded into one subtract and one multiply-add per element. ``m``
  is the mean rounded to the input's dtype and ``b`` carries the rounding
  remainder, so that large offsets cancel exactly (``x - m``) instead of after a
  multiplication: a constant channel gives exactly ``bias``, and float32 data
  with mean 1e4 and std 1 keeps its relative precision;
* backward: ``dx = a[c] * dy + b[c] * (x - m[c]) + k[c]``.

The memory pattern follows :mod:`.reduce`: long contiguous runs are processed as
rows split in ``(p, c, chunk)`` tasks; short runs (channels-last) row by row of
the ``(P, C*L)`` matrix with the coefficients expanded along it.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, twin
from .reduce import ROW_MIN, task_bounds

__all__ = [
    "ROW_BLOCK_ELEMS", "affine_par", "affine_ser", "affine2_par", "affine2_ser", "affine_run", "affine2_run",
]

#: Elements of the (P, C*L) matrix handled per task in the columns pattern.
ROW_BLOCK_ELEMS = 1 << 14


@helper
def _expand(v, group, W, dtype):
    """``v`` repeated ``group`` times per entry, as a length-``W`` vector of ``dtype``."""
    out = np.empty(W, dtype=dtype)
    for j in range(W):
        out[j] = v[j // group]
    return out


@helper
def affine_run(xr, o, m, a, b):
    for i in range(xr.shape[0]):
        o[i] = (xr[i] - m) * a + b


@helper
def _affine_row(xr, o, mw, aw, bw):
    for j in range(xr.shape[0]):
        o[j] = (xr[j] - mw[j]) * aw[j] + bw[j]


def _affine(x, m, a, b, out, chunk, row_block):
    P, C, L = x.shape
    if L >= ROW_MIN:
        K = max(1, (L + chunk - 1) // chunk)
        for t in prange(P * C * K):
            p, c, lo, n = task_bounds(t, C, K, L, chunk)
            affine_run(x[p, c, lo:lo + n], out[p, c, lo:lo + n], m[c], a[c], b[c])
        return
    W = C * L
    x2 = x.reshape(P, W)
    o2 = out.reshape(P, W)
    mw = _expand(m, L, W, x.dtype)
    aw = _expand(a, L, W, x.dtype)
    bw = _expand(b, L, W, x.dtype)
    rows = max(1, row_block // max(1, W))
    for t in prange((P + rows - 1) // rows):
        for r in range(t * rows, min(P, (t + 1) * rows)):
            _affine_row(x2[r], o2[r], mw, aw, bw)


@helper
def affine2_run(gr, xr, o, a, b, m, k):
    for i in range(xr.shape[0]):
        o[i] = gr[i] * a + (xr[i] - m) * b + k


@helper
def _affine2_row(gr, xr, o, aw, bw, mw, kw):
    for j in range(xr.shape[0]):
        o[j] = gr[j] * aw[j] + (xr[j] - mw[j]) * bw[j] + kw[j]


def _affine2(dy, x, a, b, m, k, out, chunk, row_block):
    P, C, L = x.shape
    if L >= ROW_MIN:
        K = max(1, (L + chunk - 1) // chunk)
        for t in prange(P * C * K):
            p, c, lo, n = task_bounds(t, C, K, L, chunk)
            affine2_run(dy[p, c, lo:lo + n], x[p, c, lo:lo + n], out[p, c, lo:lo + n], a[c], b[c], m[c], k[c])
        return
    W = C * L
    g2 = dy.reshape(P, W)
    x2 = x.reshape(P, W)
    o2 = out.reshape(P, W)
    aw = _expand(a, L, W, x.dtype)
    bw = _expand(b, L, W, x.dtype)
    mw = _expand(m, L, W, x.dtype)
    kw = _expand(k, L, W, x.dtype)
    rows = max(1, row_block // max(1, W))
    for t in prange((P + rows - 1) // rows):
        for r in range(t * rows, min(P, (t + 1) * rows)):
            _affine2_row(g2[r], x2[r], o2[r], aw, bw, mw, kw)


#: ``affine(x, m, a, b, out, chunk, row_block)``: ``out = (x - m[c]) * a[c] + b[c]``;
#: ``m``, ``a``, ``b`` in ``x``'s dtype.
affine_par, affine_ser = twin(_affine)
#: ``affine2(dy, x, a, b, m, k, out, chunk, row_block)``:
#: ``out = a[c] * dy + b[c] * (x - m[c]) + k[c]``, every array of one dtype.
affine2_par, affine2_ser = twin(_affine2)

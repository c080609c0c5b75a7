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

Two memory patterns, by the length ``L`` of the contiguous runs:

* **rows** (``L > SHORT_RUN``): runs are processed one by one, split in
  ``(p, c, chunk)`` tasks;
* **blocks** (short runs: channels-last where ``L == 1``, small NCHW maps such
  as 7x7): the ``(P, C*L)`` matrix is cut in tasks of (a block of whole channels,
  a range of rows); a task expands its channels' coefficients along the block's
  ``cb*L`` columns once and streams its rows through them, so the vector loops
  run over long row segments instead of ending every ``L`` elements.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, twin
from .reduce import task_bounds

__all__ = [
    "BLOCK_COLS", "ROW_BLOCK_ELEMS", "SHORT_RUN", "block_channels", "affine_par", "affine_ser", "affine2_par", "affine2_ser", "affine_run", "affine2_run",
]

#: Elements of the (P, C*L) matrix handled per task in the blocks pattern.
ROW_BLOCK_ELEMS = 1 << 16
#: Longest run handled by the blocks pattern (measured: at 7x7 the blocks pattern
#: takes 0.7x the time of the rows pattern, at 14x14 about the same).
SHORT_RUN = 64
#: Columns a block of channels aims at (its coefficient vectors stay in L1).
BLOCK_COLS = 1024


@helper
def block_channels(C, L):
    """Channels per block: about :data:`BLOCK_COLS` columns, at least one channel."""
    return max(1, min(C, BLOCK_COLS // L))


@helper
def expand(v, c0, c1, L, dtype):
    """``v[c0:c1]`` with every entry repeated ``L`` times, as a vector of ``dtype``."""
    out = np.empty((c1 - c0) * L, dtype=dtype)
    for c in range(c0, c1):
        val = v[c]
        for j in range((c - c0) * L, (c - c0 + 1) * L):
            out[j] = val
    return out


@helper
def block_task(t, C, L, P, cb, rows):
    """Blocks task ``t`` -> (first channel, end channel, first row, end row)."""
    nb = (C + cb - 1) // cb
    c0 = (t % nb) * cb
    r0 = (t // nb) * rows
    return c0, min(C, c0 + cb), r0, min(P, r0 + rows)


@helper
def block_tasks(P, C, L, row_block):
    """(channels per block, rows per task, number of tasks) of the blocks pattern."""
    cb = block_channels(C, L)
    rows = max(1, row_block // (cb * L))
    return cb, rows, ((C + cb - 1) // cb) * ((P + rows - 1) // rows)


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
    if L > SHORT_RUN:
        K = max(1, (L + chunk - 1) // chunk)
        for t in prange(P * C * K):
            p, c, lo, n = task_bounds(t, C, K, L, chunk)
            affine_run(x[p, c, lo:lo + n], out[p, c, lo:lo + n], m[c], a[c], b[c])
        return
    x2 = x.reshape(P, C * L)
    o2 = out.reshape(P, C * L)
    cb, rows, tasks = block_tasks(P, C, L, row_block)
    for t in prange(tasks):
        c0, c1, r0, r1 = block_task(t, C, L, P, cb, rows)
        j0 = c0 * L
        j1 = c1 * L
        mw = expand(m, c0, c1, L, x.dtype)
        aw = expand(a, c0, c1, L, x.dtype)
        bw = expand(b, c0, c1, L, x.dtype)
        for r in range(r0, r1):
            _affine_row(x2[r, j0:j1], o2[r, j0:j1], mw, aw, bw)


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
    if L > SHORT_RUN:
        K = max(1, (L + chunk - 1) // chunk)
        for t in prange(P * C * K):
            p, c, lo, n = task_bounds(t, C, K, L, chunk)
            affine2_run(dy[p, c, lo:lo + n], x[p, c, lo:lo + n], out[p, c, lo:lo + n], a[c], b[c], m[c], k[c])
        return
    g2 = dy.reshape(P, C * L)
    x2 = x.reshape(P, C * L)
    o2 = out.reshape(P, C * L)
    cb, rows, tasks = block_tasks(P, C, L, row_block)
    for t in prange(tasks):
        c0, c1, r0, r1 = block_task(t, C, L, P, cb, rows)
        j0 = c0 * L
        j1 = c1 * L
        aw = expand(a, c0, c1, L, x.dtype)
        bw = expand(b, c0, c1, L, x.dtype)
        mw = expand(m, c0, c1, L, x.dtype)
        kw = expand(k, c0, c1, L, x.dtype)
        for r in range(r0, r1):
            _affine2_row(g2[r, j0:j1], x2[r, j0:j1], o2[r, j0:j1], aw, bw, mw, kw)


#: ``affine(x, m, a, b, out, chunk, row_block)``: ``out = (x - m[c]) * a[c] + b[c]``;
#: ``m``, ``a``, ``b`` in ``x``'s dtype.
affine_par, affine_ser = twin(_affine)
#: ``affine2(dy, x, a, b, m, k, out, chunk, row_block)``:
#: ``out = a[c] * dy + b[c] * (x - m[c]) + k[c]``, every array of one dtype.
affine2_par, affine2_ser = twin(_affine2)

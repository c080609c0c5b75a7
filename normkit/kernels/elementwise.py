"""The two per-element passes: the forward apply and the backward input gradient.

Both are per-channel affine maps over a C-contiguous ``(P, C, L)`` view,
computed in the input's dtype with coefficients prepared in float64 and
rounded once:

* forward / inference: ``y = (x - m[c]) * a[c] + b[c]`` -- normalization and the
  learned affine folded into one subtract and one multiply-add per element. ``m``
  is the mean rounded to the input's dtype and ``b`` carries the rounding
  remainder, so that the large offsets cancel exactly (``x - m``) instead of
  after a multiplication: a constant channel gives exactly ``bias``, and data
  with mean 1e4 and std 1 in float32 keeps its relative precision;
* backward: ``dx = a[c] * dy + b[c] * (x - m[c]) + k[c]``.

The memory pattern follows :mod:`.reduce`: long contiguous runs are processed as
rows split in ``(p, c, chunk)`` tasks; short runs (channels-last) row by row of
the ``(P, C*L)`` matrix with the coefficients expanded along it.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import kernel
from .reduce import CHUNK, ROW_MIN, task_bounds

__all__ = ["channel_affine", "channel_affine2"]

#: Rows of the (P, C*L) matrix handled per task in the columns pattern.
_ROW_BLOCK_ELEMS = 1 << 14


@kernel
def _rows_affine(x, m, a, b, out, chunk):
    P, C, L = x.shape
    K = max(1, (L + chunk - 1) // chunk)
    for t in prange(P * C * K):
        p, c, lo, n = task_bounds(t, C, K, L, chunk)
        xr = x[p, c, lo:lo + n]
        o = out[p, c, lo:lo + n]
        mc = m[c]
        ac = a[c]
        bc = b[c]
        for i in range(n):
            o[i] = (xr[i] - mc) * ac + bc


@kernel
def _cols_affine(x, m, a, b, out, group, rows_per_task):
    M, W = x.shape
    mw = np.empty(W, dtype=x.dtype)
    aw = np.empty(W, dtype=x.dtype)
    bw = np.empty(W, dtype=x.dtype)
    for j in range(W):
        mw[j] = m[j // group]
        aw[j] = a[j // group]
        bw[j] = b[j // group]
    ntasks = (M + rows_per_task - 1) // rows_per_task
    for t in prange(ntasks):
        for r in range(t * rows_per_task, min(M, (t + 1) * rows_per_task)):
            xr = x[r]
            o = out[r]
            for j in range(W):
                o[j] = (xr[j] - mw[j]) * aw[j] + bw[j]


@kernel
def _rows_affine2(dy, x, a, b, m, k, out, chunk):
    P, C, L = x.shape
    K = max(1, (L + chunk - 1) // chunk)
    for t in prange(P * C * K):
        p, c, lo, n = task_bounds(t, C, K, L, chunk)
        gr = dy[p, c, lo:lo + n]
        xr = x[p, c, lo:lo + n]
        o = out[p, c, lo:lo + n]
        ac = a[c]
        bc = b[c]
        mc = m[c]
        kc = k[c]
        for i in range(n):
            o[i] = gr[i] * ac + (xr[i] - mc) * bc + kc


@kernel
def _cols_affine2(dy, x, a, b, m, k, out, group, rows_per_task):
    M, W = x.shape
    aw = np.empty(W, dtype=x.dtype)
    bw = np.empty(W, dtype=x.dtype)
    mw = np.empty(W, dtype=x.dtype)
    kw = np.empty(W, dtype=x.dtype)
    for j in range(W):
        c = j // group
        aw[j] = a[c]
        bw[j] = b[c]
        mw[j] = m[c]
        kw[j] = k[c]
    ntasks = (M + rows_per_task - 1) // rows_per_task
    for t in prange(ntasks):
        for r in range(t * rows_per_task, min(M, (t + 1) * rows_per_task)):
            gr = dy[r]
            xr = x[r]
            o = out[r]
            for j in range(W):
                o[j] = gr[j] * aw[j] + (xr[j] - mw[j]) * bw[j] + kw[j]


def _rows_per_task(W: int) -> int:
    return max(1, _ROW_BLOCK_ELEMS // max(1, W))


def channel_affine(x: np.ndarray, m: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = (x - m[c]) * a[c] + b[c]`` over a ``(P, C, L)`` view; ``m``, ``a``, ``b`` have ``x``'s dtype."""
    P, C, L = x.shape
    if L >= ROW_MIN:
        _rows_affine(x, m, a, b, out, CHUNK)
    else:
        W = C * L
        _cols_affine(x.reshape(P, W), m, a, b, out.reshape(P, W), L, _rows_per_task(W))
    return out


def channel_affine2(
    dy: np.ndarray, x: np.ndarray, a: np.ndarray, b: np.ndarray, m: np.ndarray, k: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """``out = a[c] * dy + b[c] * (x - m[c]) + k[c]`` over ``(P, C, L)`` views of one dtype."""
    P, C, L = x.shape
    if L >= ROW_MIN:
        _rows_affine2(dy, x, a, b, m, k, out, CHUNK)
    else:
        W = C * L
        _cols_affine2(
            dy.reshape(P, W), x.reshape(P, W), a, b, m, k, out.reshape(P, W), L, _rows_per_task(W)
        )
    return out

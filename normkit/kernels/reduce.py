"""The one reduction every normalization needs: per-channel paired sums.

Over a C-contiguous view ``(P, C, L)`` -- channel ``c`` owns the values
``x[:, c, :]`` -- compute, for every channel, in float64::

    s1[c] = sum(u - u_shift[c])
    s2[c] = sum((u - u_shift[c]) * (v - v_shift[c]))

Forward statistics use ``u = v = x`` with the shift ``K[c]`` set to a value of
the channel (its first): ``s1 = sum(x - K)``, ``s2 = sum((x - K)^2)``, giving
``mean = K + s1/n`` and ``M2 = s2 - s1^2/n``. Shifting by a value of the channel
removes the catastrophic cancellation of the raw ``E[x^2] - E[x]^2``: by
Samuelson's inequality ``(mean - K)^2 <= (n - 1) var``, so the relative error of
``M2`` stays below ``n * 2^-53`` even for adversarial data, and for data whose
offset dwarfs its spread (mean 1e4, std 1) it is at float64 rounding.
The backward pass uses ``u = dy`` (shift 0) and ``v = x`` (shift = the mean):
``s1 = sum(dy)`` and ``s2 = sum(dy * (x - mean))``. One pass over memory, one
kernel for both directions.

Two memory patterns, chosen by the length ``L`` of the contiguous runs:

* **rows** (``L >= ROW_MIN``, e.g. NCHW): each run ``x[p, c, :]`` is reduced
  with scalar accumulators (LLVM interleaves and vectorises them); the work is
  split over ``(p, c, chunk)`` tasks, so it parallelises whatever ``C`` is.
* **columns** (short runs, e.g. channels-last where ``L == 1``): rows of the
  ``(P, C*L)`` matrix are streamed through vector accumulators, split over
  (row range, column block) tasks; the ``L`` columns of a channel are summed at
  the end.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, kernel

__all__ = ["ROW_MIN", "CHUNK", "channel_sums", "task_bounds"]

#: Shortest contiguous run handled by the rows pattern.
ROW_MIN = 16
#: Elements per rows task (runs longer than this are split).
CHUNK = 16384
#: Column block of the columns pattern (accumulators stay in L1).
COL_BLOCK = 1024
#: Elements a columns task should at least stream.
COL_TASK_ELEMS = 1 << 16
#: Upper bound on row tasks of the columns pattern (fixed, not the thread count,
#: so results do not depend on how many threads run).
COL_TASKS_MAX = 16


@helper
def task_bounds(t, C, K, L, chunk):
    """Rows task ``t`` -> (p, c, start, length) over ``(P, C, L)`` split in ``K`` chunks."""
    k = t % K
    pc = t // K
    return pc // C, pc % C, k * chunk, min(chunk, L - k * chunk)


@kernel
def _rows_sums(u, v, us, vs, chunk):
    P, C, L = u.shape
    K = max(1, (L + chunk - 1) // chunk)
    p1 = np.empty((P, C, K))
    p2 = np.empty((P, C, K))
    for t in prange(P * C * K):
        p, c, lo, n = task_bounds(t, C, K, L, chunk)
        ur = u[p, c, lo:lo + n]
        vr = v[p, c, lo:lo + n]
        a = us[c]
        b = vs[c]
        s1 = 0.0
        s2 = 0.0
        for i in range(n):
            d = ur[i] - a
            s1 += d
            s2 += d * (vr[i] - b)
        p1[p, c, t % K] = s1
        p2[p, c, t % K] = s2
    s1 = np.empty(C)
    s2 = np.empty(C)
    for c in prange(C):
        s1[c] = p1[:, c, :].sum()
        s2[c] = p2[:, c, :].sum()
    return s1, s2


@kernel
def _cols_sums(u, v, us, vs, group, row_tasks, block):
    # u, v: (M, W) with W = C * group; us, vs: (C,)
    M, W = u.shape
    C = W // group
    nblocks = max(1, (W + block - 1) // block)
    p1 = np.zeros((row_tasks, W))
    p2 = np.zeros((row_tasks, W))
    uw = np.empty(W)
    vw = np.empty(W)
    for j in range(W):
        uw[j] = us[j // group]
        vw[j] = vs[j // group]
    for t in prange(row_tasks * nblocks):
        tr = t // nblocks
        j0 = (t % nblocks) * block
        nj = min(block, W - j0)
        a1 = p1[tr, j0:j0 + nj]
        a2 = p2[tr, j0:j0 + nj]
        ua = uw[j0:j0 + nj]
        va = vw[j0:j0 + nj]
        for r in range(tr * M // row_tasks, (tr + 1) * M // row_tasks):
            ur = u[r, j0:j0 + nj]
            vr = v[r, j0:j0 + nj]
            for j in range(nj):
                d = ur[j] - ua[j]
                a1[j] += d
                a2[j] += d * (vr[j] - va[j])
    s1 = np.empty(C)
    s2 = np.empty(C)
    for c in prange(C):
        s1[c] = p1[:, c * group:(c + 1) * group].sum()
        s2[c] = p2[:, c * group:(c + 1) * group].sum()
    return s1, s2


def channel_sums(u: np.ndarray, v: np.ndarray, u_shift: np.ndarray, v_shift: np.ndarray):
    """Per-channel ``(sum(u - us), sum((u - us) * (v - vs)))`` over a ``(P, C, L)`` view.

    ``u`` and ``v`` are C-contiguous float32/float64 arrays of one shape and
    dtype (they may be the same array); the shifts are float64 ``(C,)``.
    Returns two float64 ``(C,)`` arrays.
    """
    P, C, L = u.shape
    if L >= ROW_MIN:
        return _rows_sums(u, v, u_shift, v_shift, CHUNK)
    M, W = P, C * L
    row_tasks = int(min(COL_TASKS_MAX, max(1, M), max(1, (M * W) // COL_TASK_ELEMS)))
    return _cols_sums(u.reshape(M, W), v.reshape(M, W), u_shift, v_shift, L, row_tasks, COL_BLOCK)

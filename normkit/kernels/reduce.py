"""The one reduction every normalization needs: per-channel paired sums.

Over a C-contiguous view ``(P, C, L)`` -- channel ``c`` owns the values
``x[:, c, :]`` -- compute, for every channel, in float64::

    s1[c] = sum(u - us[c])
    s2[c] = sum((u - us[c]) * (v - vs[c]))

Forward statistics use ``u = v = x`` with the shift ``K[c]`` set to a value of
the channel (its first): ``s1 = sum(x - K)``, ``s2 = sum((x - K)^2)``, giving
``mean = K + s1/n`` and ``M2 = s2 - s1^2/n``. Shifting by a value of the channel
removes the catastrophic cancellation of the raw ``E[x^2] - E[x]^2``: by
Samuelson's inequality ``(mean - K)^2 <= (n - 1) var``, so the relative error of
``M2`` stays below ``n * 2^-53`` even for adversarial data, and for data whose
offset dwarfs its spread (mean 1e4, std 1) it is at float64 rounding. (Measured
on these machines: this one-pass form vectorises to about 1.4x the throughput of
a two-pass-per-tile Welford/Chan merge, with the same accuracy in practice.)
The backward pass uses ``u = dy`` (shift 0) and ``v = x`` (shift = the mean):
``s1 = sum(dy)`` and ``s2 = sum(dy * (x - mean))``. One pass over memory, one
kernel for both directions.

Two memory patterns, chosen by the length ``L`` of the contiguous runs:

* **rows** (``L >= ROW_MIN``, e.g. NCHW): each run ``x[p, c, :]`` is reduced
  with scalar accumulators (LLVM interleaves and vectorises them); the work is
  split over ``(p, c, chunk)`` tasks, so it parallelises whatever ``C`` is.
* **columns** (short runs, e.g. channels-last where ``L == 1``): rows of the
  ``(P, C*L)`` matrix are streamed through vector accumulators, split over
  (row range, column block) tasks: tiles of 32 columns keep their sums in
  registers down blocks of rows (:mod:`.tiles`), the columns after the last
  tile are swept two rows at a time; the ``L`` columns of a channel are summed
  at the end. The number of row tasks depends on the size only, not on the
  thread count, so results are the same however many threads run.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, twin
from .tiles import TILE, TILE_ROWS, tile_sums
from .views import borrow, run_of

__all__ = [
    "ROW_MIN", "CHUNK", "COL_BLOCK", "COL_TASK_ELEMS", "COL_TASKS_MAX", "PAD", "apart", "channel_moments",
    "channel_shift", "expand", "finish_moments", "run_moments", "run_sums", "sums_par", "sums_ser", "task_bounds",
]

#: Shortest contiguous run handled by the rows pattern.
ROW_MIN = 16
#: Elements per rows task (runs longer than this are split).
CHUNK = 16384
#: Column block of the columns pattern (its accumulators stay in L1).
COL_BLOCK = 1024
#: Elements a columns task should at least stream.
COL_TASK_ELEMS = 1 << 16
#: Upper bound on row tasks of the columns pattern.
COL_TASKS_MAX = 16
#: float64 entries between row tasks' partial sums in the columns pattern: a page.
PAD = 512


@helper
def task_bounds(t, C, K, L, chunk):
    """Rows task ``t`` -> (p, c, start, length) over ``(P, C, L)`` split in ``K`` chunks per run."""
    k = t % K
    pc = t // K
    return pc // C, pc % C, k * chunk, min(chunk, L - k * chunk)


@helper
def _row_run(ur, vr, a, b):
    s1 = 0.0
    s2 = 0.0
    for i in range(ur.shape[0]):
        d = ur[i] - a
        s1 += d
        s2 += d * (vr[i] - b)
    return s1, s2


@helper
def run_moments(xr, k):
    """``(sum(x - k), sum((x - k)^2))`` of one contiguous run, float64 (forward statistics)."""
    s1 = 0.0
    s2 = 0.0
    for i in range(xr.shape[0]):
        d = xr[i] - k
        s1 += d
        s2 += d * d
    return s1, s2


@helper
def run_sums(ur, vr, a, b):
    """``(sum(u - a), sum((u - a) * (v - b)))`` of one contiguous run, float64."""
    return _row_run(ur, vr, a, b)


@helper
def finish_moments(s1, s2, shift, n):
    """Shifted sums of ``n`` values -> (mean, biased variance); rounding below 0 clamps, NaN stays."""
    d = s1 / n
    v = s2 / n - d * d
    return shift + d, (0.0 if v < 0.0 else v)


@helper
def channel_shift(x, c):
    """The shift for channel ``c`` of a (P, C, L) view: its first value, or 0 if not finite
    (an infinite shift would make sum(x - K) NaN; 0 keeps +-Inf in the mean, as torch)."""
    k = np.float64(x[0, c, 0])
    return k if np.isfinite(k) else 0.0


@helper
def channel_moments(x, c):
    """(mean, biased variance) of channel ``c`` of a (P, C, L) view, over its P runs, float64."""
    k = channel_shift(x, c)
    s1 = 0.0
    s2 = 0.0
    for p in range(x.shape[0]):
        a1, a2 = run_moments(run_of(x, p, c), k)
        s1 += a1
        s2 += a2
    return finish_moments(s1, s2, k, x.shape[0] * x.shape[2])


@helper
def apart(rows, width):
    """``rows`` rows of ``width`` float64 accumulators, one per task or worker, each row
    :data:`PAD` entries (a page) from the next: accumulators that take a store on every
    sweep run at one core's speed when two cores store within one 4 KiB page, even on
    different cache lines (``docs/experiments/page_apart.py``). Use ``[r, :width]``;
    the caller zeroes what it accumulates into."""
    return np.empty((rows, width + PAD))


@helper
def expand(v, c0, c1, L, dtype, reps=1):
    """``v[c0:c1]`` with every entry repeated ``L`` times, as a vector of ``dtype``;
    ``reps`` copies of it end to end."""
    W = (c1 - c0) * L
    out = np.empty(W * reps, dtype=dtype)
    for c in range(c0, c1):
        val = v[c]
        for j in range((c - c0) * L, (c - c0 + 1) * L):
            out[j] = val
    for r in range(1, reps):
        out[r * W:(r + 1) * W] = out[:W]
    return out


@helper
def _col_rows(u, v, uw, vw, r0, r1, j0, nj, a1, a2):
    """Columns ``j0 .. j0 + nj`` of rows ``r0 .. r1``: adds ``sum(u - uw)`` to ``a1`` and
    ``sum((u - uw) * (v - vw))`` to ``a2``, in float64; ``v`` and ``vw`` None for the
    forward moments (``v = u``, ``vw = uw``: each value loaded once). Whole tiles of
    columns keep their sums in registers down blocks of rows (:mod:`.tiles`); the
    columns after them are swept."""
    full = (nj // TILE) * TILE
    for rb in range(r0, r1, TILE_ROWS):
        tile_sums(u, v, uw, vw, rb, min(rb + TILE_ROWS, r1), j0, full // TILE, a1, a2)
    if full < nj:
        if v is None:
            _sweep_rows_sq(u, uw[full:nj], r0, r1, j0 + full, nj - full, a1[full:nj], a2[full:nj])
        else:
            _sweep_rows(u, v, uw[full:nj], vw[full:nj], r0, r1, j0 + full, nj - full, a1[full:nj], a2[full:nj])


@helper
def _sweep_rows(u, v, uw, vw, r0, r1, j0, nj, a1, a2):
    """:func:`_col_rows` swept row by row, two rows per sweep, so the accumulators (in
    L1, not registers) are loaded and stored once per two rows: their stores, not the
    arithmetic, bound the one-row form."""
    r = r0
    while r + 2 <= r1:
        u0 = u[r, j0:j0 + nj]
        u1 = u[r + 1, j0:j0 + nj]
        v0 = v[r, j0:j0 + nj]
        v1 = v[r + 1, j0:j0 + nj]
        for j in range(nj):
            d0 = u0[j] - uw[j]
            d1 = u1[j] - uw[j]
            a1[j] += d0 + d1
            a2[j] += d0 * (v0[j] - vw[j]) + d1 * (v1[j] - vw[j])
        r += 2
    if r < r1:
        ur = u[r, j0:j0 + nj]
        vr = v[r, j0:j0 + nj]
        for j in range(nj):
            d = ur[j] - uw[j]
            a1[j] += d
            a2[j] += d * (vr[j] - vw[j])


@helper
def _sweep_rows_sq(u, uw, r0, r1, j0, nj, a1, a2):
    """:func:`_sweep_rows` for ``u = v`` with one shift: half the loads."""
    r = r0
    while r + 2 <= r1:
        u0 = u[r, j0:j0 + nj]
        u1 = u[r + 1, j0:j0 + nj]
        for j in range(nj):
            d0 = u0[j] - uw[j]
            d1 = u1[j] - uw[j]
            a1[j] += d0 + d1
            a2[j] += d0 * d0 + d1 * d1
        r += 2
    if r < r1:
        ur = u[r, j0:j0 + nj]
        for j in range(nj):
            d = ur[j] - uw[j]
            a1[j] += d
            a2[j] += d * d


def _sums(u, v, us, vs, s1, s2, chunk, block, task_elems, tasks_max, square):
    P, C, L = u.shape
    if L >= ROW_MIN:  # rows pattern
        K = max(1, (L + chunk - 1) // chunk)
        p1 = np.empty((P, C, K))
        p2 = np.empty((P, C, K))
        for t in prange(P * C * K):
            p, c, lo, n = task_bounds(t, C, K, L, chunk)
            at = (p * C + c) * L + lo
            if square:
                a, b = run_moments(borrow(u, at, n), us[c])
            else:
                a, b = _row_run(borrow(u, at, n), borrow(v, at, n), us[c], vs[c])
            p1[p, c, t % K] = a
            p2[p, c, t % K] = b
        s1[:] = 0.0  # little work per channel: a parallel region would cost more
        s2[:] = 0.0
        for p in range(P):
            for c in range(C):
                for k in range(K):
                    s1[c] += p1[p, c, k]
                    s2[c] += p2[p, c, k]
        return
    # columns pattern
    W = C * L
    u2 = u.reshape(P, W)
    v2 = v.reshape(P, W)
    row_tasks = min(tasks_max, max(1, P), max(1, (P * W) // task_elems))
    nblocks = max(1, (W + block - 1) // block)
    tasks = row_tasks * nblocks
    p1 = apart(tasks, min(block, W))  # per task, a page from the others' (col_tasks.py)
    p2 = apart(tasks, min(block, W))
    uw = expand(us, 0, C, L, np.float64)
    vw = uw if square else expand(vs, 0, C, L, np.float64)  # the moments read uw only
    for t in prange(tasks):
        tr = t // nblocks
        j0 = (t % nblocks) * block
        nj = min(block, W - j0)
        r0 = tr * P // row_tasks
        r1 = (tr + 1) * P // row_tasks
        a1 = p1[t, :nj]
        a2 = p2[t, :nj]
        a1[:] = 0.0
        a2[:] = 0.0
        if square:
            _col_rows(u2, None, uw[j0:j0 + nj], None, r0, r1, j0, nj, a1, a2)
        else:
            _col_rows(u2, v2, uw[j0:j0 + nj], vw[j0:j0 + nj], r0, r1, j0, nj, a1, a2)
    s1[:] = 0.0
    s2[:] = 0.0
    for tr in range(row_tasks):  # in column order within each row task, as one sweep would add
        c = 0
        left = L  # columns of channel c still to come
        for t in range(tr * nblocks, (tr + 1) * nblocks):
            for j in range(min(block, W - (t % nblocks) * block)):
                s1[c] += p1[t, j]
                s2[c] += p2[t, j]
                left -= 1
                if left == 0:
                    c += 1
                    left = L


#: ``sums(u, v, us, vs, s1, s2, chunk, block, task_elems, tasks_max, square)``: writes the
#: per-channel ``s1``, ``s2`` (float64 ``(C,)``) of ``(P, C, L)`` views ``u``, ``v``
#: (one shape and dtype) with float64 shifts ``us``, ``vs``; ``square=True`` promises
#: ``u is v`` and ``us is vs`` (the forward statistics) and reads them once.
sums_par, sums_ser = twin(_sums)

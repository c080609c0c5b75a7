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

Three memory patterns, by the length ``L`` of the contiguous runs:

* **rows** (``L >= chunk``): runs are processed one by one, split in
  ``(p, c, chunk)`` tasks, so that even a few long runs feed every thread;
* **segments** (``ROW_MIN <= L < chunk``, NCHW maps from 4x4 to 128x128): a task
  is one row ``p`` of a block of whole channels, ``cb*L`` contiguous values
  walked as one run of segments of ``L`` values, each with its channel's
  coefficients (:func:`.stream.segment_map`): no loop set-up and no unaligned
  head and tail per run of ``L`` values, and the whole run streamed. Measured
  against the rows and blocks patterns it replaced there
  (``docs/experiments/eval_segments.py``): 1.2-1.5x faster on 8x8 to 14x14
  maps, level from 28x28 up;
* **blocks** (``L < ROW_MIN``: channels-last where ``L == 1``): the
  ``(P, C*L)`` matrix is cut in tasks of (a block of whole channels, a range of
  rows); a task expands its channels' coefficients along the block's ``cb*L``
  columns once and streams its rows through them, so the vector loops run over
  long row segments instead of ending every ``L`` elements.

Both write through :func:`.stream.stream_map`: with ``nt`` true (large outputs,
decided by the entry points) whole cache lines are stored non-temporally, and
each worker's span of tasks ends with a fence.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, twin
from .reduce import ROW_MIN, expand, task_bounds
from .stream import fence, segment_map, span, stream_map, workers

__all__ = [
    "AFFINE", "AFFINE2", "BLOCK_COLS", "ROW_BLOCK_ELEMS", "affine", "affine2", "affine2_par",
    "affine2_ser", "affine_par", "affine_ser", "block_channels", "block_task", "block_tasks", "segment_task", "segment_tasks",
]

#: Elements of the (P, C*L) matrix handled per task in the blocks pattern, and
#: the most per task in the segments pattern.
ROW_BLOCK_ELEMS = 1 << 16
#: Columns a block of channels aims at (its coefficient vectors stay in L1).
BLOCK_COLS = 1024


@helper
def block_channels(C, L):
    """Channels per block: about :data:`BLOCK_COLS` columns, at least one channel."""
    return max(1, min(C, BLOCK_COLS // L))


@helper
def block_task(t, C, L, P, cb, rows):
    """Blocks task ``t`` -> (first channel, end channel, first row, end row)."""
    nb = (C + cb - 1) // cb
    c0 = (t % nb) * cb
    r0 = (t // nb) * rows
    return c0, min(C, c0 + cb), r0, min(P, r0 + rows)


@helper
def segment_tasks(P, C, L, row_block):
    """(channels per task, tasks) of the segments pattern: about ``row_block`` values
    per task, fewer where that leaves a thread without two tasks."""
    cb = max(1, min(C, row_block // L))
    want = 2 * workers(P * C)
    while cb > 1 and P * ((C + cb - 1) // cb) < want:
        cb = (cb + 1) // 2
    return cb, P * ((C + cb - 1) // cb)


@helper
def segment_task(t, C, L, cb):
    """Segments task ``t`` -> (row, first channel, end channel, values in the run)."""
    nb = (C + cb - 1) // cb
    c0 = (t % nb) * cb
    c1 = min(C, c0 + cb)
    return t // nb, c0, c1, (c1 - c0) * L


@helper
def block_tasks(P, C, L, row_block):
    """(channels per block, rows per sweep, rows per task, number of tasks) of the
    blocks pattern. When a block spans every channel (narrow rows, e.g.
    channels-last with few channels) consecutive rows are contiguous, and a sweep
    covers several of them at once (coefficients tiled to match), so the vector
    loops do not restart every ``C*L`` elements."""
    cb = block_channels(C, L)
    reps = max(1, BLOCK_COLS // (C * L)) if cb == C else 1
    rows = max(1, row_block // (cb * L)) // reps * reps
    rows = max(reps, rows)
    return cb, reps, rows, ((C + cb - 1) // cb) * ((P + rows - 1) // rows)


#: ``y = (x - m) * a + b``: the forward, and ``dx = a * dy`` with ``m = b = 0``.
AFFINE = "0 1 - 2 * 3 +"
#: ``dx = dy * a + (x - m) * b + k``.
AFFINE2 = "0 2 * 1 4 - 3 * + 5 +"


@helper
def affine(xr, o, m, a, b, nt):
    """``o = (x - m) * a + b`` over a contiguous run; ``m``, ``a``, ``b`` scalars or
    coefficient vectors at least as long as ``xr``. ``nt``: streaming stores
    (:mod:`.stream`; the caller fences)."""
    stream_map(AFFINE, o, (xr, m, a, b), nt)


@helper
def affine2(gr, xr, o, a, b, m, k, nt):
    """``o = dy * a + (x - m) * b + k`` over a contiguous run (scalars or vectors)."""
    stream_map(AFFINE2, o, (gr, xr, a, b, m, k), nt)


def _affine(x, m, a, b, out, chunk, row_block, nt):
    P, C, L = x.shape
    if ROW_MIN <= L < chunk:  # segments pattern
        cb, tasks = segment_tasks(P, C, L, row_block)
        nw = workers(tasks)
        for w in prange(nw):
            t0, t1 = span(w, nw, tasks)
            for t in range(t0, t1):
                p, c0, c1, n = segment_task(t, C, L, cb)
                segment_map(AFFINE, out[p, c0:c1].reshape(n), (x[p, c0:c1].reshape(n),), (m[c0:c1], a[c0:c1], b[c0:c1]),
                            L, nt)
            fence(nt)
        return
    if L >= chunk:
        K = max(1, (L + chunk - 1) // chunk)
        tasks = P * C * K
        nw = workers(tasks)
        for w in prange(nw):
            t0, t1 = span(w, nw, tasks)
            for t in range(t0, t1):
                p, c, lo, n = task_bounds(t, C, K, L, chunk)
                affine(x[p, c, lo:lo + n], out[p, c, lo:lo + n], m[c], a[c], b[c], nt)
            fence(nt)
        return
    W = C * L
    x2 = x.reshape(P, W)
    o2 = out.reshape(P, W)
    xf = x.reshape(P * W)
    of = out.reshape(P * W)
    cb, reps, rows, tasks = block_tasks(P, C, L, row_block)
    nw = workers(tasks)
    for w in prange(nw):
        t0, t1 = span(w, nw, tasks)
        for t in range(t0, t1):
            c0, c1, r0, r1 = block_task(t, C, L, P, cb, rows)
            j0 = c0 * L
            j1 = c1 * L
            mw = expand(m, c0, c1, L, x.dtype, reps)
            aw = expand(a, c0, c1, L, x.dtype, reps)
            bw = expand(b, c0, c1, L, x.dtype, reps)
            if reps > 1:  # whole rows: reps of them per sweep
                for r in range(r0, r1, reps):
                    e = min(r1, r + reps)
                    affine(xf[r * W:e * W], of[r * W:e * W], mw, aw, bw, nt)
            else:
                for r in range(r0, r1):
                    affine(x2[r, j0:j1], o2[r, j0:j1], mw, aw, bw, nt)
        fence(nt)


def _affine2(dy, x, a, b, m, k, out, chunk, row_block, nt):
    P, C, L = x.shape
    if ROW_MIN <= L < chunk:  # segments pattern
        cb, tasks = segment_tasks(P, C, L, row_block)
        nw = workers(tasks)
        for w in prange(nw):
            t0, t1 = span(w, nw, tasks)
            for t in range(t0, t1):
                p, c0, c1, n = segment_task(t, C, L, cb)
                segment_map(AFFINE2, out[p, c0:c1].reshape(n), (dy[p, c0:c1].reshape(n), x[p, c0:c1].reshape(n)),
                            (a[c0:c1], b[c0:c1], m[c0:c1], k[c0:c1]), L, nt)
            fence(nt)
        return
    if L >= chunk:
        K = max(1, (L + chunk - 1) // chunk)
        tasks = P * C * K
        nw = workers(tasks)
        for w in prange(nw):
            t0, t1 = span(w, nw, tasks)
            for t in range(t0, t1):
                p, c, lo, n = task_bounds(t, C, K, L, chunk)
                affine2(dy[p, c, lo:lo + n], x[p, c, lo:lo + n], out[p, c, lo:lo + n], a[c], b[c], m[c], k[c], nt)
            fence(nt)
        return
    W = C * L
    g2 = dy.reshape(P, W)
    x2 = x.reshape(P, W)
    o2 = out.reshape(P, W)
    gf = dy.reshape(P * W)
    xf = x.reshape(P * W)
    of = out.reshape(P * W)
    cb, reps, rows, tasks = block_tasks(P, C, L, row_block)
    nw = workers(tasks)
    for w in prange(nw):
        t0, t1 = span(w, nw, tasks)
        for t in range(t0, t1):
            c0, c1, r0, r1 = block_task(t, C, L, P, cb, rows)
            j0 = c0 * L
            j1 = c1 * L
            aw = expand(a, c0, c1, L, x.dtype, reps)
            bw = expand(b, c0, c1, L, x.dtype, reps)
            mw = expand(m, c0, c1, L, x.dtype, reps)
            kw = expand(k, c0, c1, L, x.dtype, reps)
            if reps > 1:  # whole rows: reps of them per sweep
                for r in range(r0, r1, reps):
                    e = min(r1, r + reps)
                    affine2(gf[r * W:e * W], xf[r * W:e * W], of[r * W:e * W], aw, bw, mw, kw, nt)
            else:
                for r in range(r0, r1):
                    affine2(g2[r, j0:j1], x2[r, j0:j1], o2[r, j0:j1], aw, bw, mw, kw, nt)
        fence(nt)


#: ``affine(x, m, a, b, out, chunk, row_block, nt)``: ``out = (x - m[c]) * a[c] + b[c]``;
#: ``m``, ``a``, ``b`` in ``x``'s dtype; ``nt``: streaming stores (:mod:`.stream`).
affine_par, affine_ser = twin(_affine)
#: ``affine2(dy, x, a, b, m, k, out, chunk, row_block, nt)``:
#: ``out = a[c] * dy + b[c] * (x - m[c]) + k[c]``, every array of one dtype.
affine2_par, affine2_ser = twin(_affine2)

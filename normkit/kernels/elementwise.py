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
  rows); a task sweeps its rows' ``cb*L`` columns one row at a time, over the
  coefficient vectors themselves where ``L == 1`` and over copies expanded
  along the columns otherwise; streamed rows too short to stream are swept
  several at a time (:func:`block_tasks`).

All write through :func:`.stream.stream_map` or :func:`.stream.segment_map`:
with ``nt`` true (large outputs, decided by the entry points) whole cache lines
are stored non-temporally, and each worker's span of tasks ends with a fence.
The runs are :func:`.views.borrow`-ed views, and the per-run bodies
(:func:`affine`, :func:`affine2`) are inlined: with Numba slices and a compiled
call per row the channels-last pass took up to 4.5x as long on rows of 64
values, 1.1-1.7x on rows of 256-2,048 (``docs/experiments/borrowed_views.py``).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, twin
from .reduce import ROW_MIN, expand, task_bounds
from .stream import NT_MIN_RUN, fence, segment_map, span, stream_map, workers
from .views import borrow

__all__ = [
    "AFFINE", "AFFINE2", "BLOCK_COLS", "ROW_BLOCK_ELEMS", "affine", "affine2", "affine2_par",
    "affine2_ser", "affine_par", "affine_ser", "block_channels", "block_coefs", "block_task", "block_tasks", "segment_task",
    "segment_tasks",
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
def block_tasks(P, C, L, row_block, nt, itemsize):
    """(channels per block, rows per sweep, rows per task, number of tasks) of the
    blocks pattern over items of ``itemsize`` bytes. Each row of a block is a sweep
    of its own, except where its values are streamed (``nt``) but a row is too
    short to stream (under :data:`.stream.NT_MIN_RUN` bytes) and the block spans
    every channel: consecutive rows are then contiguous, and a sweep covers
    several of them (coefficients tiled to match), about :data:`BLOCK_COLS`
    values, which stream. Measured on an AMD EPYC (``docs/experiments/borrowed_views.py``):
    rows one by one over the coefficients themselves were level with or faster
    than tiled sweeps (1.1-1.3x on rows of 256-512 values) everywhere but on
    streamed rows of 64 values, where the tiled sweeps were 1.2-1.8x faster."""
    cb = block_channels(C, L)
    short_streamed = nt != 0 and C * L * itemsize < NT_MIN_RUN
    reps = max(1, BLOCK_COLS // (C * L)) if cb == C and short_streamed else 1
    rows = max(1, row_block // (cb * L)) // reps * reps
    rows = max(reps, rows)
    return cb, reps, rows, ((C + cb - 1) // cb) * ((P + rows - 1) // rows)


@helper(inline=True)
def block_coefs(v, c0, c1, L, dtype, reps):
    """A blocks task's coefficient vector for channels ``c0 .. c1``: ``v``'s own entries
    where a sweep is one row of one value per channel, else :func:`.reduce.expand`."""
    if L == 1 and reps == 1:
        return borrow(v, c0, c1 - c0)
    return expand(v, c0, c1, L, dtype, reps)


#: ``y = (x - m) * a + b``: the forward, and ``dx = a * dy`` with ``m = b = 0``.
AFFINE = "0 1 - 2 * 3 +"
#: ``dx = dy * a + (x - m) * b + k``.
AFFINE2 = "0 2 * 1 4 - 3 * + 5 +"


@helper(inline=True)
def affine(xr, o, m, a, b, nt):
    """``o = (x - m) * a + b`` over a contiguous run; ``m``, ``a``, ``b`` scalars or
    coefficient vectors at least as long as ``xr``. ``nt``: streaming stores
    (:mod:`.stream`; the caller fences)."""
    stream_map(AFFINE, o, (xr, m, a, b), nt)


@helper(inline=True)
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
                at = (p * C + c0) * L
                segment_map(AFFINE, borrow(out, at, n), (borrow(x, at, n),),
                            (borrow(m, c0, c1 - c0), borrow(a, c0, c1 - c0), borrow(b, c0, c1 - c0)), L, nt)
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
                at = (p * C + c) * L + lo
                affine(borrow(x, at, n), borrow(out, at, n), m[c], a[c], b[c], nt)
            fence(nt)
        return
    W = C * L
    cb, reps, rows, tasks = block_tasks(P, C, L, row_block, nt, x.itemsize)
    nw = workers(tasks)
    for w in prange(nw):
        t0, t1 = span(w, nw, tasks)
        for t in range(t0, t1):
            c0, c1, r0, r1 = block_task(t, C, L, P, cb, rows)
            j0 = c0 * L
            nj = (c1 - c0) * L
            mw = block_coefs(m, c0, c1, L, x.dtype, reps)
            aw = block_coefs(a, c0, c1, L, x.dtype, reps)
            bw = block_coefs(b, c0, c1, L, x.dtype, reps)
            for r in range(r0, r1, reps):  # reps rows' blocks per sweep (contiguous: reps > 1 only when nj == W)
                at = r * W + j0
                n = (min(r1, r + reps) - r) * nj
                affine(borrow(x, at, n), borrow(out, at, n), mw, aw, bw, nt)
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
                at = (p * C + c0) * L
                nc = c1 - c0
                segment_map(AFFINE2, borrow(out, at, n), (borrow(dy, at, n), borrow(x, at, n)),
                            (borrow(a, c0, nc), borrow(b, c0, nc), borrow(m, c0, nc), borrow(k, c0, nc)), L, nt)
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
                at = (p * C + c) * L + lo
                affine2(borrow(dy, at, n), borrow(x, at, n), borrow(out, at, n), a[c], b[c], m[c], k[c], nt)
            fence(nt)
        return
    W = C * L
    cb, reps, rows, tasks = block_tasks(P, C, L, row_block, nt, x.itemsize)
    nw = workers(tasks)
    for w in prange(nw):
        t0, t1 = span(w, nw, tasks)
        for t in range(t0, t1):
            c0, c1, r0, r1 = block_task(t, C, L, P, cb, rows)
            j0 = c0 * L
            nj = (c1 - c0) * L
            aw = block_coefs(a, c0, c1, L, x.dtype, reps)
            bw = block_coefs(b, c0, c1, L, x.dtype, reps)
            mw = block_coefs(m, c0, c1, L, x.dtype, reps)
            kw = block_coefs(k, c0, c1, L, x.dtype, reps)
            for r in range(r0, r1, reps):
                at = r * W + j0
                n = (min(r1, r + reps) - r) * nj
                affine2(borrow(dy, at, n), borrow(x, at, n), borrow(out, at, n), aw, bw, mw, kw, nt)
        fence(nt)


#: ``affine(x, m, a, b, out, chunk, row_block, nt)``: ``out = (x - m[c]) * a[c] + b[c]``;
#: ``m``, ``a``, ``b`` in ``x``'s dtype; ``nt``: streaming stores (:mod:`.stream`).
affine_par, affine_ser = twin(_affine)
#: ``affine2(dy, x, a, b, m, k, out, chunk, row_block, nt)``:
#: ``out = a[c] * dy + b[c] * (x - m[c]) + k[c]``, every array of one dtype.
affine2_par, affine2_ser = twin(_affine2)

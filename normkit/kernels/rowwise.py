"""Row-wise normalization: statistics per row, affine along the row (LayerNorm, RMSNorm).

The input is a C-contiguous ``(R, D)`` array -- the core's ``(1, R, D)`` view in
which every row is a "channel" -- and the affine parameters are ``(D,)``
vectors running *along* the row, which the per-channel element passes of
:mod:`.elementwise` cannot express. For row ``r`` with ``D`` values:

* **centred** (LayerNorm, ``center=True``): the core's shifted one-pass float64
  sums with the row's first value ``K`` as the shift (:mod:`.reduce`):
  ``mean = K + s1/D``, ``var = s2/D - (s1/D)^2`` (biased), then
  ``y = w * (x - mean) * rstd + b`` with ``rstd = 1/sqrt(var + eps)``;
* **uncentred** (RMSNorm, ``center=False``): ``mean = 0``, ``var`` is the mean
  square ``sum(x^2)/D``, ``y = w * x * rstd + b``.

The apply is computed in the input's dtype as ``((x - m) * a + c) * w[j] + b[j]``
with ``m`` the mean rounded to that dtype, ``a = rstd`` and ``c = -(mean - m) * rstd``
carrying the rounding (as :mod:`.elementwise` does): offsets cancel exactly in
``x - m``.

Backward, with ``g = w * dy``, ``s1 = sum_row(g)``, ``s2 = sum_row(g * (x - mean))``::

    dx = rstd * g - rstd^3 * s2/D * (x - mean) - [center] rstd * s1/D
    dweight[j] = sum_rows(dy * (x - mean) * rstd),   dbias[j] = sum_rows(dy)

Two memory patterns, chosen by the row length:

* **fused rows** (``D <= ROW_FUSE_MAX``): a task owns whole rows; each row is
  read once from memory (statistics, then the element pass while it is in
  cache). The backward's column sums go to one float64 ``(D,)`` accumulator
  per row task; the number of row tasks depends on the size only, so results do
  not depend on the thread count.
* **chunked rows** (longer rows, few of them): the statistics come from the
  core's :func:`normkit.kernels.norm.moments` over ``(1, R, D)`` (split in
  ``(row, chunk)`` tasks); the apply runs over ``(row, chunk)`` tasks; the
  backward's row sums and column sums run over column chunks.

Everything accumulates in float64; inputs are trusted (validated by the front ends).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from numba import prange

from . import norm
from ._jit import helper, twin
from .reduce import apart
from .stream import fence, span, stream_map, streams, workers
from .views import borrow, row_of

__all__ = ["ROW_CHUNK", "ROW_FUSE_MAX", "TASKS_MAX", "TASK_ELEMS", "backward_tasks", "row_backward", "row_forward"]

#: Longest row processed whole by one task (elements); longer rows are chunked.
ROW_FUSE_MAX = 1 << 15
#: Elements per task along a chunked row.
ROW_CHUNK = 1 << 13
#: Elements a backward row task should at least hold.
TASK_ELEMS = 1 << 15
#: Upper bound on backward row tasks (each owns a (D,) float64 accumulator pair).
TASKS_MAX = 16


# --------------------------------------------------------------------------- per-row helpers


@helper
def _row_stats(xr, center):
    """(mean, var) of one row in float64; var is the mean square when not centred."""
    n = xr.shape[0]
    k = 0.0
    if center:
        k = np.float64(xr[0])
        if not np.isfinite(k):  # an infinite shift would turn sum(x - K) into NaN
            k = 0.0
    s1 = 0.0
    s2 = 0.0
    for i in range(n):
        d = xr[i] - k
        s1 += d
        s2 += d * d
    if not center:
        return 0.0, s2 / n
    d = s1 / n
    v = s2 / n - d * d
    return k + d, (0.0 if v < 0.0 else v)  # rounding can dip below 0; NaN stays NaN


@helper(inline=True)
def _row_apply(xr, o, m, a, c, w, b, nt):
    """o = ((x - m) * a + c) * w + b, every operand in x's dtype (``nt``: streaming stores)."""
    stream_map("0 1 - 2 * 3 + 4 * 5 +", o, (xr, m, a, c, w, b), nt)


@helper(inline=True)
def _row_sums(dyr, xr, w, m, rs, aw, ab):
    """(sum(w*dy), sum(w*dy*(x-m))) of a row in float64; adds dy*(x-m)*rs and dy to aw, ab."""
    s1 = 0.0
    s2 = 0.0
    for i in range(xr.shape[0]):
        g = np.float64(dyr[i])
        xc = xr[i] - m
        ab[i] += g
        aw[i] += g * xc * rs
        gw = g * w[i]
        s1 += gw
        s2 += gw * xc
    return s1, s2


@helper(inline=True)
def _row_dx(dyr, xr, o, w, a, bc, m, k, nt):
    """o = (dy * w) * a + (x - m) * bc + k, every operand in x's dtype (``nt``: streaming stores)."""
    stream_map("0 1 * 2 * 3 4 - 5 * + 6 +", o, (dyr, w, a, xr, m, bc, k), nt)


@helper
def _set_coefficients(coef, r, mean, rstd):
    """Row r's apply coefficients in coef's dtype: m (mean rounded), a = rstd, c (rounding of m)."""
    coef[0, r] = mean
    coef[1, r] = rstd
    coef[2, r] = -(mean - np.float64(coef[0, r])) * rstd


@helper
def _set_grad_coefficients(coef, r, mean, rstd, s1, s2, n, center):
    """Row r's input-gradient coefficients: a = rstd, bc = -rstd^3 s2/n, m, k."""
    bc = -rstd * rstd * rstd * s2 / n
    coef[0, r] = rstd
    coef[1, r] = bc
    coef[2, r] = mean
    k = bc * (np.float64(coef[2, r]) - mean)  # bc*(x - mean) = bc*(x - m) + bc*(m - mean)
    if center:
        k -= rstd * s1 / n
    coef[3, r] = k


# --------------------------------------------------------------------------- kernels


def _forward_fused(x, w, b, eps, center, out, mean, var, rstd, coef, nt):
    R = x.shape[0]
    nw = workers(R)
    for wk in prange(nw):
        r0, r1 = span(wk, nw, R)
        for r in range(r0, r1):
            xr = row_of(x, r)
            mu, v = _row_stats(xr, center)
            rs = 1.0 / np.sqrt(v + eps)
            mean[r] = mu
            var[r] = v
            rstd[r] = rs
            _set_coefficients(coef, r, mu, rs)
            _row_apply(xr, row_of(out, r), coef[0, r], coef[1, r], coef[2, r], w, b, nt)
        fence(nt)


@helper
def _chunk(t, K, D, chunk):
    """Task ``t`` of rows cut in ``K`` chunks -> (row, first column, end column)."""
    lo = (t % K) * chunk
    return t // K, lo, min(D, lo + chunk)


def _apply_chunked(x, w, b, eps, mean, var, rstd, coef, out, chunk, nt):
    R, D = x.shape
    for r in range(R):
        rs = 1.0 / np.sqrt(var[r] + eps)
        rstd[r] = rs
        _set_coefficients(coef, r, mean[r], rs)
    K = (D + chunk - 1) // chunk
    nw = workers(R * K)
    for wk in prange(nw):
        t0, t1 = span(wk, nw, R * K)
        for t in range(t0, t1):
            r, lo, hi = _chunk(t, K, D, chunk)
            at = r * D + lo
            n = hi - lo
            _row_apply(borrow(x, at, n), borrow(out, at, n), coef[0, r], coef[1, r], coef[2, r], borrow(w, lo, n),
                       borrow(b, lo, n), nt)
        fence(nt)


def _backward_fused(dy, x, w, mean, rstd, center, dx, need_dx, tasks, coef, dw, db, nt):
    R, D = x.shape
    pw = apart(tasks, D)
    pb = apart(tasks, D)
    for t in prange(tasks):  # few tasks (<= TASKS_MAX), each many rows: a fence per task
        aw = pw[t, :D]
        ab = pb[t, :D]
        aw[:] = 0.0
        ab[:] = 0.0
        for r in range(t * R // tasks, (t + 1) * R // tasks):
            dyr = row_of(dy, r)
            xr = row_of(x, r)
            s1, s2 = _row_sums(dyr, xr, w, mean[r], rstd[r], aw, ab)
            if need_dx:
                _set_grad_coefficients(coef, r, mean[r], rstd[r], s1, s2, D, center)
                _row_dx(dyr, xr, row_of(dx, r), w, coef[0, r], coef[1, r], coef[2, r], coef[3, r], nt)
        fence(nt)
    for j in range(D):
        dw[j] = 0.0
        db[j] = 0.0
    for t in range(tasks):
        for j in range(D):
            dw[j] += pw[t, j]
            db[j] += pb[t, j]


def _backward_chunked(dy, x, w, mean, rstd, center, dx, need_dx, chunk, coef, dw, db, nt):
    R, D = x.shape
    K = (D + chunk - 1) // chunk
    p1 = np.empty((R, K))
    p2 = np.empty((R, K))
    for j in range(D):
        dw[j] = 0.0
        db[j] = 0.0
    for k in prange(K):  # a task owns a column chunk: its dw/db entries and the rows' partial sums
        lo = k * chunk
        hi = min(D, lo + chunk)
        n = hi - lo
        wk, dwk, dbk = borrow(w, lo, n), borrow(dw, lo, n), borrow(db, lo, n)
        for r in range(R):
            s1, s2 = _row_sums(borrow(dy, r * D + lo, n), borrow(x, r * D + lo, n), wk, mean[r], rstd[r], dwk, dbk)
            p1[r, k] = s1
            p2[r, k] = s2
    if not need_dx:
        return
    for r in range(R):
        _set_grad_coefficients(coef, r, mean[r], rstd[r], p1[r].sum(), p2[r].sum(), D, center)
    nw = workers(R * K)
    for wk in prange(nw):
        t0, t1 = span(wk, nw, R * K)
        for t in range(t0, t1):
            r, lo, hi = _chunk(t, K, D, chunk)
            at = r * D + lo
            n = hi - lo
            _row_dx(borrow(dy, at, n), borrow(x, at, n), borrow(dx, at, n), borrow(w, lo, n), coef[0, r], coef[1, r],
                    coef[2, r], coef[3, r], nt)
        fence(nt)


_forward_fused_par, _forward_fused_ser = twin(_forward_fused)
_apply_chunked_par, _apply_chunked_ser = twin(_apply_chunked)
_backward_fused_par, _backward_fused_ser = twin(_backward_fused)
_backward_chunked_par, _backward_chunked_ser = twin(_backward_chunked)


# --------------------------------------------------------------------------- entry points


def _vector(v: Optional[np.ndarray], D: int, dtype: np.dtype, fill: float) -> np.ndarray:
    if v is None:
        return np.full(D, fill, dtype=dtype)
    return np.ascontiguousarray(np.reshape(v, D), dtype=dtype)


def backward_tasks(R: int, D: int) -> int:
    """Row tasks of the fused backward: a function of the size only (not of the thread count)."""
    return max(1, min(TASKS_MAX, R, (R * D) // TASK_ELEMS))


def row_forward(
    x: np.ndarray,
    weight: Optional[np.ndarray],
    bias: Optional[np.ndarray],
    eps: float,
    out: np.ndarray,
    center: bool = True,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalize every row of the C-contiguous ``(R, D)`` array ``x`` into ``out``.

    ``y = weight * (x - mean) * rstd + bias`` (``center=False``: ``mean = 0`` and
    ``var`` is the mean square -- RMSNorm). ``weight``/``bias`` are ``(D,)``
    float vectors or None (1 and 0). Returns float64 ``(R,)`` ``(mean, var, rstd)``
    with ``var`` biased, ``rstd = 1/sqrt(var + eps)``. Needs ``D > 0``.
    """
    R, D = x.shape
    dtype = x.dtype
    w = _vector(weight, D, dtype, 1.0)
    b = _vector(bias, D, dtype, 0.0)
    eps = float(eps)
    center = bool(center)
    rstd = np.empty(R)
    coef = np.empty((3, R), dtype)
    par = x.size >= norm.PARALLEL_MIN
    if D <= ROW_FUSE_MAX:
        mean = np.empty(R)
        var = np.empty(R)
        fn = _forward_fused_par if par else _forward_fused_ser
        fn(x, w, b, eps, center, out, mean, var, rstd, coef, streams(out.nbytes, out=out))
        return mean, var, rstd
    mean, var = norm.moments(x.reshape(1, R, D))
    if not center:  # mean square = var + mean^2 (a sum of two non-negative terms: no cancellation)
        var = var + mean * mean
        mean = np.zeros(R)
    fn = _apply_chunked_par if par else _apply_chunked_ser
    fn(x, w, b, eps, mean, var, rstd, coef, out, ROW_CHUNK, streams(out.nbytes, out=out))
    return mean, var, rstd


def row_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: Optional[np.ndarray],
    dx: Optional[np.ndarray],
    center: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """Closed-form gradients of :func:`row_forward`: fills ``dx`` (if given) and returns
    float64 ``(dweight, dbias)`` of shape ``(D,)``.

    ``dy``, ``x``, ``dx`` are C-contiguous ``(R, D)`` of one dtype; ``mean``/``rstd``
    the float64 ``(R,)`` statistics of the forward (``mean = 0`` for ``center=False``).
    """
    R, D = x.shape
    dtype = x.dtype
    w = _vector(weight, D, dtype, 1.0)
    mean = np.ascontiguousarray(mean, dtype=np.float64)
    rstd = np.ascontiguousarray(rstd, dtype=np.float64)
    need_dx = dx is not None
    if not need_dx:
        dx = np.empty((0, 0), dtype)
    dw = np.empty(D)
    db = np.empty(D)
    coef = np.empty((4, R), dtype)
    par = x.size >= norm.PARALLEL_MIN
    center = bool(center)
    nt = streams(dx.nbytes, gradient=True, out=dx)
    if D <= ROW_FUSE_MAX:
        fn = _backward_fused_par if par else _backward_fused_ser
        fn(dy, x, w, mean, rstd, center, dx, need_dx, backward_tasks(R, D), coef, dw, db, nt)
    else:
        fn = _backward_chunked_par if par else _backward_chunked_ser
        fn(dy, x, w, mean, rstd, center, dx, need_dx, ROW_CHUNK, coef, dw, db, nt)
    return dw, db

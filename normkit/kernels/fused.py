"""Per-channel fused passes for channels that fit in cache (long contiguous runs).

One task per channel: its statistics (or backward sums) are reduced over the
channel's runs, its coefficients computed, and the element pass applied to the
same runs while they are still in the core's cache. Memory traffic is then one
read of the input (plus ``dy`` backward) and one write of the output -- below
the two-pass floor -- instead of a second read from main memory.

Used when the rows pattern applies (``L >= ROW_MIN``), a channel's data fits
the per-core cache budget, and there are enough channels to keep every thread
busy; otherwise :mod:`.norm` runs the two-pass kernels. The per-channel
training forward is :mod:`.act`'s kernel with no activation and no residual;
this module holds the backward forms and GroupNorm's per-group passes.

Short runs (small maps such as 7x7, where a channel is ``P`` scattered runs of
a few dozen elements, each a loop of its own with its remainder) have their own
forward and backward: one task per block of whole channels walks the block's
rows -- ``cb*L`` contiguous values each -- as runs made of ``cb`` segments
(:func:`.stream.segment_sums`, :func:`.stream.segment_map`): sums per channel,
then the coefficients, then the element pass over the same rows while the block
is still in the core's cache. Measured on 32x2048x7x7: the backward 4x faster
than the per-channel form (``docs/experiments/segment_forms.py``) and 1.4x faster
than the column-sum blocks it replaced (``docs/experiments/segments.py``), the
forward up to 15% faster; :mod:`.norm` bounds where each is used. GroupNorm's
per-group passes walk a group's channels the same way.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import helper, twin
from .coefs import backward_channels, backward_coefs, finish_channels, shared_forward_coefs
from .elementwise import AFFINE, AFFINE2, affine, affine2
from .reduce import apart, channel_shift, finish_moments, run_moments, run_sums
from .stream import fence, segment_map, segment_sums, span, workers
from .views import borrow, run_of

__all__ = [
    "block_backward_par", "block_backward_ser", "block_forward_par", "block_forward_ser", "channel_backward_par",
    "channel_backward_ser",
    "group_backward_par", "group_backward_ser", "group_forward_par", "group_forward_ser",
]


@helper
def _block_bounds(t, cb, C, L):
    """Block ``t`` of ``cb`` channels: its channels ``[c0, c1)`` and their columns
    ``[j0, j1)`` in a row of the ``(P, C*L)`` matrix."""
    c0 = t * cb
    c1 = min(C, c0 + cb)
    return c0, c1, c0 * L, c1 * L


def _block_forward(x, w, b, eps, out, cb, nt):
    """Training forward for short runs, ``cb`` whole channels per task: a block's rows
    (``cb*L`` contiguous values each) are summed per channel as segments of one run
    (:func:`.stream.segment_sums`, shifted by each channel's first value), then the
    coefficients computed and the rows written, while the block is in the core's cache
    (:func:`.stream.segment_map`). The short-run counterpart of the per-channel
    forward: no loop per run of ``L`` values, and the rows stream as long runs."""
    P, C, L = x.shape
    n = P * L
    x2 = x.reshape(P, C * L)
    o2 = out.reshape(P, C * L)
    mean = np.empty(C)
    var = np.empty(C)
    rstd = np.empty(C)
    shift = np.empty(C)
    coefs = np.empty((3, C), x.dtype)  # per channel (m, a, s)
    tasks = (C + cb - 1) // cb
    nw = workers(tasks)
    sums1 = apart(nw, cb)  # per worker (a store per row)
    sums2 = apart(nw, cb)
    for wk in prange(nw):
        t0, t1 = span(wk, nw, tasks)
        for t in range(t0, t1):
            c0, c1, j0, j1 = _block_bounds(t, cb, C, L)
            for c in range(c0, c1):
                shift[c] = channel_shift(x, c)
            s1 = sums1[wk, :c1 - c0]
            s2 = sums2[wk, :c1 - c0]
            s1[:] = 0.0
            s2[:] = 0.0
            for p in range(P):
                segment_sums(x2[p, j0:j1], None, shift[c0:c1], None, L, s1, s2)
            finish_channels(s1, s2, shift, n, eps, w, b, c0, mean, var, rstd, coefs)
            for p in range(P):
                segment_map(AFFINE, o2[p, j0:j1], (x2[p, j0:j1],), (coefs[0, c0:c1], coefs[1, c0:c1], coefs[2, c0:c1]),
                            L, nt)
        fence(nt)
    return mean, var, rstd


#: ``block_forward(x, w, b, eps, out, cb, nt) -> (mean, var, rstd)``: the short-run training
#: forward, ``cb`` channels per task.
block_forward_par, block_forward_ser = twin(_block_forward)


def _channel_backward(dy, x, mean, rstd, w, batch_stats, dx, need_dx, nt):
    P, C, L = x.shape
    n = P * L
    dw = np.empty(C)
    db = np.empty(C)
    coefs = np.empty((4, C), x.dtype)  # per channel (a, q, m, k)
    nw = workers(C)
    for wk in prange(nw):
        c0, c1 = span(wk, nw, C)
        for c in range(c0, c1):
            s1 = 0.0
            s2 = 0.0
            mc = mean[c]
            for p in range(P):
                a1, a2 = run_sums(run_of(dy, p, c), run_of(x, p, c), 0.0, mc)
                s1 += a1
                s2 += a2
            dw[c] = s2 * rstd[c]
            db[c] = s1
            if need_dx:
                backward_coefs(mc, rstd[c], w, c, s1, s2, n, batch_stats, coefs)
                a, q, m, k = coefs[0, c], coefs[1, c], coefs[2, c], coefs[3, c]
                if batch_stats:
                    for p in range(P):
                        affine2(run_of(dy, p, c), run_of(x, p, c), run_of(dx, p, c), a, q, m, k, nt)
                else:  # dx = a * dy (q = k = 0)
                    for p in range(P):
                        affine(run_of(dy, p, c), run_of(dx, p, c), q, a, k, nt)
        fence(nt)
    return dw, db


def _block_backward(dy, x, mean, rstd, w, batch_stats, dx, need_dx, cb, nt):
    """The short-run backward, as :func:`_block_forward`: ``cb`` whole channels per task,
    each row's channels summed (``s1 = sum(dy)``, ``s2 = sum(dy * (x - mean))``) and
    ``dx`` written as segments of one run, while the block is in the core's cache."""
    P, C, L = x.shape
    n = P * L
    g2 = dy.reshape(P, C * L)
    x2 = x.reshape(P, C * L)
    o2 = dx.reshape(P, C * L) if need_dx else g2[:0]
    s1 = np.empty(C)
    s2 = np.empty(C)
    coefs = np.empty((4, C), x.dtype)  # per channel (a, q, m, k)
    tasks = (C + cb - 1) // cb
    nw = workers(tasks)
    sums1 = apart(nw, cb)  # per worker (a store per row)
    sums2 = apart(nw, cb)
    for wk in prange(nw):
        t0, t1 = span(wk, nw, tasks)
        for t in range(t0, t1):
            c0, c1, j0, j1 = _block_bounds(t, cb, C, L)
            a1 = sums1[wk, :c1 - c0]
            a2 = sums2[wk, :c1 - c0]
            a1[:] = 0.0
            a2[:] = 0.0
            for p in range(P):
                segment_sums(g2[p, j0:j1], x2[p, j0:j1], 0.0, mean[c0:c1], L, a1, a2)
            s1[c0:c1] = a1
            s2[c0:c1] = a2
            if not need_dx:
                continue
            backward_channels(mean, rstd, w, s1, s2, n, batch_stats, c0, c1, coefs)
            a, q, m, k = coefs[0, c0:c1], coefs[1, c0:c1], coefs[2, c0:c1], coefs[3, c0:c1]
            if batch_stats:
                for p in range(P):
                    segment_map(AFFINE2, o2[p, j0:j1], (g2[p, j0:j1], x2[p, j0:j1]), (a, q, m, k), L, nt)
            else:  # dx = a * dy
                for p in range(P):
                    segment_map("0 1 *", o2[p, j0:j1], (g2[p, j0:j1],), (a,), L, nt)
        fence(nt)
    return s2 * rstd, s1


#: ``block_backward(dy, x, mean, rstd, w, batch_stats, dx, need_dx, cb, nt) -> (dweight, dbias)``:
#: the short-run form of ``channel_backward``, ``cb`` channels per task.
block_backward_par, block_backward_ser = twin(_block_backward)


#: ``channel_backward(dy, x, mean, rstd, w, batch_stats, dx, need_dx, nt) -> (dweight, dbias)``.
channel_backward_par, channel_backward_ser = twin(_channel_backward)


def _group_forward(x, G, w, b, eps, out, nt):
    """GroupNorm on contiguous ``(N, C, L)``: one task per (sample, group) -- the
    group's ``Cg*L`` contiguous values are reduced, then each of its channels is
    applied with its own affine while the group is in cache."""
    N, C, L = x.shape
    Cg = C // G
    n_vals = Cg * L
    mean = np.empty(N * G)
    var = np.empty(N * G)
    rstd = np.empty(N * G)
    scratch = np.empty((N * G, 3), x.dtype)  # per-task coefficients (no allocation inside the loop)
    nw = workers(N * G)
    coefs = np.empty((nw, 2, Cg), x.dtype)  # per worker: a group's per-channel (a, s)
    for wk in prange(nw):
        t0, t1 = span(wk, nw, N * G)
        for t in range(t0, t1):
            n = t // G
            g = t % G
            c0 = g * Cg
            k = np.float64(x[n, c0, 0])
            if not np.isfinite(k):
                k = 0.0
            # the group's Cg*L values are contiguous: one run, not Cg short ones
            at = (n * C + c0) * L
            s1, s2 = run_moments(borrow(x, at, n_vals), k)
            mu, v = finish_moments(s1, s2, k, n_vals)
            r = 1.0 / np.sqrt(v + eps)
            mean[t] = mu
            var[t] = v
            rstd[t] = r
            co = scratch[t]
            a_c = coefs[wk, 0]
            s_c = coefs[wk, 1]
            shared_forward_coefs(mu, r, w, b, c0, a_c, s_c, co)
            # the group's channels as segments of one run (m is the group's)
            segment_map(AFFINE, borrow(out, at, n_vals), (borrow(x, at, n_vals), co[0]), (a_c, s_c), L, nt)
        fence(nt)
    return mean, var, rstd


#: ``dx = dy * a + (x - m) * q + k`` (:data:`.elementwise.AFFINE2`'s operations) with
#: operands ``(dy, x, q, m, k)`` and the per-channel ``a`` as the one segment vector.
_GROUP_AFFINE2 = "0 5 * 1 3 - 2 * + 4 +"


def _group_backward(dy, x, G, mean, rstd, w, dx, s1, s2, nt):
    """GroupNorm backward on contiguous ``(N, C, L)``: per (sample, group) the
    per-channel ``s1 = sum(dy)``, ``s2 = sum(dy * (x - mu))``, the group's weighted
    sums, then ``dx = rstd*w_c*dy - rstd^3*S2/M * (x - mu) - rstd*S1/M`` channel by
    channel. Writes ``s1`` and ``rstd * s2`` (shape ``(N, C)``) for the parameter
    gradients: summed over samples they are ``dbias`` and ``dweight``."""
    N, C, L = x.shape
    Cg = C // G
    M = Cg * L
    scratch = np.empty((N * G, 4), x.dtype)  # per-task (a, q, m, k) rounded to x's dtype
    nw = workers(N * G)
    coefs = np.empty((nw, Cg), x.dtype)  # per worker: a group's per-channel a
    for wk in prange(nw):
        t0, t1 = span(wk, nw, N * G)
        for t in range(t0, t1):
            n = t // G
            g = t % G
            c0 = g * Cg
            mu = mean[t]
            r = rstd[t]
            at = (n * C + c0) * L
            gy = borrow(dy, at, M)
            gx = borrow(x, at, M)
            sum1 = borrow(s1, n * C + c0, Cg)
            sum2 = borrow(s2, n * C + c0, Cg)
            sum1[:] = 0.0  # segment_sums adds
            sum2[:] = 0.0
            segment_sums(gy, gx, 0.0, mu, L, sum1, sum2)  # per channel
            S1 = 0.0
            S2 = 0.0
            for j in range(Cg):
                wc = 1.0 if w is None else np.float64(w[np.uint64(c0 + j)])  # unsigned: see .coefs
                S1 += wc * sum1[j]
                S2 += wc * sum2[j]
                sum2[j] *= r
            q = -r * r * r * S2 / M
            co = scratch[t]
            co[1] = q
            co[2] = mu
            co[3] = -r * S1 / M + q * (np.float64(co[2]) - mu)
            a_c = coefs[wk]
            for j in range(Cg):  # rounded to x's dtype on assignment, as co[0] elsewhere
                a_c[j] = r if w is None else r * w[np.uint64(c0 + j)]
            segment_map(_GROUP_AFFINE2, borrow(dx, at, M), (gy, gx, co[1], co[2], co[3]), (a_c,), L, nt)
        fence(nt)


#: ``group_forward(x, G, w, b, eps, out, nt) -> (mean, var, rstd)`` of shape ``(N*G,)``.
group_forward_par, group_forward_ser = twin(_group_forward)
#: ``group_backward(dy, x, G, mean, rstd, w, dx, s1, s2, nt)``: fills ``dx`` and writes the ``(N, C)``
#: ``s1`` and ``rstd * s2``.
group_backward_par, group_backward_ser = twin(_group_backward)

"""Forms of the columns-pattern statistics (reduce.py, channels-last / BatchNorm1d),
self-contained copies side by side in one process: one row per sweep (float64
accumulators in L1, the form before 666fce8), two and four rows per sweep
(float64), and float32 partial sums over 32 rows folded into float64. Median ms of the
moments of (P, C, 1) float32 arrays, and the largest relative error of sum((x-K)^2)."""
import time

import numpy as np
from numba import njit, prange

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(fastmath=FM)
def rows1(u, uw, r0, r1, j0, nj, a1, a2):
    for r in range(r0, r1):
        ur = u[r, j0:j0 + nj]
        for j in range(nj):
            d = ur[j] - uw[j]
            a1[j] += d
            a2[j] += d * d


@njit(fastmath=FM)
def rows2(u, uw, r0, r1, j0, nj, a1, a2):
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
    rows1(u, uw, r, r1, j0, nj, a1, a2)


@njit(fastmath=FM)
def rows4(u, uw, r0, r1, j0, nj, a1, a2):
    r = r0
    while r + 4 <= r1:
        u0 = u[r, j0:j0 + nj]
        u1 = u[r + 1, j0:j0 + nj]
        u2 = u[r + 2, j0:j0 + nj]
        u3 = u[r + 3, j0:j0 + nj]
        for j in range(nj):
            k = uw[j]
            d0 = u0[j] - k
            d1 = u1[j] - k
            d2 = u2[j] - k
            d3 = u3[j] - k
            a1[j] += (d0 + d1) + (d2 + d3)
            a2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        r += 4
    rows1(u, uw, r, r1, j0, nj, a1, a2)


@njit(fastmath=FM)
def partial32(u, uw, r0, r1, j0, nj, a1, a2):
    k = np.empty(nj, u.dtype)
    for j in range(nj):
        k[j] = uw[j]
    b1 = np.zeros(nj, u.dtype)
    b2 = np.zeros(nj, u.dtype)
    for rb in range(r0, r1, 32):
        for r in range(rb, min(r1, rb + 32)):
            ur = u[r, j0:j0 + nj]
            for j in range(nj):
                d = ur[j] - k[j]
                b1[j] += d
                b2[j] += d * d
        for j in range(nj):
            a1[j] += b1[j]
            a2[j] += b2[j]
            b1[j] = 0.0
            b2[j] = 0.0


def make(col):
    @njit(parallel=True, fastmath=FM)
    def moments(u, us, s1, s2):  # reduce._sums' columns pattern, defaults 1024 / 65536 / 16
        P, C, L = u.shape
        W = C * L
        u2 = u.reshape(P, W)
        row_tasks = min(16, max(1, P), max(1, (P * W) // 65536))
        nblocks = max(1, (W + 1023) // 1024)
        p1 = np.zeros((row_tasks, W))
        p2 = np.zeros((row_tasks, W))
        uw = np.empty(W)
        for j in range(W):
            uw[j] = us[j // L]
        for t in prange(row_tasks * nblocks):
            tr = t // nblocks
            j0 = (t % nblocks) * 1024
            nj = min(1024, W - j0)
            r0 = tr * P // row_tasks
            r1 = (tr + 1) * P // row_tasks
            col(u2, uw[j0:j0 + nj], r0, r1, j0, nj, p1[tr, j0:j0 + nj], p2[tr, j0:j0 + nj])
        s1[:] = 0.0
        s2[:] = 0.0
        for t in range(row_tasks):
            for j in range(W):
                s1[j // L] += p1[t, j]
                s2[j // L] += p2[t, j]
    return moments


FORMS = {"one row": make(rows1), "two rows": make(rows2), "four rows": make(rows4), "float32 partials": make(partial32)}


def tm(f, n=40):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e3


for P, C in [(1024, 256), (1568, 2048), (6272, 1024), (25088, 256)]:
    x = (np.random.default_rng(0).standard_normal((P, C, 1)) * 3 + 100).astype(np.float32)
    shift = x[0, :, 0].astype(np.float64)
    ref = ((x[:, :, 0].astype(np.float64) - shift) ** 2).sum(0)
    res = {k: [] for k in FORMS}
    err = {}
    for _ in range(3):
        for k, f in FORMS.items():
            s1, s2 = np.empty(C), np.empty(C)
            res[k].append(tm(lambda: f(x, shift, s1, s2)))
            err[k] = np.abs(s2 / ref - 1).max()
    print("%6dx%-5d " % (P, C) + "  ".join("%s %.3f ms (err %.0e)" % (k, np.median(v), err[k]) for k, v in res.items()),
          flush=True)

"""The columns pattern's forward statistics with half the instructions per value: float32
moments of chunks of 8 rows (chunk mean, then the squared deviations from it, in float32),
merged into the float64 shifted sums once per chunk, against the float64 two-rows-per-sweep
form of reduce.sums_par. "mixed" keeps the float32 and float64 work in one loop (LLVM then
vectorises both 4 lanes wide); "split" writes the chunk moments to a scratch row and merges
them in a second loop (8 float32 lanes for the chunk). Beside them, a plain read: torch.sum
of the same array. Median us of three alternating rounds, and the largest relative error of
M2 against float64 NumPy with the first row an outlier (a poor shift).
Usage: col_chunks.py [FIRST_SHAPE_INDEX]"""
import sys
import time

import numpy as np
import torch
from numba import njit, prange

from normkit.kernels import reduce

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
torch.set_num_threads(2)


@njit(fastmath=FM)
def _tail(u, kw, r, r1, j0, nj, a1, a2):
    while r < r1:
        xr = u[r, j0:j0 + nj]
        for j in range(nj):
            d = xr[j] - kw[j]
            a1[j] += d
            a2[j] += d * d
        r += 1


@njit(fastmath=FM)
def mixed(u, kw, r0, r1, j0, nj, a1, a2):
    r = r0
    h = np.float32(0.125)
    while r + 8 <= r1:
        x0 = u[r, j0:j0 + nj]; x1 = u[r + 1, j0:j0 + nj]; x2 = u[r + 2, j0:j0 + nj]; x3 = u[r + 3, j0:j0 + nj]
        x4 = u[r + 4, j0:j0 + nj]; x5 = u[r + 5, j0:j0 + nj]; x6 = u[r + 6, j0:j0 + nj]; x7 = u[r + 7, j0:j0 + nj]
        for j in range(nj):
            m = (((x0[j] + x1[j]) + (x2[j] + x3[j])) + ((x4[j] + x5[j]) + (x6[j] + x7[j]))) * h
            d0 = x0[j] - m; d1 = x1[j] - m; d2 = x2[j] - m; d3 = x3[j] - m
            d4 = x4[j] - m; d5 = x5[j] - m; d6 = x6[j] - m; d7 = x7[j] - m
            e = ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
            q = ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7))
            t = (np.float64(m) - kw[j]) + np.float64(e) * 0.125  # chunk mean - shift, float64
            a1[j] += 8.0 * t
            a2[j] += np.float64(q) + 8.0 * t * t
        r += 8
    _tail(u, kw, r, r1, j0, nj, a1, a2)


@njit(fastmath=FM)
def split(u, kw, r0, r1, j0, nj, a1, a2):
    r = r0
    h = np.float32(0.125)
    mm = np.empty(nj, np.float32)
    ee = np.empty(nj, np.float32)
    qq = np.empty(nj, np.float32)
    while r + 8 <= r1:
        x0 = u[r, j0:j0 + nj]; x1 = u[r + 1, j0:j0 + nj]; x2 = u[r + 2, j0:j0 + nj]; x3 = u[r + 3, j0:j0 + nj]
        x4 = u[r + 4, j0:j0 + nj]; x5 = u[r + 5, j0:j0 + nj]; x6 = u[r + 6, j0:j0 + nj]; x7 = u[r + 7, j0:j0 + nj]
        for j in range(nj):
            m = (((x0[j] + x1[j]) + (x2[j] + x3[j])) + ((x4[j] + x5[j]) + (x6[j] + x7[j]))) * h
            d0 = x0[j] - m; d1 = x1[j] - m; d2 = x2[j] - m; d3 = x3[j] - m
            d4 = x4[j] - m; d5 = x5[j] - m; d6 = x6[j] - m; d7 = x7[j] - m
            ee[j] = ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
            qq[j] = ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7))
            mm[j] = m
        for j in range(nj):
            t = (np.float64(mm[j]) - kw[j]) + np.float64(ee[j]) * 0.125
            a1[j] += 8.0 * t
            a2[j] += np.float64(qq[j]) + 8.0 * t * t
        r += 8
    _tail(u, kw, r, r1, j0, nj, a1, a2)


def make(col):
    @njit(parallel=True, fastmath=FM)
    def moments(u, us, s1, s2):  # reduce._sums' task split for L == 1
        P, C, L = u.shape
        u2 = u.reshape(P, C)
        row_tasks = min(16, max(1, P), max(1, (P * C) // 65536))
        nblocks = max(1, (C + 1023) // 1024)
        tasks = row_tasks * nblocks
        p1 = np.empty((tasks, min(1024, C) + 512))
        p2 = np.empty((tasks, min(1024, C) + 512))
        for t in prange(tasks):
            tr = t // nblocks
            j0 = (t % nblocks) * 1024
            nj = min(1024, C - j0)
            a1 = p1[t, :nj]
            a2 = p2[t, :nj]
            a1[:] = 0.0
            a2[:] = 0.0
            col(u2, us[j0:j0 + nj], tr * P // row_tasks, (tr + 1) * P // row_tasks, j0, nj, a1, a2)
        s1[:] = 0.0
        s2[:] = 0.0
        for t in range(tasks):
            j0 = (t % nblocks) * 1024
            for j in range(min(1024, C - j0)):
                s1[j0 + j] += p1[t, j]
                s2[j0 + j] += p2[t, j]
    return moments


def current(u, us, s1, s2):
    reduce.sums_par(u, u, us, us, s1, s2, reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS,
                    reduce.COL_TASKS_MAX, True)


def read(u, us, s1, s2):
    torch.sum(torch.from_numpy(u))


FORMS = {"float64 two rows (now)": current, "float32 chunks mixed": make(mixed), "float32 chunks split": make(split),
         "read (torch.sum)": read}


def tm(f, n=40):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


SHAPES = [(1024, 256, 0), (1024, 256, 1e4), (1568, 2048, 0), (6272, 1024, 0), (25088, 512, 0), (100352, 256, 0)]
for P, C, off in SHAPES[int(sys.argv[1]) if len(sys.argv) > 1 else 0:]:
    x = (np.random.default_rng(0).standard_normal((P, C, 1)) + off).astype(np.float32)
    x[0] += 50  # the shift (the first row) is an outlier
    shift = x[0, :, 0].astype(np.float64)
    x64 = x[:, :, 0].astype(np.float64)
    ref = ((x64 - x64.mean(0)) ** 2).sum(0)
    res = {k: [] for k in FORMS}
    err = {}
    for _ in range(3):
        for k, f in FORMS.items():
            s1, s2 = np.zeros(C), np.zeros(C)
            res[k].append(tm(lambda: f(x, shift, s1, s2)))
            err[k] = np.abs((s2 - s1 * s1 / P) / ref - 1).max()
    print("%6dx%-5d offset %-5g " % (P, C, off) + "  ".join(
        "%s %.0f us" % (k, np.median(v)) + ("" if k.startswith("read") else " (M2 err %.0e)" % err[k])
        for k, v in res.items()), flush=True)

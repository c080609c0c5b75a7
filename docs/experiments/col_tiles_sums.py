"""The columns pattern's sums with the register tiles of normkit.kernels.tiles in row
blocks of R rows, against the two-rows sweep (reduce._sweep_rows / _sweep_rows_sq, the
form before the tiles), with reduce._sums' task split for L == 1, two threads and one:
the backward's paired sums (s1 = sum(dy), s2 = sum(dy * (x - mean))), or with
MOMENTS=1 in the environment the forward's moments (s1 = sum(x - K), s2 = sum((x - K)^2)).
Median us of alternating rounds; the largest difference from float64 NumPy relative to
the largest |s2|. Usage: col_tiles_sums.py [R ...]"""
import os
import sys
import time

import numpy as np
from numba import njit, prange

from normkit.kernels.reduce import _sweep_rows, _sweep_rows_sq
from normkit.kernels.tiles import TILE, tile_sums

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
MOMENTS = bool(os.environ.get("MOMENTS"))


def make(R, parallel):
    def pairs(g, x, gs, xs, s1, s2):
        P, C = x.shape
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
            r0 = tr * P // row_tasks
            r1 = (tr + 1) * P // row_tasks
            if MOMENTS:  # g is x, gs its shifts
                if R == 0:
                    _sweep_rows_sq(g, gs[j0:j0 + nj], r0, r1, j0, nj, a1, a2)
                else:
                    full = (nj // TILE) * TILE
                    for rb in range(r0, r1, R):
                        tile_sums(g, None, gs[j0:j0 + nj], None, rb, min(rb + R, r1), j0, full // TILE, a1, a2)
                    if full < nj:
                        _sweep_rows_sq(g, gs[j0 + full:j0 + nj], r0, r1, j0 + full, nj - full, a1[full:nj],
                                       a2[full:nj])
            elif R == 0:
                _sweep_rows(g, x, gs[j0:j0 + nj], xs[j0:j0 + nj], r0, r1, j0, nj, a1, a2)
            else:
                full = (nj // TILE) * TILE
                for rb in range(r0, r1, R):
                    tile_sums(g, x, gs[j0:j0 + nj], xs[j0:j0 + nj], rb, min(rb + R, r1), j0, full // TILE, a1, a2)
                if full < nj:
                    _sweep_rows(g, x, gs[j0 + full:j0 + nj], xs[j0 + full:j0 + nj], r0, r1, j0 + full, nj - full,
                                a1[full:nj], a2[full:nj])
        s1[:] = 0.0
        s2[:] = 0.0
        for t in range(tasks):
            j0 = (t % nblocks) * 1024
            for j in range(min(1024, C - j0)):
                s1[j0 + j] += p1[t, j]
                s2[j0 + j] += p2[t, j]
    return njit(parallel=parallel, fastmath=FM)(pairs)


Rs = [int(a) for a in sys.argv[1:]] or [16]
FORMS = {}
for par in (True, False):
    label = "two threads" if par else "one thread"
    FORMS[f"{label}, sweep"] = make(0, par)
    FORMS.update({f"{label}, tiles R={R}": make(R, par) for R in Rs})


def tm(f, n=30):
    for _ in range(3):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


for P, C in [(1024, 256), (8192, 512), (1568, 2048), (25088, 256), (25088, 512), (100352, 256)]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((P, C)) + 3).astype(np.float32)
    g = rng.standard_normal((P, C)).astype(np.float32)
    xs = x.mean(0).astype(np.float64)
    gs = np.zeros(C)
    if MOMENTS:
        g = x
        gs = x[0].astype(np.float64)
        xs = gs
    ref1 = (g.astype(np.float64) - gs).sum(0)
    ref2 = ((g.astype(np.float64) - gs) * (x - xs)).sum(0)
    res = {k: [] for k in FORMS}
    err = {}
    for _ in range(3):
        for k, f in FORMS.items():
            s1, s2 = np.empty(C), np.empty(C)
            res[k].append(tm(lambda: f(g, x, gs, xs, s1, s2)))
            err[k] = max(np.abs(s1 - ref1).max(), np.abs(s2 - ref2).max()) / np.abs(ref2).max()
    print(f"{P}x{C} ({P * C * 4 / 1e6:.1f} MB per operand)")
    for k, v in res.items():
        print(f"  {k:24s} {np.median(v):9.0f} us  (err {err[k]:.0e})", flush=True)

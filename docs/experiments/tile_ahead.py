"""The register tiles' row block and prefetch distance on this machine: the columns
pattern's paired sums (the backward's s1 = sum(dy), s2 = sum(dy * (x - mean))), or with
MOMENTS=1 the forward's moments, two threads, reduce._sums' task split for L == 1.
Forms: the two-rows sweep (no tiles), and tiles with R rows per block prefetching
A rows ahead (A = 0: no prefetch) with locality hint H (3: every cache level, 2/1:
outer levels, 0: non-temporal). Each form compiles its own copy of tile_sums (tiles.AHEAD and
tiles.LOCALITY are read when a caller is compiled). Median us of alternating rounds.
Usage: [MOMENTS=1] [FORMS="R,A,H ..."] tile_ahead.py [PxC ...]"""
import os
import sys

import numpy as np
from numba import njit, prange

from normkit.kernels import tiles
from normkit.kernels.reduce import _sweep_rows, _sweep_rows_sq
from normkit.kernels.tiles import TILE, tile_sums

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median_time import median_time  # noqa: E402

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
MOMENTS = bool(os.environ.get("MOMENTS"))
FORMS_SPEC = [(0, 0, 3), (16, 16, 3), (8, 8, 3), (16, 4, 3), (16, 0, 3), (8, 0, 3),
              (16, 16, 2), (16, 32, 2), (8, 8, 2), (32, 32, 2), (16, 16, 1), (16, 16, 0)]
if os.environ.get("FORMS"):  # e.g. FORMS="16,16,3 16,16,2": R,A,H per form
    FORMS_SPEC = [tuple(int(v) for v in f.split(",")) for f in os.environ["FORMS"].split()]


def make(R):
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
            full = (nj // TILE) * TILE
            if MOMENTS:
                if R == 0:
                    _sweep_rows_sq(g, gs[j0:j0 + nj], r0, r1, j0, nj, a1, a2)
                else:
                    for rb in range(r0, r1, R):
                        tile_sums(g, None, gs[j0:j0 + nj], None, rb, min(rb + R, r1), j0, full // TILE, a1, a2)
            elif R == 0:
                _sweep_rows(g, x, gs[j0:j0 + nj], xs[j0:j0 + nj], r0, r1, j0, nj, a1, a2)
            else:
                for rb in range(r0, r1, R):
                    tile_sums(g, x, gs[j0:j0 + nj], xs[j0:j0 + nj], rb, min(rb + R, r1), j0, full // TILE, a1, a2)
        s1[:] = 0.0
        s2[:] = 0.0
        for t in range(tasks):
            j0 = (t % nblocks) * 1024
            for j in range(min(1024, C - j0)):
                s1[j0 + j] += p1[t, j]
                s2[j0 + j] += p2[t, j]
    return njit(parallel=True, fastmath=FM)(pairs)


def tm(f):
    return median_time(f, 30, 3) * 1e6


shapes = [tuple(int(v) for v in a.split("x")) for a in sys.argv[1:]] or [(1024, 256), (8192, 512), (16384, 256),
                                                                           (1568, 2048), (100352, 256)]
rng = np.random.default_rng(0)
forms = {}
for P, C in shapes:
    x = (rng.standard_normal((P, C)) + 3).astype(np.float32)
    g = rng.standard_normal((P, C)).astype(np.float32)
    xs = x.mean(0).astype(np.float64)
    gs = np.zeros(C)
    if MOMENTS:
        g, gs = x, x[0].astype(np.float64)
        xs = gs
    ref2 = ((g.astype(np.float64) - gs) * (x - xs)).sum(0)
    res = {}
    for R, A, H in FORMS_SPEC:
        key = f"R={R} A={A} H={H}" if R else "sweep"
        if key not in forms:
            tiles.AHEAD, tiles.LOCALITY = A, H
            forms[key] = make(R)
            s1, s2 = np.empty(C), np.empty(C)
            forms[key](g, x, gs, xs, s1, s2)  # compile with this AHEAD/LOCALITY
            assert np.abs(s2 - ref2).max() <= 1e-12 * np.abs(ref2).max() * P, key
        res[key] = []
    for _ in range(3):
        for key in res:
            s1, s2 = np.empty(C), np.empty(C)
            res[key].append(tm(lambda: forms[key](g, x, gs, xs, s1, s2)))
    base_key = "R=16 A=16 H=3" if "R=16 A=16 H=3" in res else next(iter(res))
    base = np.median(res[base_key])
    print(f"{P}x{C} ({P * C * 4 / 1e6:.1f} MB per operand), {'moments' if MOMENTS else 'paired sums'}; "
          f"x = time of {base_key} / the form's (R=16 A=16 H=3: the library's before b592908)")
    for key, v in res.items():
        print(f"  {key:16s} {np.median(v):9.0f} us  x{base / np.median(v):.2f}", flush=True)

"""The columns pattern's statistics with their accumulators in registers, in plain Numba:
tiles of T rows x 16 columns, the 16 columns' float64 sums as 32 scalar variables (generated
source), written to memory once per tile -- against reduce.sums_par, whose accumulators live
in L1 and are loaded and stored every two rows. Median us of three alternating rounds. Then
the count of the tile kernel's packed instructions: LLVM's loop vectoriser takes the row
loop and loads the strided column values with gathers (vgatherqps), instead of packing the
16 columns of a row into vectors."""
import collections
import re
import time

import numpy as np
from numba import njit, prange

from normkit.kernels import reduce

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
W = 16
src = ["def tile(u, kw, r0, r1, j0, nj, a1, a2, T):",
       "    for rb in range(r0, r1, T):",
       "        re = min(r1, rb + T)",
       "        for jb in range(0, nj, %d):" % W]
src += ["            k%d = kw[jb + %d]" % (i, i) for i in range(W)]
src += ["            s%d = 0.0; q%d = 0.0" % (i, i) for i in range(W)]
src += ["            for r in range(rb, re):",
        "                row = u[r, j0 + jb:j0 + jb + %d]" % W]
src += ["                d%d = row[%d] - k%d; s%d += d%d; q%d += d%d * d%d" % ((i,) * 8) for i in range(W)]
src += ["            a1[jb + %d] += s%d; a2[jb + %d] += q%d" % (i, i, i, i) for i in range(W)]
scope = {"np": np}
exec("\n".join(src), scope)
tile = njit(fastmath=FM)(scope["tile"])


def make(T):
    @njit(parallel=True, fastmath=FM)
    def moments(u, us, s1, s2):  # reduce._sums' task split for L == 1 (C a multiple of 16)
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
            tile(u2, us[j0:j0 + nj], tr * P // row_tasks, (tr + 1) * P // row_tasks, j0, nj, a1, a2, T)
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


FORMS = {"L1 accumulators (now)": current, "tiles T=16": make(16), "tiles T=64": make(64), "tiles T=256": make(256)}


def tm(f, n=40):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


for P, C in [(1024, 256), (1568, 2048), (6272, 1024), (25088, 512), (100352, 256)]:
    x = (np.random.default_rng(0).standard_normal((P, C, 1)) + 3).astype(np.float32)
    shift = x[0, :, 0].astype(np.float64)
    ref = ((x[:, :, 0].astype(np.float64) - shift) ** 2).sum(0)
    res = {k: [] for k in FORMS}
    err = {}
    for _ in range(3):
        for k, f in FORMS.items():
            s1, s2 = np.empty(C), np.empty(C)
            res[k].append(tm(lambda: f(x, shift, s1, s2)))
            err[k] = np.abs(s2 / ref - 1).max()
    print("%6dx%-5d " % (P, C) + "  ".join("%s %.0f us (err %.0e)" % (k, np.median(v), err[k]) for k, v in res.items()),
          flush=True)

asm = next(iter(tile.inspect_asm().values()))
packed = collections.Counter(m for m in re.findall(r"\b(v\w+[sp][sd])\s+[^\n]*?[xyz]mm", asm))
print("tile kernel, most frequent vector instructions:", packed.most_common(8))
print("gathers:", len(re.findall(r"vgather", asm)))

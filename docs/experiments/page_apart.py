"""Two threads, each adding rows of a float32 matrix into its own float64 accumulator
row (the columns pattern's form), with the two accumulator rows a given distance
apart; and the same work split in 4 or 8 tasks. Standalone (Numba only).
Usage: page_apart.py"""
import time
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=False, fastmath=True)
def colsum(x, ntask, nw, out):
    P = x.shape[0]
    for w in prange(nw):
        for t in range(w * ntask // nw, (w + 1) * ntask // nw):
            for r in range(t * P // ntask, (t + 1) * P // ntask):
                for j in range(x.shape[1]):
                    out[t, j] += (x[r, j] - 1.0) ** 2


def med(f, n=100):
    for _ in range(10):
        f()
    times = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            f()
        times.append((time.perf_counter() - t) / n * 1e6)
    return float(np.median(times))


x = np.random.default_rng(0).standard_normal((16384, 256), dtype=np.float32)
for nt, nw in ((1, 1), (2, 2), (4, 2), (8, 2)):
    out = np.zeros((nt, 256 + 512))
    print(f"{nt} tasks on {nw} workers (rows a page apart): {med(lambda: colsum(x, nt, nw, out)):.0f} us")
for pad in (0, 8, 16, 64, 256, 512):
    out = np.zeros((2, 256 + pad))
    print(f"2 tasks, accumulator rows {(256 + pad) * 8} bytes apart: {med(lambda: colsum(x, 2, 2, out)):.0f} us")

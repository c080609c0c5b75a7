"""How fast a plain read can go here: torch.sum of a float32 array against Numba reductions
over the same memory split in two contiguous halves (one per thread) -- a float32 sum, a
float64 sum (each value widened), and the shifted float64 moments sum(x - k), sum((x - k)^2)
of reduce.run_moments -- then reduce.sums_par's columns pattern on the same bytes viewed as
(P, C) rows. Median ms, two rounds per size."""
import time

import numpy as np
import torch
from numba import njit, prange

from normkit.kernels import reduce

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
torch.set_num_threads(2)


@njit(parallel=True, fastmath=FM)
def sum32(v, acc):
    n = v.shape[0]
    for t in prange(2):
        r = v[t * n // 2:(t + 1) * n // 2]
        s = np.float32(0.0)
        for i in range(r.shape[0]):
            s += r[i]
        acc[t * 64] = s


@njit(parallel=True, fastmath=FM)
def sum64(v, acc):
    n = v.shape[0]
    for t in prange(2):
        r = v[t * n // 2:(t + 1) * n // 2]
        s = 0.0
        for i in range(r.shape[0]):
            s += r[i]
        acc[t * 64] = s


@njit(parallel=True, fastmath=FM)
def moments64(v, acc):
    n = v.shape[0]
    for t in prange(2):
        a, b = reduce.run_moments(v[t * n // 2:(t + 1) * n // 2], 1.0)
        acc[t * 64] = a + b


def tm(f, n=30):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e3


acc = np.zeros(256)
for P, C in [(1568, 2048), (25088, 512), (100352, 256)]:
    xt = torch.randn(P * C)
    v = xt.numpy()
    x3 = v.reshape(P, C, 1)
    sh = x3[0, :, 0].astype(np.float64)
    s1, s2 = np.empty(C), np.empty(C)
    for _ in range(2):
        print("%.1f MB: torch.sum %.2f | Numba float32 sum %.2f, float64 sum %.2f, float64 moments %.2f | "
              "columns pattern (%dx%d) %.2f" % (
                  v.nbytes / 1e6, tm(lambda: torch.sum(xt)), tm(lambda: sum32(v, acc)), tm(lambda: sum64(v, acc)),
                  tm(lambda: moments64(v, acc)), P, C,
                  tm(lambda: reduce.sums_par(x3, x3, sh, sh, s1, s2, reduce.CHUNK, reduce.COL_BLOCK,
                                             reduce.COL_TASK_ELEMS, reduce.COL_TASKS_MAX, True))), flush=True)

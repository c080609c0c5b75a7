"""segment_sums alone (runs of 64 segments of L values, in cache, one thread: elements
per ns) and the kernels built on it (GroupNorm and BatchNorm backward on 7x7 and
14x14 maps, 2 threads, median ms). Run at two commits with run_at.py, alternating."""
import time

import numba
import numpy as np
from numba import njit

import normkit
from normkit.kernels import grouped, norm
from normkit.kernels.stream import segment_sums

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(fastmath=FM)
def sums(dy, x, s1, s2, L, reps):
    for _ in range(reps):
        for t in range(dy.shape[0]):
            segment_sums(dy[t], x[t], 0.0, 0.5, L, s1[t], s2[t])


def tm(f, n=40):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts)


print("normkit from", normkit.__file__)
rng = np.random.default_rng(0)
numba.set_num_threads(1)
line = []
for L in (49, 196, 3136):
    M = 64 * L
    x = rng.standard_normal((2, M), dtype=np.float32)
    dy = rng.standard_normal((2, M), dtype=np.float32)
    s1, s2 = np.zeros((2, 64)), np.zeros((2, 64))
    reps = max(1, 200000 // M)
    t = tm(lambda: sums(dy, x, s1, s2, L, reps))
    line.append("L=%d %.2f elem/ns" % (L, reps * 2 * M / t / 1e9))
print("segment_sums, one thread: " + "  ".join(line))
numba.set_num_threads(2)
for shape in ((32, 2048, 7, 7), (32, 1024, 14, 14)):
    N, C = shape[:2]
    L = shape[2] * shape[3]
    x = rng.standard_normal((N, C, L), dtype=np.float32)
    dy = rng.standard_normal((N, C, L), dtype=np.float32)
    dx = np.empty_like(x)
    w = rng.uniform(0.5, 2, C).astype(np.float32)
    out = np.empty_like(x)
    gm, _, gr = grouped.group_forward(x, 32, w, w, 1e-5, out)
    bm, _, br = norm.forward_batch(x, w, w, 1e-5, out)
    g = tm(lambda: grouped.group_backward(dy, x, 32, gm, gr, w, dx)) * 1e3
    b = tm(lambda: norm.backward(dy, x, bm, br, w, True, dx)) * 1e3
    print("%s: GroupNorm backward %.3f ms  BatchNorm backward %.3f ms" % ("x".join(map(str, shape)), g, b), flush=True)

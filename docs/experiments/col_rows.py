"""Channels-last / BatchNorm1d kernels (the columns pattern of reduce.py): moments,
grad_sums, training forward and backward into preallocated outputs, median ms.
Run at two commits with run_at.py, alternating, to compare."""
import sys
import time

import numpy as np

import normkit
from normkit.kernels import norm

SHAPES = [(1024, 256), (8192, 512), (1568, 2048), (6272, 1024), (25088, 256)]


def tm(f, n=40):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e3


print("normkit from", normkit.__file__)
for P, C in SHAPES:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((P, C, 1), dtype=np.float32)
    dy = rng.standard_normal((P, C, 1), dtype=np.float32)
    out = np.empty_like(x)
    w = np.ones(C, np.float32)
    mean, var, rstd = norm.forward_batch(x, w, w, 1e-5, out)
    r = [tm(lambda: norm.moments(x)), tm(lambda: norm.grad_sums(dy, x, mean)),
         tm(lambda: norm.forward_batch(x, w, w, 1e-5, out)), tm(lambda: norm.backward(dy, x, mean, rstd, w, True, out))]
    print("%6dx%-5d moments %.3f  grad_sums %.3f  forward %.3f  backward %.3f ms" % (P, C, *r), flush=True)

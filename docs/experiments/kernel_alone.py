"""BatchNorm2d's training forward and backward kernels alone (norm.forward_batch,
norm.backward) on NCHW float32 arrays, into preallocated outputs, median us; then with
the short-run forms turned off (the per-channel forms). Usage: kernel_alone.py SHAPE"""
import sys
import time

import numpy as np

from normkit.kernels import norm

shape = tuple(int(v) for v in sys.argv[1].split("x"))
N, C = shape[:2]
L = int(np.prod(shape[2:]))
rng = np.random.default_rng(0)
x = rng.standard_normal((N, C, L), dtype=np.float32)
dy = rng.standard_normal((N, C, L), dtype=np.float32)
out, dx = np.empty_like(x), np.empty_like(x)
w = np.ones(C, np.float32)


def loop(f, n=500):
    for _ in range(20):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


mean, var, rstd = norm.forward_batch(x, w, w, 1e-5, out)
print("%s: forward %.1f us  backward %.1f us" % (sys.argv[1], loop(lambda: norm.forward_batch(x, w, w, 1e-5, out)),
                                                  loop(lambda: norm.backward(dy, x, mean, rstd, w, True, dx))))
norm.SHORT_FORWARD_RUN = norm.SHORT_BACKWARD_RUN = 0
print("  per-channel forms: forward %.1f us  backward %.1f us" % (
    loop(lambda: norm.forward_batch(x, w, w, 1e-5, out)), loop(lambda: norm.backward(dy, x, mean, rstd, w, True, dx))))

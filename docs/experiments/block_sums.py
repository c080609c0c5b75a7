"""The short-run blocked forward and backward (``kernels.fused.block_forward_par`` /
``block_backward_par``, the NCHW 7x7 and 14x14 BatchNorm paths) on the bench's shapes.
Their per-row channel sums used to go to one shared ``(C,)`` array, the two workers'
halves a few KiB apart; run at two commits (``run_at.py``) to compare.
Usage: block_sums.py [rounds]"""
import sys, time
import numpy as np
from normkit.kernels import norm

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 9


def med(f, n):
    for _ in range(3):
        f()
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(n):
            f()
        times.append((time.perf_counter() - t) / n)
    return np.median(times) * 1e3, min(times) * 1e3


for shape in [(32, 2048, 49), (32, 1024, 49), (32, 512, 49), (32, 1024, 196), (32, 512, 196)]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    out = np.empty_like(x)
    dx = np.empty_like(x)
    C = shape[1]
    w = np.ones(C, np.float32)
    b = np.zeros(C, np.float32)
    mean, var, rstd = norm.forward_batch(x, w, b, 1e-5, out)
    n = max(3, 20_000_000 // x.size)
    line = f"{shape[0]}x{C}x{shape[2]}:"
    if norm.short_block(*shape, 4, norm.SHORT_FORWARD_RUN):
        line += " forward %.3f ms (min %.3f)" % med(lambda: norm.forward_batch(x, w, b, 1e-5, out), n)
    if norm.short_block(*shape, 4, norm.SHORT_BACKWARD_RUN):
        line += "  backward %.3f ms (min %.3f)" % med(lambda: norm.backward(dy, x, mean, rstd, w, True, dx), n)
    print(line, flush=True)

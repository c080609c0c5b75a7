"""One core's rate of the shifted sums (sum(d), sum(d*d) with d = x - k) in cache, by
arithmetic: float32 values summed in float64 and float64 values in float64, both through
normkit's own run loop (reduce.run_moments), and float32 values in float32 (the same loop
in float32). Vectorised by LLVM, with normkit's fastmath flags; 2,000 calls each on 64 Ki
and 256 Ki values (256 KiB-2 MiB). Prints billions of values a second and GB/s of the input.
Usage: sum_rates.py"""
import time

import numpy as np
from numba import njit

from normkit.kernels._jit import FASTMATH as FM
from normkit.kernels.reduce import run_moments


@njit
def library(x, k):
    """normkit's own run loop (reduce.run_moments): float64 arithmetic whatever x's dtype."""
    return run_moments(x, k)


@njit(fastmath=FM)
def narrow(x, k):
    a = np.float32(0)
    b = np.float32(0)
    kk = np.float32(k)
    for i in range(x.shape[0]):
        d = x[i] - kk
        a += d
        b += d * d
    return a, b


for n in (1 << 16, 1 << 18):
    x = np.random.default_rng(0).random(n, dtype=np.float32)
    for name, f, arr in (("float32 into float64", library, x), ("float32 into float32", narrow, x),
                         ("float64 into float64", library, x.astype(np.float64))):
        f(arr, 0.5)
        t0 = time.perf_counter()
        for _ in range(2000):
            f(arr, 0.5)
        dt = (time.perf_counter() - t0) / 2000
        print(f"{n:7d} {name:22s} {n / dt / 1e9:6.2f} G values/s {arr.nbytes / dt / 1e9:6.1f} GB/s")

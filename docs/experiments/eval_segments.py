"""The element passes alone, into preallocated outputs: the inference forward
(norm.forward_fixed) and the backward's element pass (norm.apply_coefficients2),
NCHW float32, median ms. Run at two commits with run_at.py, alternating."""
import time

import numpy as np

import normkit
from normkit.kernels import norm

SHAPES = [(32, 128, 8, 8), (32, 2048, 7, 7), (32, 1024, 14, 14), (32, 256, 28, 28), (8, 64, 56, 56),
          (32, 512, 28, 28), (32, 64, 112, 112)]


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
for shape in SHAPES:
    N, C = shape[:2]
    L = shape[2] * shape[3]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, L), dtype=np.float32)
    dy = rng.standard_normal((N, C, L), dtype=np.float32)
    out = np.empty_like(x)
    mean, var = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    w, b = rng.uniform(0.5, 2, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    v = [rng.standard_normal(C).astype(np.float32) for _ in range(4)]
    r = [tm(lambda: norm.forward_fixed(x, mean, var, w, b, 1e-5, out)),
         tm(lambda: norm.apply_coefficients2(dy, x, v[0], v[1], v[2], v[3], out))]
    print("%-18s eval forward %.3f  backward element pass %.3f ms" % ("x".join(map(str, shape)), *r), flush=True)

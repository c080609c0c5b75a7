"""Instructions per call of one of BatchNorm2d's parallel kernels (the flavour whose prange
index types changed), counted by valgrind: deterministic, unlike timings on these shared
machines, and blind to memory placement. One thread (NUMBA_NUM_THREADS=1: no spinning
pool). Run it under callgrind with two N, after one plain run has filled the JIT cache,
and difference the totals:

  NUMBA_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
      python kernel_instructions.py KERNEL PxCxL N      (with run_at.py TREE for another tree)

KERNEL: fused_forward | fused_backward | block_forward | block_backward."""
import sys

import numpy as np

from normkit.kernels import norm

kernel, shape, n = sys.argv[1], tuple(int(s) for s in sys.argv[2].split("x")), int(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.standard_normal(shape, dtype=np.float32)
dy = rng.standard_normal(shape, dtype=np.float32)
out = np.empty_like(x)
C = shape[1]
w = np.ones(C, np.float32)
b = np.zeros(C, np.float32)
mean, var, rstd = norm._fused_forward[0](x, None, w, b, 1e-5, out, True, norm._NO_STATS, norm._NO_STATS, False)
cb = 8
for _ in range(n):
    if kernel == "fused_forward":
        norm._fused_forward[0](x, None, w, b, 1e-5, out, True, norm._NO_STATS, norm._NO_STATS, False)
    elif kernel == "fused_backward":
        norm._fused_backward[0](dy, x, mean, rstd, w, True, out, True, False)
    elif kernel == "block_forward":
        norm._block_forward[0](x, w, b, 1e-5, out, cb, False)
    elif kernel == "block_backward":
        norm._block_backward[0](dy, x, mean, rstd, w, True, out, True, cb, False)
    else:
        raise SystemExit("unknown kernel " + kernel)
print(kernel, shape, n)

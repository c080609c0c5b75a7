"""The element pass y = (x - m[c]) * a[c] + b[c] on the same bytes in two layouts: the
channels-last view (P, 256, 1), walked by the blocks pattern with coefficient vectors,
and an NCHW view (P / 98, 256, 98), walked as segments with one coefficient per
segment; ordinary (nt=0) and streaming (nt=1) stores for the channels-last one; torch's
copy_ beside. Existing output, two threads, interleaved rounds
(normkit.bench.timing.measure_interleaved), median ms. Run it also with AVX-512 off
for Numba (NUMBA_CPU_FEATURES without the avx512 flags, and a NUMBA_CACHE_DIR of its
own) to compare 32-byte with 64-byte vectors. ALIGNED=1 in the environment: input and
output on cache lines (NumPy's own allocations may land 16 bytes past one, which slows the
streamed pass; out_align.py). Usage: [ALIGNED=1] cl_pass.py P (e.g. 100352, 16464)"""
import os
import sys

import numpy as np
import torch

from normkit.bench.timing import measure_interleaved
from normkit.kernels import elementwise, norm
from normkit.kernels.stream import aligned_empty

torch.set_num_threads(2)
P = int(sys.argv[1])
C = 256
x = np.random.default_rng(0).standard_normal((P, C, 1), dtype=np.float32)
out = np.empty_like(x)
if os.environ.get("ALIGNED") == "1":  # on cache lines, as the library's outputs (out_align.py)
    x, out = aligned_empty(x.shape, x.dtype), aligned_empty(x.shape, x.dtype)
    x[:] = np.random.default_rng(0).standard_normal((P, C, 1), dtype=np.float32)
m, a = np.zeros(C, np.float32), np.ones(C, np.float32)
cfg = norm._config(x, out=out)[2]
xs, os_ = x.reshape(P // 98, C, 98), out.reshape(P // 98, C, 98)
tx, to = torch.from_numpy(x), torch.from_numpy(out)
fns = {"CL nt=0": lambda: elementwise.affine_par(x, m, a, m, out, cfg[0], cfg[4], 0),
       "CL nt=1": lambda: elementwise.affine_par(x, m, a, m, out, cfg[0], cfg[4], 1),
       "NCHW nt=0": lambda: elementwise.affine_par(xs, m, a, m, os_, cfg[0], cfg[4], 0),
       "torch copy": lambda: to.copy_(tx)}
for _ in range(2):
    res = measure_interleaved(fns, budget=1.0, rounds=20)
    print("  ".join(f"{k} {v.ms:.3f}" for k, v in res.items()), flush=True)

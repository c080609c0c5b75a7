"""The channels-last element pass's sweeps (each worker half of the rows, stream_map over
W columns at a time, ordinary stores into existing memory, 103 MB) with the per-column
coefficients given as scalars, one, two or three vectors: `(x - m) * a + b` with m, a, b
scalars; `x * a`; `x * a + b`; `(x - m) * a + b` with three vectors. torch's copy_
beside. Two threads, interleaved rounds (normkit.bench.timing.measure_interleaved),
median ms. Usage: cl_coefs.py"""
import numba
import numpy as np
import torch
from numba import prange

from normkit.bench.timing import measure_interleaved
from normkit.kernels.stream import stream_map

torch.set_num_threads(2)


@numba.njit(parallel=True)
def sweep(x, out, m, a, b, W, kind):
    P = x.size // W
    for w in prange(2):
        r0 = w * P // 2
        r1 = (w + 1) * P // 2
        for r in range(r0, r1):
            xs = x[r * W:(r + 1) * W]
            os = out[r * W:(r + 1) * W]
            if kind == 0:
                stream_map("0 1 - 2 * 3 +", os, (xs, m[0], a[0], b[0]), False)
            elif kind == 1:
                stream_map("0 1 *", os, (xs, a), False)
            elif kind == 2:
                stream_map("0 1 * 2 +", os, (xs, a, b), False)
            else:
                stream_map("0 1 - 2 * 3 +", os, (xs, m, a, b), False)


n = 100352 * 256
x = torch.randn(n).numpy()
out = torch.empty(n).numpy()
tx, to = torch.from_numpy(x), torch.from_numpy(out)
fns = {}
for W in (1024, 4096):
    ones, zeros = np.ones(W, np.float32), np.zeros(W, np.float32)
    for kind, name in enumerate(("scalars", "1 vector", "2 vectors", "3 vectors")):
        fns[f"W{W} {name}"] = (lambda W=W, o=ones, z=zeros, kind=kind: sweep(x, out, z, o, z, W, kind))
fns["torch copy"] = lambda: to.copy_(tx)
for _ in range(3):
    res = measure_interleaved(fns, budget=1.0, rounds=20)
    print("  ".join(f"{k} {v.ms:.2f}" for k, v in res.items()), flush=True)

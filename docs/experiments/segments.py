"""The short-map kernels through the core's entry points (norm.forward_batch and
norm.backward, outputs preallocated on torch's pages): each commit's choice of form for
BatchNorm on 7x7/14x14 (P = 32 runs per channel) and InstanceNorm's view (P = 1).
Run at two commits for a before -> after figure. Minimum of 30 calls, two threads."""
import time

import numpy as np
import torch

from normkit.kernels import norm


def best(f, n=30):
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3


torch.manual_seed(0)
for P, C, L, what in ((32, 2048, 49, "BatchNorm 32x2048x7x7"), (32, 1024, 196, "BatchNorm 32x1024x14x14"),
                      (1, 65536, 49, "InstanceNorm 32x2048x7x7"), (1, 32768, 196, "InstanceNorm 32x1024x14x14")):
    x = (torch.randn(P, C, L) * 2 + 3).numpy()
    dy = torch.randn(P, C, L).numpy()
    out = torch.empty(P, C, L).numpy()
    dx = torch.empty(P, C, L).numpy()
    w = np.random.default_rng(0).uniform(0.5, 2.0, C).astype(np.float32)
    mean, var, rstd = norm.forward_batch(x, w, None, 1e-5, out)
    fwd = [best(lambda: norm.forward_batch(x, w, None, 1e-5, out)) for _ in range(3)]
    bwd = [best(lambda: norm.backward(dy, x, mean, rstd, w, True, dx)) for _ in range(3)]
    print(f"{what:28s} forward {' '.join(f'{v:.2f}' for v in fwd)} ms   backward {' '.join(f'{v:.2f}' for v in bwd)} ms")

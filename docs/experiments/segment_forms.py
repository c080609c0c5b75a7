"""Short maps: the blocked forms (blocks of channels walked as segments of rows) against
the per-channel forms, forward and backward, in one process, alternating (six rounds,
minimum of 20 calls each; outputs on torch's pages, streaming stores as the layers use
them at this size). Usage: segment_forms.py PxCxL ... (default: the shapes below)."""
import sys
import time

import numpy as np
import torch

from normkit.kernels import fused, norm

SHAPES = ["32x2048x49", "32x1024x196", "8x8192x49", "4x16384x49", "2x32768x49", "1x65536x49",
          "8x2048x196", "4x4096x196", "1x32768x196"]


def best(f, n=20):
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3


for shape in sys.argv[1:] or SHAPES:
    P, C, L = (int(v) for v in shape.split("x"))
    x = (torch.randn(P, C, L) * 2 + 3).numpy()
    dy = torch.randn(P, C, L).numpy()
    out = torch.empty(P, C, L).numpy()
    w = np.random.default_rng(0).uniform(0.5, 2.0, C).astype(np.float32)
    mean = x.mean(axis=(0, 2)).astype(np.float64)
    rstd = 1 / np.sqrt(x.var(axis=(0, 2)).astype(np.float64) + 1e-5)
    cb = norm.short_block(P, C, L, 4, 256)
    none = norm._NO_STATS
    runs = {
        "forward blocks": lambda: fused.block_forward_par(x, w, None, 1e-5, out, cb, True),
        "forward per-channel": lambda: norm._fused_forward[0](x, None, w, None, 1e-5, out, True, none, none, True),
        "backward blocks": lambda: fused.block_backward_par(dy, x, mean, rstd, w, True, out, True, cb, True),
        "backward per-channel": lambda: fused.channel_backward_par(dy, x, mean, rstd, w, True, out, True, True),
    }
    times = {k: [] for k in runs}
    for _ in range(6):
        for k, f in runs.items():
            times[k].append(best(f))
    print(shape, "  ".join(f"{k} {min(v):.2f}-{max(v):.2f}" for k, v in times.items()))

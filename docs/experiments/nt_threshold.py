"""Streaming (non-temporal) stores against ordinary stores in the element pass, by output
size: elementwise.affine_par with nt=0 and nt=1, into an existing output and into a
fresh one, beside torch's copy (existing, fresh). Two threads; three rounds of medians
of 200 calls. Usage: nt_threshold.py PxCxL ... (e.g. 8x64x3136 4x256x3136 20x64x3136
26x64x3136 32x256x784 25088x64x1 50176x64x1 16384x256x1 8192x512x1)"""
import os
import sys

import numpy as np
import torch

from normkit.kernels import elementwise, norm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median_time import median_time  # noqa: E402

torch.set_num_threads(2)


def t(f):
    return median_time(f, 200, 20) * 1e3


rng = np.random.default_rng(0)
for shape in [tuple(int(v) for v in a.split("x")) for a in sys.argv[1:]]:
    x = rng.standard_normal(shape, dtype=np.float32); out = np.empty_like(x)
    C = shape[1]; m = np.zeros(C, np.float32); a = np.ones(C, np.float32); k = np.zeros(C, np.float32)
    cfg = norm._config(x, out=out)[2]
    tx, to = torch.from_numpy(x), torch.from_numpy(out)
    for rep in range(3):
        r = {}
        for nt in (0, 1):
            r[f"nt={nt}"] = t(lambda: elementwise.affine_par(x, m, a, k, out, cfg[0], cfg[4], nt))
            r[f"nt={nt} fresh"] = t(lambda: elementwise.affine_par(x, m, a, k, np.empty_like(x), cfg[0], cfg[4], nt))
        r["t.copy"] = t(lambda: to.copy_(tx)); r["t.fresh copy"] = t(lambda: torch.empty_like(tx).copy_(tx))
        print(shape, "  ".join(f"{kk} {v:.3f}" for kk, v in r.items()))

"""The per-channel fused kernels against the two-pass forms and the blocked ("short-run")
forms, on NCHW shapes whose channels fit the per-channel budget, two threads, writing
into existing outputs: the training forward (fused: statistics, then the element pass
per channel; two-pass: the moments over every channel, then one element pass in memory
order; blocks: blocks of whole channels, their rows summed then written as segments,
at any run length here), its element pass alone with given statistics, and the
backward (fused per channel; two-pass: the paired sums, then dx; blocks). Median ms of
alternating rounds. Usage: fused_vs_twopass.py [NxCxL ...]"""
import os
import sys

import numpy as np
import torch

from normkit.kernels import norm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median_time import median_time  # noqa: E402

torch.set_num_threads(2)


def tm(f):
    return median_time(f, 40, 5) * 1e3


shapes = [tuple(int(v) for v in a.split("x")) for a in sys.argv[1:]] or [
    (32, 256, 784), (32, 1024, 196), (8, 64, 3136), (32, 512, 784), (32, 256, 3136), (8, 256, 784), (1, 8192, 784)]
rng = np.random.default_rng(0)
for shape in shapes:
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    out = np.empty_like(x)
    C = shape[1]
    w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    mu, var = x.mean((0, 2)).astype(np.float64), x.var((0, 2)).astype(np.float64)
    rstd = 1 / np.sqrt(var + 1e-5)
    par, fused, cfg = norm._config(x, want_fused=True, out=out)
    nt = bool(cfg[5])
    fwd = norm._fused_forward[0]
    cb = norm.short_block(*shape, 4, 1 << 40)
    forms = {
        "forward fused": lambda: fwd(x, None, w, b, 1e-5, out, True, norm._NO_STATS, norm._NO_STATS, nt),
        "forward two-pass": lambda: norm._forward_batch[0](x, w, b, 1e-5, out, cfg),
        "element pass fused": lambda: fwd(x, None, w, b, 1e-5, out, False, mu, var, nt),
        "element pass two-pass": lambda: norm._forward_fixed[0](x, mu, var, w, b, 1e-5, out, cfg),
        "backward fused": lambda: norm._fused_backward[0](dy, x, mu, rstd, w, True, out, True, nt),
        "backward two-pass": lambda: norm._backward[0](dy, x, mu, rstd, w, True, out, True, cfg),
    }
    if cb:
        forms["forward blocks"] = lambda: norm._block_forward[0](x, w, b, 1e-5, out, cb, nt)
        forms["backward blocks"] = lambda: norm._block_backward[0](dy, x, mu, rstd, w, True, out, True, cb, nt)
    res = {k: [] for k in forms}
    for _ in range(3):
        for k, f in forms.items():
            res[k].append(tm(f))
    print(f"{'x'.join(map(str, shape))} (fused chosen: {fused}, streaming stores: {nt}, {cb} channels a block)")
    for k, v in res.items():
        print(f"  {k:22s} {np.median(v):7.3f} ms  ({min(v):.3f}-{max(v):.3f})", flush=True)

"""The two passes of the channels-last / BatchNorm1d training forward (P, C) against the
floor's primitives on the same memory: torch.sum (a read) and copy_ (a copy) against
norm.moments (the statistics) and norm.forward_fixed (the element pass), and the whole
kernel norm.forward_batch. Median ms of three rounds, then their median."""
import time

import numpy as np
import torch

from normkit.kernels import norm

torch.set_num_threads(2)


def tm(f, n=40):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e3


for P, C in [(1568, 2048), (25088, 512), (100352, 256), (65536, 1024)]:
    xt = torch.randn(P, C)
    ot = torch.empty_like(xt)
    x = xt.numpy().reshape(P, C, 1)
    out = ot.numpy().reshape(P, C, 1)
    w = np.ones(C, np.float32)
    mean, var, rstd = norm.forward_batch(x, w, w, 1e-5, out)
    rounds = []
    for _ in range(3):
        rounds.append([tm(lambda: torch.sum(xt)), tm(lambda: ot.copy_(xt)), tm(lambda: norm.moments(x)),
                       tm(lambda: norm.forward_fixed(x, mean, var, w, w, 1e-5, out)),
                       tm(lambda: norm.forward_batch(x, w, w, 1e-5, out))])
    r = np.median(rounds, 0)
    print("%dx%d: read %.2f copy %.2f | statistics %.2f (%.2fx the read) element pass %.2f (%.2fx the copy) | "
          "forward %.2f, %.2f of the floor" % (P, C, r[0], r[1], r[2], r[2] / r[0], r[3], r[3] / r[1], r[4],
                                               (r[0] + r[1]) / r[4]), flush=True)

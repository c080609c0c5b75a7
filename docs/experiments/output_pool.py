"""BatchNorm2d training steps (forward + backward) with normkit's output pool on and
off, torch's BN beside them, interleaved in one process; minor page faults per step.
Usage: output_pool.py SHAPE [SHAPE ...] (e.g. 32x64x16x16 32x128x8x8)"""
import resource
import sys
import time

import numpy as np
import torch

import normkit.allocator as alloc
import normkit.nn as nkn

torch.set_num_threads(2)


def mk(mod, x, g):
    def step():
        y = mod(x)
        y.backward(g)
        x.grad = None
        for p in mod.parameters():
            p.grad = None
    return step


for arg in sys.argv[1:]:
    shape = tuple(int(v) for v in arg.split("x"))
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape)
    runs = {"torch": (mk(torch.nn.BatchNorm2d(shape[1]), x, g), True),
            "normkit, pool off": (mk(nkn.BatchNorm2d(shape[1]), x, g), False),
            "normkit, pool on": (mk(nkn.BatchNorm2d(shape[1]), x, g), True)}
    res = {k: [] for k in runs}
    faults = {k: 0 for k in runs}
    for r in range(30):
        for k, (f, pool) in runs.items():
            alloc.output_pool(pool)
            for _ in range(5):
                f()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):
                t0 = time.perf_counter()
                f()
                res[k].append(time.perf_counter() - t0)
            faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    alloc.output_pool(True)
    print(arg)
    for k, v in res.items():
        print("  %-18s median %7.1f us  p10 %7.1f us  %6.1f faults/step" % (
            k, np.median(v) * 1e6, np.percentile(v, 10) * 1e6, faults[k] / len(v)))

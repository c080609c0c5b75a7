"""Where PyTorch's own kernel beats normkit's kernels, by layout: BatchNorm1d/2d layer calls
through normkit's kernels (SMALL_INPUT = SMALL_ROWS_INPUT = 0), through normkit's small-input
path (its validation, then torch.batch_norm: both bounds unlimited) and torch's own module,
training forward and forward+backward, interleaved rounds, two threads, median us.
Usage: cross_layouts.py [cl] SHAPE [SHAPE ...]   (cl: 4-D inputs channels-last)"""
import sys

import torch

import normkit.nn as nkn
import normkit.nn.functional as F
from normkit.bench.timing import measure_interleaved

torch.set_num_threads(2)
CL = sys.argv[1] == "cl"
BIG = 1 << 40
for spec in sys.argv[1 + CL:]:
    shape = tuple(int(v) for v in spec.split("x"))
    C = shape[1]
    ours = (nkn.BatchNorm1d if len(shape) == 2 else nkn.BatchNorm2d)(C)
    theirs = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(C)
    x, g = torch.randn(*shape), torch.randn(*shape)
    if CL and len(shape) == 4:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    x.requires_grad_(True)

    def call(mod, bound, backward):
        def f():
            F.SMALL_INPUT = F.SMALL_ROWS_INPUT = bound
            y = mod(x)
            if backward:
                y.backward(g)
            return y
        return f

    fns = {}
    for d, bwd in (("fwd", False), ("fwd+bwd", True)):
        fns.update({f"kernels {d}": call(ours, 0, bwd), f"small path {d}": call(ours, BIG, bwd),
                    f"torch {d}": call(theirs, 0, bwd)})
    for f in fns.values():
        f(), f()
    print(spec, "cl" if CL and len(shape) == 4 else "")
    for _ in range(2):
        res = measure_interleaved(fns, budget=0.3)
        print("  " + "  ".join(f"{k} {v.ms * 1e3:.0f}" for k, v in res.items()))

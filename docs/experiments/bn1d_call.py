"""BatchNorm1d 1024x256: the layer's call, torch's, and normkit's kernel alone (into existing
outputs), as `normkit bench` builds them, timed three ways: interleaved with the floor's
primitives as the bench does, the three peers interleaved alone, and each in a tight loop.
Median µs. Usage: bn1d_call.py [train_fwd|bwd]"""
import os
import sys

import torch

from normkit.bench.cases import Case
from normkit.bench.floor import primitive_callables
from normkit.bench.peers import make_callables
from normkit.bench.timing import measure_interleaved

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median_time import median_time  # noqa: E402

torch.set_num_threads(2)
case = Case("BatchNorm1d", (1024, 256), "contiguous", sys.argv[1] if len(sys.argv) > 1 else "train_fwd")
fns = make_callables(case, ("normkit", "torch", "kernel"))
with_floor = dict(fns)
with_floor.update(primitive_callables(case))
for _ in range(2):
    res = measure_interleaved(with_floor, budget=0.25)
    print("bench-like:", "  ".join(f"{k} {v.ms * 1e3:.0f} us" for k, v in res.items() if not k.startswith("floor")))
    res = measure_interleaved(fns, budget=0.25)
    print("three peers:", "  ".join(f"{k} {v.ms * 1e3:.0f} us" for k, v in res.items()))
    print("tight loops:", "  ".join(f"{k} {median_time(f, 2000, 100) * 1e6:.0f} us" for k, f in fns.items()))

"""The two-pass backward (channels innermost: BatchNorm1d, channels-last) against the
bench's floor for a backward, and each of its passes against the floor's primitive that
moves the same bytes: the paired sums (reading dy and x) against two torch.sum reads, the
element pass (reading dy and x, writing dx) against torch.add(x, dy, out=). The floor
(normkit.bench.floor) is 2 reads + the add: four reads and a write, the two passes'
own traffic. Medians in ms of interleaved rounds (normkit.bench.timing), two threads.
Usage: bwd_floor.py PxC [PxC ...]"""
import sys

import numpy as np
import torch

from normkit.kernels import norm
from normkit.kernels.stream import aligned_empty
from normkit.bench.timing import measure_interleaved

torch.set_num_threads(2)
for spec in sys.argv[1:]:
    P, C = (int(v) for v in spec.split("x"))
    rng = np.random.default_rng(0)
    x = aligned_empty((P, C, 1), np.float32); x[:] = rng.standard_normal((P, C, 1), dtype=np.float32)
    dy = aligned_empty((P, C, 1), np.float32); dy[:] = rng.standard_normal((P, C, 1), dtype=np.float32)
    dx = aligned_empty((P, C, 1), np.float32); dx[:] = 0
    w = np.ones(C, np.float32)
    mean, var = norm.moments(x); rstd = norm.inv_std(var, 1e-5)
    s1, s2 = norm.grad_sums(dy, x, mean)
    tx, tdy, tout = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(dx).clone()
    fns = {
        "kernel bwd": lambda: norm.backward(dy, x, mean, rstd, w, True, dx),
        "grad_sums": lambda: norm.grad_sums(dy, x, mean),
        "grad_input": lambda: norm.grad_input(dy, x, mean, rstd, w, s1, s2, P, dx),
        "floor read": lambda: torch.sum(tx),
        "floor add": lambda: torch.add(tx, tdy, out=tout),
    }
    r = measure_interleaved(fns, budget=2.0, rounds=7)
    ms = {k: v.median * 1e3 for k, v in r.items()}
    fl = 2 * ms["floor read"] + ms["floor add"]
    print(spec, " ".join(f"{k} {v:.2f}" for k, v in ms.items()), f"floor {fl:.2f} kernel/floor {fl/ms['kernel bwd']:.2f}",
          f"sums/2reads {2*ms['floor read']/ms['grad_sums']:.2f} input/add {ms['floor add']/ms['grad_input']:.2f}")

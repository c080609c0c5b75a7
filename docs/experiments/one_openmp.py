"""The small-ResNet training step (normkit bench's model study) with torch's BN and
with normkit's, and which OpenMP runtimes the process holds.

torch ships its own libgomp (torch/lib/libgomp.so.1); Numba's omp threading layer
links the system's (libgomp.so.1.0.0). Two runtimes mean two thread pools whose
idle workers spin on the same cores. Run it twice:

    .venv/bin/python docs/experiments/one_openmp.py
    LD_PRELOAD=$(ldconfig -p | awk '/libgomp.so.1 /{print $NF; exit}') .venv/bin/python docs/experiments/one_openmp.py

With the system's libgomp preloaded, torch's request for libgomp.so.1 is served by
it (same soname) and Numba's by the same file: one runtime, one pool."""
import sys

import torch

from normkit.bench.model import training_step

torch.set_num_threads(2)
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    t = training_step(budget=1.5)
    print("torch BN %.2f ms  normkit BN %.2f ms  x %.2f" % (
        t["torch"].median * 1e3, t["normkit"].median * 1e3, t["torch"].median / t["normkit"].median), flush=True)
print("OpenMP runtimes loaded:", sorted({line.split()[-1] for line in open("/proc/self/maps") if "gomp" in line}))

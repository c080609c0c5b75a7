"""LayerNorm's fused backward (``kernels.rowwise.row_backward``) on sizes that give it two
or three row tasks (``R*D`` from 2x to 3x ``TASK_ELEMS``), whose per-task column sums then
run at once on neighbouring memory. Run at two commits (``run_at.py``) to compare.
Usage: ln_tasks.py [rounds]"""
import sys, time
import numpy as np
from normkit.kernels import rowwise

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
for R, D in [(128, 512), (64, 1024), (96, 768), (256, 384)]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((R, D), dtype=np.float32)
    dy = rng.standard_normal((R, D), dtype=np.float32)
    w = np.ones(D, np.float32)
    mean = x.mean(axis=1, dtype=np.float64)
    rstd = 1.0 / np.sqrt(x.var(axis=1, dtype=np.float64) + 1e-5)
    dx = np.empty_like(x)
    f = lambda: rowwise.row_backward(dy, x, mean, rstd, w, dx)
    for _ in range(50):
        f()
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(500):
            f()
        times.append((time.perf_counter() - t) / 500)
    print(f"{R}x{D} tasks {rowwise.backward_tasks(R, D)}: median {np.median(times) * 1e6:.1f} us, min {min(times) * 1e6:.1f} us", flush=True)

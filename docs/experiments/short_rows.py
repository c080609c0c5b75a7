"""Short-run backward: the per-channel-block form against the per-channel form as the
number of rows P (runs per channel) shrinks, at one size (12.8 MB float32). P = 1 is
InstanceNorm's view (one run per instance); P = 32 is BatchNorm on a batch of 32.
Usage: short_rows.py [L ...] (default 49 196). Minimum of 15 calls, two threads."""
import sys, time
import numpy as np
from normkit.kernels import fused, norm
from normkit.kernels.stream import streams


def best(f, n=15):
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3


rng = np.random.default_rng(0)
for L in [int(v) for v in sys.argv[1:]] or [49, 196]:
    for P in (1, 2, 4, 8, 16, 24, 32):
        C = 32 * 2048 * 49 // (P * L)
        x = rng.standard_normal((P, C, L), dtype=np.float32)
        dy = rng.standard_normal((P, C, L), dtype=np.float32)
        dx = np.empty_like(x)
        w = np.ones(C, np.float32)
        mean, rstd = np.zeros(C), np.ones(C)
        cb = max(1, -(-norm.SHORT_BACKWARD_COLS // L))
        nt = streams(dx.nbytes)
        blocks = best(lambda: fused.block_backward_par(dy, x, mean, rstd, w, True, dx, True, cb, nt))
        channels = best(lambda: fused.channel_backward_par(dy, x, mean, rstd, w, True, dx, True, nt))
        print(f"L={L} P={P:2d} C={C:5d}  blocks {blocks:.2f} ms  per-channel {channels:.2f} ms  ratio {blocks / channels:.2f}")

"""The element passes' segments pattern against their rows pattern on NCHW views with long
runs: norm.apply_coefficients (the forward/eval pass, one operand) and
norm.apply_coefficients2 (the backward's, two operands), each through the pattern the
library picks for L below reduce.CHUNK (segments) and through the rows pattern, forced by
setting reduce.CHUNK = L for the call (one run per task). torch.mul / torch.add into
existing memory move the same bytes. Outputs under stream.STREAM_MIN_BYTES take ordinary
stores, larger ones stream. Arrays on cache lines; medians in us of interleaved rounds
(normkit.bench.timing), two threads.
Usage: segments_rows.py PxCxL [PxCxL ...]"""
import sys

import numpy as np
import torch

from normkit.bench.timing import measure_interleaved
from normkit.kernels import norm, reduce
from normkit.kernels.stream import aligned_empty

torch.set_num_threads(2)


def forced_rows(fn, L):
    def call():
        old = reduce.CHUNK
        reduce.CHUNK = L
        try:
            fn()
        finally:
            reduce.CHUNK = old
    return call


for spec in sys.argv[1:]:
    P, C, L = (int(v) for v in spec.split("x"))
    rng = np.random.default_rng(0)
    x, dy, out = (aligned_empty((P, C, L), np.float32) for _ in range(3))
    x[:] = rng.standard_normal(x.shape, dtype=np.float32)
    dy[:] = rng.standard_normal(x.shape, dtype=np.float32)
    v = [rng.standard_normal(C).astype(np.float32) for _ in range(4)]
    one = lambda: norm.apply_coefficients(x, v[0], v[1], v[2], out)  # noqa: E731
    two = lambda: norm.apply_coefficients2(dy, x, v[0], v[1], v[2], v[3], out)  # noqa: E731
    one()
    want1 = out.copy()
    forced_rows(one, L)()
    assert np.array_equal(out, want1)
    tx, tdy, to = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(out)
    fns = {"pass, segments": one, "pass, rows": forced_rows(one, L), "torch.mul": lambda: torch.mul(tx, 2.0, out=to),
           "pass2, segments": two, "pass2, rows": forced_rows(two, L), "torch.add": lambda: torch.add(tx, tdy, out=to)}
    r = {k: t.median * 1e6 for k, t in measure_interleaved(fns, budget=1.0).items()}
    print(f"{spec} ({x.nbytes / 1e6:.1f} MB): " + "  ".join(f"{k} {t:.1f}" for k, t in r.items())
          + f"  | rows x{r['pass, segments'] / r['pass, rows']:.2f}, x{r['pass2, segments'] / r['pass2, rows']:.2f}")

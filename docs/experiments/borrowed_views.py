"""The channels-last element pass (y = (x - m) * a + b over the rows of an (N, C) matrix,
coefficients per column) in five forms, in one process, interleaved rounds, two threads,
each worker a contiguous half of the rows:

* views, call:      each row through Numba slices (x[r], out[r], and slices of m, a, b),
                    the row's body a compiled call (the library's form before views.py);
* views, inlined:   the same slices, the body inlined;
* borrowed, call:   views.borrow (no reference count), the body a compiled call;
* borrowed, inlined: views.borrow and the body inlined (the library's form since);
* tiled rows:       borrowed and inlined, but REPS rows per sweep over coefficients tiled
                    REPS times (the library's form for streamed narrow rows).

NT=1 in the environment: streaming stores (else ordinary ones). Every array starts on a
cache line. Medians in us.
Usage: [NT=1] borrowed_views.py N C [N C ...]"""
import os
import sys

import numba
import numpy as np
from numba import prange

from normkit.bench.timing import measure_interleaved
from normkit.kernels.reduce import expand
from normkit.kernels.stream import aligned_empty, fence, stream_map
from normkit.kernels.views import borrow

numba.set_num_threads(2)
NT = int(os.environ.get("NT", "0"))


@numba.njit(inline="always")
def body_inlined(xr, o, m, a, b, nt):
    stream_map("0 1 - 2 * 3 +", o, (xr, m, a, b), nt)


@numba.njit(inline="never")
def body_call(xr, o, m, a, b, nt):
    stream_map("0 1 - 2 * 3 +", o, (xr, m, a, b), nt)


def make(body, borrowed):
    @numba.njit(parallel=True)
    def run(x, m, a, b, out, nt):
        P, W = x.shape
        for t in prange(2):
            for r in range(t * P // 2, (t + 1) * P // 2):
                if borrowed:
                    body(borrow(x, r * W, W), borrow(out, r * W, W), m, a, b, nt)
                else:
                    body(x[r, 0:W], out[r, 0:W], m[0:W], a[0:W], b[0:W], nt)
            fence(nt)
    return run


@numba.njit(parallel=True)
def tiled(x, m, a, b, out, nt):
    P, W = x.shape
    reps = max(1, 1024 // W)
    for t in prange(2):
        mw = expand(m, 0, W, 1, x.dtype, reps)
        aw = expand(a, 0, W, 1, x.dtype, reps)
        bw = expand(b, 0, W, 1, x.dtype, reps)
        r1 = (t + 1) * P // 2
        for r in range(t * P // 2, r1, reps):
            n = (min(r1, r + reps) - r) * W
            body_inlined(borrow(x, r * W, n), borrow(out, r * W, n), mw[:n], aw[:n], bw[:n], nt)
        fence(nt)


forms = {"views, call": make(body_call, False), "views, inlined": make(body_inlined, False),
         "borrowed, call": make(body_call, True), "borrowed, inlined": make(body_inlined, True), "tiled rows": tiled}
args = [int(v) for v in sys.argv[1:]]
for N, C in zip(args[::2], args[1::2]):
    rng = np.random.default_rng(0)
    x = aligned_empty((N, C), np.float32)  # inputs and outputs on a cache line (out_align.py)
    x[:] = rng.standard_normal((N, C), dtype=np.float32)
    m, a, b = (rng.standard_normal(C, dtype=np.float32) for _ in range(3))
    ref = (x - m) * a + b
    outs = {k: aligned_empty((N, C), np.float32) for k in forms}
    for k, f in forms.items():
        f(x, m, a, b, outs[k], NT)
        assert np.allclose(outs[k], ref, rtol=1e-6, atol=1e-6), k
    fns = {k: (lambda f=f, o=outs[k]: f(x, m, a, b, o, NT)) for k, f in forms.items()}
    print(f"{N}x{C} (nt={NT})")
    for _ in range(3):
        res = measure_interleaved(fns, budget=0.3)
        print("  " + "   ".join(f"{k} {v.ms * 1e3:.0f}" for k, v in res.items()))

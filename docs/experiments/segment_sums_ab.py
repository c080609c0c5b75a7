"""Forms of stream.segment_sums in one process, alternating: this tree's and the one in
OLD_TREE/normkit/kernels/stream.py (loaded under another module name). One thread, data in
cache (an InstanceNorm-like run of 2,048 segments of L values), forward form (u = v, array
shifts) and backward form (u = dy, shift 0; v = x, array shifts). Median us per call over
rounds. Usage: segment_sums_ab.py OLD_TREE"""
import importlib.util
import sys
import time

import numpy as np
from numba import njit

from normkit.kernels._jit import FASTMATH
from normkit.kernels import stream as new_stream

spec = importlib.util.spec_from_file_location("normkit.kernels._old_stream", sys.argv[1] + "/normkit/kernels/stream.py")
old_stream = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old_stream)


def make(seg_sums, moments=False):
    @njit(fastmath=FASTMATH)
    def fwd(x, shift, s1, s2, L):
        s1[:] = 0.0
        s2[:] = 0.0
        if moments:  # the moments form: v and b None (where the tree has it)
            seg_sums(x, None, shift, None, L, s1, s2)
        else:
            seg_sums(x, x, shift, shift, L, s1, s2)

    @njit(fastmath=FASTMATH)
    def bwd(g, x, mean, s1, s2, L):
        s1[:] = 0.0
        s2[:] = 0.0
        seg_sums(g, x, 0.0, mean, L, s1, s2)
    return fwd, bwd


forms = {"old": make(old_stream.segment_sums), "new": make(new_stream.segment_sums),
         "new, moments form": make(new_stream.segment_sums, moments=True)}


def tm(f, n=200):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


for L in (49, 196, 16, 3136):
    S = 2048 if L < 1000 else 128
    rng = np.random.default_rng(0)
    x = rng.standard_normal(S * L).astype(np.float32)
    g = rng.standard_normal(S * L).astype(np.float32)
    shift = x[::L].astype(np.float64)
    res = {(k, d): [] for k in forms for d in ("fwd", "bwd")}
    got = {}
    for _ in range(7):
        for k, (fwd, bwd) in forms.items():
            s1, s2 = np.empty(S), np.empty(S)
            res[k, "fwd"].append(tm(lambda: fwd(x, shift, s1, s2, L)))
            got[k, "fwd"] = (s1.copy(), s2.copy())
            res[k, "bwd"].append(tm(lambda: bwd(g, x, shift, s1, s2, L)))
            got[k, "bwd"] = (s1.copy(), s2.copy())
    same = all(np.array_equal(got[k, d][i], got["old", d][i]) for k in forms for d in ("fwd", "bwd") for i in range(2))
    print("L=%d (%d segments): " % (L, S) + " | ".join(
        "%s: forward %.1f backward %.1f us" % (k, np.median(res[k, "fwd"]), np.median(res[k, "bwd"])) for k in forms)
        + " | results identical to old: %s" % same, flush=True)

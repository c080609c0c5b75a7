"""stream.segment_map against its ceiling and an older form, in one process, one thread,
data in cache: runs of S segments of L float32 values, AFFINE (x - m)*a + b with three
per-segment coefficient arrays, and the backward element pass AFFINE2 with four. The
ceiling is stream_map with the coefficients as numbers (no per-segment work at all).
Each TREE given adds that tree's segment_map (its normkit/kernels/stream.py loaded under
another module name) alongside this tree's. Median us per call over rounds.
STREAMED=1 in the environment: the streamed cases only (with 784-value segments).
Usage: segment_map_ab.py [TREE ...]"""
import importlib.util
import os
import sys
import time

import numba
import numpy as np
from numba import njit

from normkit.kernels._jit import FASTMATH
from normkit.kernels import stream as new_stream

numba.set_num_threads(1)
mods = {}
for t, tree in enumerate(sys.argv[1:]):
    spec = importlib.util.spec_from_file_location(f"normkit.kernels._stream{t}", tree + "/normkit/kernels/stream.py")
    mods[tree] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mods[tree])
mods["this tree"] = new_stream

AFFINE = "0 1 - 2 * 3 +"
AFFINE2 = "0 2 * 1 4 - 3 * + 5 +"


def make(mod):
    seg_map = mod.segment_map

    @njit(fastmath=FASTMATH)
    def fwd(x, out, m, a, b, L, reps, nt):
        for _ in range(reps):
            seg_map(AFFINE, out, (x,), (m, a, b), L, nt)
        mod.fence(nt)

    @njit(fastmath=FASTMATH)
    def bwd(g, x, out, a, q, m, k, L, reps, nt):
        for _ in range(reps):
            seg_map(AFFINE2, out, (g, x), (a, q, m, k), L, nt)
        mod.fence(nt)
    return fwd, bwd


st = new_stream.stream_map


@njit(fastmath=FASTMATH)
def ceil_fwd(x, out, m, a, b, L, reps, nt):
    for _ in range(reps):
        st(AFFINE, out, (x, m[0], a[0], b[0]), nt)
    new_stream.fence(nt)


@njit(fastmath=FASTMATH)
def ceil_bwd(g, x, out, a, q, m, k, L, reps, nt):
    for _ in range(reps):
        st(AFFINE2, out, (g, x, a[0], q[0], m[0], k[0]), nt)
    new_stream.fence(nt)


forms = {name: make(mod) for name, mod in mods.items()}
forms["ceiling (numbers)"] = (ceil_fwd, ceil_bwd)


def tm(f, reps):
    t0 = time.perf_counter()
    f(reps)
    return (time.perf_counter() - t0) / reps * 1e6


# in cache with ordinary stores; then 6.4-12.8 MB runs with streaming stores (as the
# kernels write outputs of 4-32 MB)
cases = [(16, 2048, False), (49, 2048, False), (64, 2048, False), (196, 2048, False), (3136, 128, False),
         (49, 32768, True), (196, 8192, True), (3136, 1024, True)]
if os.environ.get("STREAMED"):  # STREAMED=1: the streamed runs only, 784 added
    cases = [(49, 32768, True), (196, 8192, True), (784, 2048, True), (3136, 1024, True)]
for L, S, nt in cases:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(S * L).astype(np.float32)
    g = rng.standard_normal(S * L).astype(np.float32)
    co = [rng.standard_normal(S).astype(np.float32) for _ in range(4)]
    outs = {}
    res = {(k, d): [] for k in forms for d in ("fwd", "bwd")}
    for k, (f, b) in forms.items():
        o = np.empty_like(x)
        f(x, o, co[0], co[1], co[2], L, 1, nt)
        o2 = np.empty_like(x)
        b(g, x, o2, co[0], co[1], co[2], co[3], L, 1, nt)
        outs[k] = (o, o2)
    for k in mods:
        if len(mods) > 1:
            assert np.array_equal(outs[k][0], outs["this tree"][0]) and np.array_equal(outs[k][1], outs["this tree"][1]), k
    reps = max(1, int(2e7 // (S * L)))
    for _ in range(9):
        for k, (f, b) in forms.items():
            o = np.empty_like(x)
            res[k, "fwd"].append(tm(lambda r: f(x, o, co[0], co[1], co[2], L, r, nt), reps))
            res[k, "bwd"].append(tm(lambda r: b(g, x, o, co[0], co[1], co[2], co[3], L, r, nt), reps))
    print(f"L={L} S={S} ({S * L * 4 / 1e6:.1f} MB per operand){' streamed' if nt else ''}")
    for k in forms:
        print(f"  {k:20s} fwd {np.median(res[k, 'fwd']):8.1f} us   bwd {np.median(res[k, 'bwd']):8.1f} us")

"""The register tiles' additions moved onto the FMA units: does the columns pattern's
statistics pass gain when `s1 += d` is computed as fma(d, 1, s1) (BALANCE=1), and also
the shift `x - k` as fma(k, -1, x) (BALANCE=2), instead of vector adds? Both give the
same bits (one rounding either way); the 1 and -1 come through an empty inline asm so
LLVM cannot fold the FMAs back into adds. The forms are built from this tree's
normkit/kernels/tiles.py by editing its source text in memory. Forward moments
(MOMENTS=1) or the backward's paired sums; two threads, row tasks as reduce._sums for
L == 1, interleaved rounds (normkit.bench.timing.measure_interleaved), median us.
Usage: [MOMENTS=1] tile_fma.py PxC ..."""
import importlib.util
import os
import sys
import types

import numpy as np
from numba import njit, prange

import normkit.kernels.tiles as tiles_module
from normkit.bench.timing import measure_interleaved
from normkit.kernels.tiles import TILE

SOURCE = open(tiles_module.__file__).read()
EDITS = [
    ("        acc1 = [cgutils.alloca_once(builder, vd) for _ in range(VECTORS)]",
     """        acc1 = [cgutils.alloca_once(builder, vd) for _ in range(VECTORS)]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vd, [vd, vd, vd]), "llvm.fma.v8f64")

        def opaque(val):
            return builder.asm(ir.FunctionType(vd, [vd]), "", "=v,0", [ir.Constant(vd, [val] * LANES)], False)

        one = opaque(1.0)
        mone = opaque(-1.0)"""),
    ("""                    d = builder.fsub(row_vector(ub, ustride, r, cols[k]), ks[k], flags=_FLAGS)""",
     """                    if BALANCE >= 2:
                        d = builder.call(fma, [ks[k], mone, row_vector(ub, ustride, r, cols[k])])
                    else:
                        d = builder.fsub(row_vector(ub, ustride, r, cols[k]), ks[k], flags=_FLAGS)"""),
    ("""                    builder.store(builder.fadd(builder.load(acc1[k]), d, flags=_FLAGS), acc1[k])""",
     """                    if BALANCE >= 1:
                        builder.store(builder.call(fma, [d, one, builder.load(acc1[k])]), acc1[k])
                    else:
                        builder.store(builder.fadd(builder.load(acc1[k]), d, flags=_FLAGS), acc1[k])"""),
]


def tile_sums_with(balance):
    text = SOURCE
    for old, new in EDITS:
        assert old in text, old
        text = text.replace(old, new)
    module = types.ModuleType(f"tiles_balance{balance}")
    module.__dict__["BALANCE"] = balance
    exec(compile(text, tiles_module.__file__, "exec"), module.__dict__)
    return module.tile_sums


FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
SQUARE = os.environ.get("MOMENTS") == "1"


def make(ts):
    def sums(g, x, gs, xs, s1, s2):
        P, C = x.shape
        tasks = min(16, max(1, P), max(1, (P * C) // 65536))
        p1 = np.zeros((tasks, C + 512))
        p2 = np.zeros((tasks, C + 512))
        for t in prange(tasks):
            a1 = p1[t, :C]
            a2 = p2[t, :C]
            r0 = t * P // tasks
            r1 = (t + 1) * P // tasks
            for rb in range(r0, r1, 16):
                if SQUARE:
                    ts(g, None, gs, None, rb, min(rb + 16, r1), 0, C // TILE, a1, a2)
                else:
                    ts(g, x, gs, xs, rb, min(rb + 16, r1), 0, C // TILE, a1, a2)
        s1[:] = p1[:, :C].sum(axis=0)
        s2[:] = p2[:, :C].sum(axis=0)
    return njit(parallel=True, fastmath=FM)(sums)


forms = {b: make(tile_sums_with(b)) for b in (0, 1, 2)}
rng = np.random.default_rng(0)
for P, C in [tuple(int(v) for v in a.split("x")) for a in sys.argv[1:]]:
    x = (rng.standard_normal((P, C)) + 3).astype(np.float32)
    g = x if SQUARE else rng.standard_normal((P, C)).astype(np.float32)
    gs = x[0].astype(np.float64) if SQUARE else np.zeros(C)
    xs = x.mean(axis=0).astype(np.float64)
    results = {}
    for b, f in forms.items():
        s1, s2 = np.empty(C), np.empty(C)
        f(g, x, gs, xs, s1, s2)
        results[b] = (s1, s2)
    same = all(np.array_equal(results[0][i], results[b][i]) for b in (1, 2) for i in (0, 1))
    s1, s2 = np.empty(C), np.empty(C)
    fns = {f"balance {b}": (lambda f=f: f(g, x, gs, xs, s1, s2)) for b, f in forms.items()}
    for _ in range(2):
        res = measure_interleaved(fns, budget=0.5, rounds=15)
        print(f"{P}x{C} {'moments' if SQUARE else 'paired sums'}, bitwise the same: {same}  "
              + "  ".join(f"{k} {v.ms * 1e3:.0f} us" for k, v in res.items()), flush=True)

"""The columns pattern's two-rows-per-sweep statistics with 8-lane float64 vectors (zmm),
written as LLVM IR through a Numba intrinsic (LLVM's loop vectoriser picks 4-lane ymm
vectors on this CPU; explicit <8 x double> IR is emitted as zmm, as in
stream.segment_sums), against reduce.sums_par (the same loop, vectorised by LLVM).
Median us of three alternating rounds, the largest relative error of sum((x - K)^2)
against float64 NumPy, and the zmm sweep's packed instructions by register width (reduce's
own sweep: ymm only, `col_asm.py`; Numba will not inspect code loaded from its cache).
Usage: col_zmm.py [FIRST_SHAPE_INDEX]"""
import collections
import re
import sys
import time

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from normkit.kernels import reduce

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
FLAGS = ("contract", "reassoc")
LANES = 8


@intrinsic
def sweep2(typingctx, x0, x1, k, a1, a2):
    """a1[j] += (x0[j] - k[j]) + (x1[j] - k[j]); a2[j] += (x0[j] - k[j])^2 + (x1[j] - k[j])^2,
    for j < len(k), in <8 x double> vectors and a scalar tail."""
    sig = types.void(x0, x1, k, a1, a2)

    def codegen(context, builder, signature, args):
        ft = context.get_data_type(x0.dtype)
        f64 = ir.DoubleType()
        intp = context.get_value_type(types.intp)
        vf = ir.VectorType(ft, LANES)
        vd = ir.VectorType(f64, LANES)
        p0, p1, pk, q1, q2 = (context.make_array(t)(context, builder, v).data for t, v in zip(signature.args, args))
        n = builder.extract_value(context.make_array(k)(context, builder, args[2]).shape, 0)
        full = builder.sub(n, builder.srem(n, ir.Constant(intp, LANES)))

        def terms(i, vt, xt):
            def load(p, t):
                return builder.load(builder.bitcast(builder.gep(p, [i]), t.as_pointer()), align=4)
            kk = load(pk, vt)
            d0 = builder.fsub(builder.fpext(load(p0, xt), vt) if ft != f64 else load(p0, xt), kk, flags=FLAGS)
            d1 = builder.fsub(builder.fpext(load(p1, xt), vt) if ft != f64 else load(p1, xt), kk, flags=FLAGS)
            for p, val in ((q1, builder.fadd(d0, d1, flags=FLAGS)),
                           (q2, builder.fadd(builder.fmul(d0, d0, flags=FLAGS), builder.fmul(d1, d1, flags=FLAGS),
                                             flags=FLAGS))):
                ptr = builder.bitcast(builder.gep(p, [i]), vt.as_pointer())
                builder.store(builder.fadd(builder.load(ptr, align=8), val, flags=FLAGS), ptr, align=8)

        with cgutils.for_range_slice(builder, ir.Constant(intp, 0), full, ir.Constant(intp, LANES)) as (i, _):
            terms(i, vd, vf)
        with cgutils.for_range_slice(builder, full, n, ir.Constant(intp, 1)) as (i, _):
            terms(i, f64, ft)
        return context.get_dummy_value()

    return sig, codegen


@njit(fastmath=FM)
def rows_zmm(u, kw, r0, r1, j0, nj, a1, a2):
    r = r0
    while r + 2 <= r1:
        sweep2(u[r, j0:j0 + nj], u[r + 1, j0:j0 + nj], kw, a1, a2)
        r += 2
    if r < r1:
        ur = u[r, j0:j0 + nj]
        for j in range(nj):
            d = ur[j] - kw[j]
            a1[j] += d
            a2[j] += d * d


@njit(parallel=True, fastmath=FM)
def moments_zmm(u, us, s1, s2):  # reduce._sums' task split for L == 1
    P, C, L = u.shape
    u2 = u.reshape(P, C)
    row_tasks = min(16, max(1, P), max(1, (P * C) // 65536))
    nblocks = max(1, (C + 1023) // 1024)
    tasks = row_tasks * nblocks
    p1 = np.empty((tasks, min(1024, C) + 512))
    p2 = np.empty((tasks, min(1024, C) + 512))
    for t in prange(tasks):
        tr = t // nblocks
        j0 = (t % nblocks) * 1024
        nj = min(1024, C - j0)
        a1 = p1[t, :nj]
        a2 = p2[t, :nj]
        a1[:] = 0.0
        a2[:] = 0.0
        rows_zmm(u2, us[j0:j0 + nj], tr * P // row_tasks, (tr + 1) * P // row_tasks, j0, nj, a1, a2)
    s1[:] = 0.0
    s2[:] = 0.0
    for t in range(tasks):
        j0 = (t % nblocks) * 1024
        for j in range(min(1024, C - j0)):
            s1[j0 + j] += p1[t, j]
            s2[j0 + j] += p2[t, j]


def current(u, us, s1, s2):
    reduce.sums_par(u, u, us, us, s1, s2, reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS,
                    reduce.COL_TASKS_MAX, True)


def serial_now(u, us, s1, s2):
    reduce.sums_ser(u, u, us, us, s1, s2, reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS,
                    reduce.COL_TASKS_MAX, True)


@njit(fastmath=FM)
def serial_zmm(u, us, s1, s2):
    P, C, L = u.shape
    s1[:] = 0.0
    s2[:] = 0.0
    rows_zmm(u.reshape(P, C), us, 0, P, 0, C, s1, s2)


FORMS = {"ymm (now)": current, "zmm": moments_zmm, "one thread, ymm": serial_now, "one thread, zmm": serial_zmm}


def tm(f, n=60):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


SHAPES = [(1024, 256), (512, 1000), (1568, 2048), (6272, 1024), (25088, 512), (100352, 256)]
for P, C in SHAPES[int(sys.argv[1]) if len(sys.argv) > 1 else 0:]:
    x = (np.random.default_rng(0).standard_normal((P, C, 1)) + 3).astype(np.float32)
    shift = x[0, :, 0].astype(np.float64)
    ref = ((x[:, :, 0].astype(np.float64) - shift) ** 2).sum(0)
    res = {k: [] for k in FORMS}
    err = {}
    for _ in range(3):
        for k, f in FORMS.items():
            s1, s2 = np.empty(C), np.empty(C)
            res[k].append(tm(lambda: f(x, shift, s1, s2)))
            err[k] = np.abs(s2 / ref - 1).max()
    print("%6dx%-5d " % (P, C) + "  ".join("%s %.0f us (err %.0e)" % (k, np.median(v), err[k]) for k, v in res.items()),
          flush=True)

asm = "\n".join(rows_zmm.inspect_asm().values())
width = collections.Counter(re.findall(r"\bv(?:add|sub|fmadd\w*|mul|cvtps2)p[sd]\s+[^\n]*?([xyz]mm)", asm))
print("zmm sweep, packed arithmetic by register:", dict(width))

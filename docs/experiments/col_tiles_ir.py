"""The columns pattern's forward statistics with register tiles written as LLVM IR: a
tile of 32 columns keeps its sums in eight <8 x double> registers (four per sum) down a
block of R rows, then adds them to the memory accumulators -- one load and store of
them per R rows instead of one per two rows (reduce._col_rows_sq, vectorised by LLVM).
Plain Numba could not express this: LLVM vectorised its row loop with gathers
(col_tiles.py). Against reduce.sums_par / sums_ser on (P, C) float32 (BatchNorm1d, or
channels-last with C channels per row), the same task split for the parallel form.
Median us of alternating rounds, and the largest relative error of sum((x - K)^2)
against float64 NumPy. Usage: col_tiles_ir.py [R ...]"""
import sys
import time

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from normkit.kernels import reduce
from normkit.kernels.reduce import _col_rows_sq

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
FLAGS = ("contract", "reassoc")
LANES = 8
VECS = 4  # vectors per sum in a tile
TILE = LANES * VECS


@intrinsic
def tile_rows(typingctx, u, kw, r0, r1, j0, ntiles, a1, a2):
    """For each tile t < ntiles of TILE columns from j0 of the 2-D array u, rows r0 .. r1:
    a1[t*TILE + j] += sum_r (u[r, j0 + t*TILE + j] - kw[t*TILE + j]), a2 the squares, the
    tile's sums in registers across the rows."""
    sig = types.void(u, kw, types.intp, types.intp, types.intp, types.intp, a1, a2)

    def codegen(context, builder, signature, args):
        u_v, kw_v, r0_v, r1_v, j0_v, nt_v, a1_v, a2_v = args
        ft = context.get_data_type(u.dtype)
        isz = context.get_abi_sizeof(ft)
        f64 = ir.DoubleType()
        intp = context.get_value_type(types.intp)
        i8p = ir.IntType(8).as_pointer()
        vf = ir.VectorType(ft, LANES)
        vd = ir.VectorType(f64, LANES)
        uary = context.make_array(u)(context, builder, u_v)
        stride = builder.extract_value(uary.strides, 0)
        base = builder.bitcast(uary.data, i8p)
        pk = context.make_array(kw)(context, builder, kw_v).data
        p1 = context.make_array(a1)(context, builder, a1_v).data
        p2 = context.make_array(a2)(context, builder, a2_v).data
        acc1 = [cgutils.alloca_once(builder, vd) for _ in range(VECS)]
        acc2 = [cgutils.alloca_once(builder, vd) for _ in range(VECS)]
        zero = ir.Constant(intp, 0)
        one = ir.Constant(intp, 1)

        def vec(ptr, i, vt, align):
            return builder.bitcast(builder.gep(ptr, [i]), vt.as_pointer())

        with cgutils.for_range(builder, nt_v) as tl:
            t0 = builder.mul(tl.index, ir.Constant(intp, TILE))
            ks = []
            for v in range(VECS):
                i = builder.add(t0, ir.Constant(intp, v * LANES))
                ks.append(builder.load(vec(pk, i, vd, 8), align=8))
                builder.store(builder.load(vec(p1, i, vd, 8), align=8), acc1[v])
                builder.store(builder.load(vec(p2, i, vd, 8), align=8), acc2[v])
            col = builder.add(j0_v, t0)
            with cgutils.for_range_slice(builder, r0_v, r1_v, one) as (r, _):
                row = builder.bitcast(builder.gep(base, [builder.mul(r, stride)]), ft.as_pointer())
                for v in range(VECS):
                    x = builder.load(vec(row, builder.add(col, ir.Constant(intp, v * LANES)), vf, isz), align=isz)
                    d = builder.fsub(builder.fpext(x, vd) if ft != f64 else x, ks[v], flags=FLAGS)
                    builder.store(builder.fadd(builder.load(acc1[v]), d, flags=FLAGS), acc1[v])
                    builder.store(builder.fadd(builder.load(acc2[v]), builder.fmul(d, d, flags=FLAGS), flags=FLAGS),
                                  acc2[v])
            for v in range(VECS):
                i = builder.add(t0, ir.Constant(intp, v * LANES))
                builder.store(builder.load(acc1[v]), vec(p1, i, vd, 8), align=8)
                builder.store(builder.load(acc2[v]), vec(p2, i, vd, 8), align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit(fastmath=FM)
def tile_block(u, kw, r0, r1, j0, nj, a1, a2, R):
    """Rows r0 .. r1 of columns j0 .. j0 + nj in blocks of R rows: whole tiles in registers,
    the columns after the last whole tile as reduce does."""
    nt = nj // TILE
    full = nt * TILE
    for rb in range(r0, r1, R):
        re_ = min(rb + R, r1)
        tile_rows(u, kw, rb, re_, j0, nt, a1, a2)
    if full < nj:
        _col_rows_sq(u, kw[full:nj], r0, r1, j0 + full, nj - full, a1[full:nj], a2[full:nj])


def make_moments(R, parallel):
    def moments_tiles(u, us, s1, s2):  # reduce._sums' columns split for L == 1
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
            tile_block(u2, us[j0:j0 + nj], tr * P // row_tasks, (tr + 1) * P // row_tasks, j0, nj, a1, a2, R)
        s1[:] = 0.0
        s2[:] = 0.0
        for t in range(tasks):
            j0 = (t % nblocks) * 1024
            for j in range(min(1024, C - j0)):
                s1[j0 + j] += p1[t, j]
                s2[j0 + j] += p2[t, j]
    return njit(parallel=parallel, fastmath=FM)(moments_tiles)


def current(u, us, s1, s2):
    reduce.sums_par(u, u, us, us, s1, s2, reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS,
                    reduce.COL_TASKS_MAX, True)


def serial_now(u, us, s1, s2):
    reduce.sums_ser(u, u, us, us, s1, s2, reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS,
                    reduce.COL_TASKS_MAX, True)


Rs = [int(a) for a in sys.argv[1:]] or [16, 64]
FORMS = {"two threads, now": current}
FORMS.update({f"two threads, tiles R={R}": make_moments(R, True) for R in Rs})
FORMS["one thread, now"] = serial_now
FORMS.update({f"one thread, tiles R={R}": make_moments(R, False) for R in Rs})


def tm(f, n=40):
    for _ in range(3):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e6


SHAPES = [(1024, 256), (8192, 512), (1568, 2048), (25088, 256), (25088, 512), (100352, 256)]
for P, C in SHAPES:
    x = (np.random.default_rng(0).standard_normal((P, C, 1)) + 3).astype(np.float32)
    shift = x[0, :, 0].astype(np.float64)
    ref = ((x[:, :, 0].astype(np.float64) - shift) ** 2).sum(0)
    ref1 = (x[:, :, 0].astype(np.float64) - shift).sum(0)
    res = {k: [] for k in FORMS}
    err = {}
    for _ in range(3):
        for k, f in FORMS.items():
            s1, s2 = np.empty(C), np.empty(C)
            res[k].append(tm(lambda: f(x, shift, s1, s2)))
            err[k] = max(np.abs(s2 / ref - 1).max(), np.abs(s1 - ref1).max() / np.abs(ref).max())
    print(f"{P}x{C} ({P * C * 4 / 1e6:.1f} MB)")
    for k, v in res.items():
        print(f"  {k:24s} {np.median(v):9.0f} us  (err {err[k]:.0e})", flush=True)

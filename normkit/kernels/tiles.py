"""Register tiles for the columns pattern of :mod:`.reduce`.

The columns pattern sums down the rows of a ``(P, W)`` matrix, one pair of
float64 accumulators per column. Swept row by row, those accumulators live in
memory (L1): every row loads and stores them, and on these machines the stores,
not the arithmetic, bound the sweep (two rows per sweep halves them). A tile of
:data:`TILE` columns keeps its sums in registers instead -- eight 8-lane float64
vectors -- down a block of rows, and touches the memory accumulators once per
block. LLVM's loop vectoriser does not find this form from a Numba loop (it
vectorises the row loop with gathers, ``docs/experiments/col_tiles.py``), so
:func:`tile_sums` writes it as IR. A tile walks down a block of rows and the next
tile walks the same rows further right, an order the hardware's stream
prefetcher does not follow on short rows, so the tiles prefetch the next block
into L2 (:data:`LOCALITY`): each step of their row loops fetches one tile's row
of it (two lines of float32), in memory order -- the block's first row from left
to right, then the next row. Measured against the two-rows
sweep, two threads (``docs/experiments/col_tiles_sums.py``, an Intel Xeon): the
forward moments and the backward's paired sums 1.1-1.7x faster, in cache and
above it; without the prefetches the paired sums were 1.2-1.5x slower on rows
of 256 float32 columns.

Same sums as the sweep, added in another order (down each column in blocks of
rows), float64 throughout.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

__all__ = ["TILE", "TILE_ROWS", "tile_sums"]

#: Float64 lanes per vector (one 64-byte register on AVX-512; two halves elsewhere).
LANES = 8
#: Vectors per sum in a tile: with two sums, eight accumulator registers.
VECTORS = 4
#: Columns per tile.
TILE = LANES * VECTORS
#: Rows per block: the tile's sums go back to memory once per this many rows.
TILE_ROWS = 16
#: Rows from a block to the first row its prefetches fetch: the next block's. A tile
#: walks down a block of rows and then the next tile walks the same rows again further
#: right, an order the hardware's stream prefetcher does not follow on rows of 1 KB
#: (256 float32 columns). The steps of the tiles' row loops (``ntiles * TILE_ROWS``)
#: fetch the next block's lines of whole tiles in memory order, a stream the memory
#: system serves faster than the tiles' own order: the backward's paired sums
#: 1.13-1.25x faster on 16384x256, 25088x256, 8192x512 and 65536x1024, level on
#: 1568x2048 and 25088x64, the moments level (AMD EPYC, against each tile fetching
#: its own lines ``AHEAD`` rows down; ``SUMS=1 docs/experiments/kernel_ab.py``).
#: Twice as far ahead was no faster. A prefetch never faults, so the rows after the
#: last are harmless.
AHEAD = TILE_ROWS
#: The prefetches' locality hint: ``llvm.prefetch``'s 2 (x86 ``prefetcht1``: into L2, not
#: L1). A tile's rows lie a power-of-two row length apart on common channel counts, so
#: they share a few L1 sets; prefetched into L1, the next block's lines evicted the
#: block being summed. Measured on an AMD EPYC (Zen 4, 32 KiB 8-way L1) against
#: hint 3 (``docs/experiments/tile_ahead.py``): the paired sums 1.6-2.7x faster on
#: 8192x512, 16384x256, 1568x2048 and 100352x256, the moments 1.0-1.3x.
LOCALITY = 2

_FLAGS = ("contract", "reassoc")


def _check(name, arr, ndim, dtype=None):
    if not isinstance(arr, types.Array) or arr.ndim != ndim or not isinstance(arr.dtype, types.Float):
        raise TypingError(f"tile_sums: {name} must be a {ndim}-D float array, got {arr}")
    if dtype is not None and arr.dtype != dtype:
        raise TypingError(f"tile_sums: {name} must be {dtype}, got {arr}")
    if arr.layout != "C":
        raise TypingError(f"tile_sums: {name} must be C-contiguous, got {arr}")


@intrinsic
def tile_sums(typingctx, u, v, uw, vw, r0, r1, j0, ntiles, a1, a2):
    """For each tile ``t < ntiles`` of :data:`TILE` columns from column ``j0`` of the
    2-D arrays ``u`` and ``v``, over rows ``r0 .. r1``: adds ``sum_r (u[r, j] - uw[k])``
    to ``a1[k]`` and ``sum_r (u[r, j] - uw[k]) * (v[r, j] - vw[k])`` to ``a2[k]``, where
    ``j = j0 + k`` and ``k = t*TILE + i``. The shifts ``uw``, ``vw`` and the sums are
    float64 vectors indexed from the first tile's first column. ``v`` and ``vw`` both
    None: the forward moments (``v = u``, ``vw = uw``), each value loaded once. The
    caller bounds the rows (:data:`TILE_ROWS` at a time) and sums the columns after
    the last whole tile itself."""
    square = isinstance(v, types.NoneType)
    if square != isinstance(vw, types.NoneType):
        raise TypingError(f"tile_sums: v and vw must both be None (the moments) or neither, got {v} and {vw}")
    _check("u", u, 2)
    if not square:
        _check("v", v, 2, u.dtype)
    for name, arr in (("uw", uw), ("a1", a1), ("a2", a2)) + (() if square else (("vw", vw),)):
        _check(name, arr, 1, types.float64)
    for name, val in (("r0", r0), ("r1", r1), ("j0", j0), ("ntiles", ntiles)):
        if not isinstance(val, types.Integer):
            raise TypingError(f"tile_sums: {name} must be an integer, got {val}")
    sig = types.void(u, v, uw, vw, types.intp, types.intp, types.intp, types.intp, a1, a2)

    def codegen(context, builder, signature, args):
        u_v, v_v, uw_v, vw_v, r0_v, r1_v, j0_v, nt_v, a1_v, a2_v = args
        ft = context.get_data_type(u.dtype)
        isz = context.get_abi_sizeof(ft)
        f64 = ir.DoubleType()
        intp = context.get_value_type(types.intp)
        i8p = ir.IntType(8).as_pointer()
        vf = ir.VectorType(ft, LANES)
        vd = ir.VectorType(f64, LANES)

        def rows_of(ary_type, val):
            ary = context.make_array(ary_type)(context, builder, val)
            return builder.bitcast(ary.data, i8p), builder.extract_value(ary.strides, 0)

        def data(ary_type, val):
            return context.make_array(ary_type)(context, builder, val).data

        ub, ustride = rows_of(u, u_v)
        vb, vstride = (ub, ustride) if square else rows_of(v, v_v)
        puw, p1, p2 = data(uw, uw_v), data(a1, a1_v), data(a2, a2_v)
        pvw = puw if square else data(vw, vw_v)
        acc1 = [cgutils.alloca_once(builder, vd) for _ in range(VECTORS)]
        acc2 = [cgutils.alloca_once(builder, vd) for _ in range(VECTORS)]

        def at(ptr, i, vt):
            return builder.bitcast(builder.gep(ptr, [i]), vt.as_pointer())

        def row_vector(base, stride, r, col):
            row = builder.bitcast(builder.gep(base, [builder.mul(r, stride)]), ft.as_pointer())
            x = builder.load(at(row, col, vf), align=isz)
            return x if ft == f64 else builder.fpext(x, vd)

        i32 = ir.IntType(32)
        fetch_ty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fetch = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fetch_ty)
        ahead = ir.Constant(intp, AHEAD)

        def prefetch(base, stride, r, col):
            row = builder.bitcast(builder.gep(base, [builder.mul(builder.add(r, ahead), stride)]), ft.as_pointer())
            builder.call(fetch, [builder.bitcast(builder.gep(row, [col]), i8p), ir.Constant(i32, 0),
                                 ir.Constant(i32, LOCALITY), ir.Constant(i32, 1)])

        # The prefetches walk the next block in memory order: the i-th step of the tiles'
        # row loops fetches tile i % ntiles of the next block's row i // ntiles.
        pr = cgutils.alloca_once_value(builder, ir.Constant(intp, 0))
        pt = cgutils.alloca_once_value(builder, ir.Constant(intp, 0))
        one = ir.Constant(intp, 1)

        with cgutils.for_range(builder, nt_v) as tiles:
            first = builder.mul(tiles.index, ir.Constant(intp, TILE))
            ks, kv, cols = [], [], []
            for k in range(VECTORS):
                i = builder.add(first, ir.Constant(intp, k * LANES))
                ks.append(builder.load(at(puw, i, vd), align=8))
                kv.append(ks[-1] if square else builder.load(at(pvw, i, vd), align=8))
                builder.store(builder.load(at(p1, i, vd), align=8), acc1[k])
                builder.store(builder.load(at(p2, i, vd), align=8), acc2[k])
                cols.append(builder.add(j0_v, i))
            with cgutils.for_range_slice(builder, r0_v, r1_v, ir.Constant(intp, 1)) as (r, _):
                prow = builder.add(r0_v, builder.load(pr))
                pcol = builder.add(j0_v, builder.mul(builder.load(pt), ir.Constant(intp, TILE)))
                for k in range(0, VECTORS, max(1, 64 // (LANES * isz))):  # one per cache line
                    col = builder.add(pcol, ir.Constant(intp, k * LANES))
                    prefetch(ub, ustride, prow, col)
                    if not square:
                        prefetch(vb, vstride, prow, col)
                following = builder.add(builder.load(pt), one)
                wrap = builder.icmp_signed("==", following, nt_v)
                builder.store(builder.select(wrap, ir.Constant(intp, 0), following), pt)
                builder.store(builder.add(builder.load(pr), builder.zext(wrap, intp)), pr)
                for k in range(VECTORS):
                    d = builder.fsub(row_vector(ub, ustride, r, cols[k]), ks[k], flags=_FLAGS)
                    e = d if square else builder.fsub(row_vector(vb, vstride, r, cols[k]), kv[k], flags=_FLAGS)
                    builder.store(builder.fadd(builder.load(acc1[k]), d, flags=_FLAGS), acc1[k])
                    builder.store(builder.fadd(builder.load(acc2[k]), builder.fmul(d, e, flags=_FLAGS), flags=_FLAGS),
                                  acc2[k])
            for k in range(VECTORS):
                i = builder.add(first, ir.Constant(intp, k * LANES))
                builder.store(builder.load(acc1[k]), at(p1, i, vd), align=8)
                builder.store(builder.load(acc2[k]), at(p2, i, vd), align=8)
        return context.get_dummy_value()

    return sig, codegen

"""Element passes with streaming (non-temporal) stores for large outputs.

An ordinary store to a line that is not in cache first reads the line from
memory (the read-for-ownership), so writing an output costs a read and a
write. On these machines writes are the scarce resource (BENCHMARKS.md), and
the read-for-ownership is pure waste for an output that is overwritten whole.
A non-temporal store of a full, aligned 64-byte line skips it and goes to
memory through the write-combining buffers: measured here, ``y = (x - m)*a + b``
over 25.7 MB takes 1.2-1.6 ms with them against 2.2-2.6 ms with ordinary stores
(``docs/experiments/streaming_stores.py``).

The trade-off: the output is not left in cache. That is no loss for outputs
larger than the caches, and a measured net gain down to a few MB; below
:data:`STREAM_MIN_BYTES` ordinary stores are used. Nor do they pay where the
output's memory is fresh from the operating system: its pages were just zeroed
by the kernel, through the cache, and a non-temporal store to a cached dirty
line costs more than an ordinary one (measured: 11-18% slower on 103-134 MB). glibc
maps every block above 32 MiB afresh on each allocation, so outputs above
:data:`STREAM_MAX_BYTES` use ordinary stores -- unless freed memory is kept for
reuse (:func:`normkit.allocator.keep_freed_memory`, or ``MALLOC_MMAP_MAX_=0`` in
the environment), where streaming them is 14-26% faster, or the output's memory
is already in use (:func:`resident`: its first and last pages are mapped, as
for an output written before, or one from another allocator that keeps its
memory).
:func:`streaming` turns the streaming stores off (or on again) for the whole
process.

LLVM's loop vectoriser will not form aligned non-temporal vector stores from a
scalar loop, so :func:`stream_map` writes the vector loop itself: the element
formula is given as a small postfix program over the operands, evaluated on
one 64-byte vector per step (head and tail elements up to the first and after
the last full line one by one, with ordinary stores); without streaming, or on
runs shorter than :data:`NT_MIN_RUN`, it is one ordinary loop, which LLVM
vectorises as it would the Python loop. Non-temporal stores are weakly
ordered: a thread must execute :func:`fence` after its last one before other
threads may read the data; kernels therefore give each worker a contiguous span
of tasks (:func:`span`) and fence once per worker, not per task (a fence per
3 KB run cost more than the stores saved).

Formulas are postfix over the operand indices ``0``-``9``; ``+``, ``-``, ``*``
are binary, ``relu`` (``max(v, 0)``) unary. Array operands (1-D, contiguous,
at least as long as the output, of the output's dtype) are read at the
output's index; scalar operands are converted to the output's dtype and
broadcast. Multiply-adds may be contracted to FMAs (the kernels' ``contract``
fast-math flag); nothing is reassociated, so ``(x - m) * a + b`` keeps the
exact cancellation of large offsets that :mod:`.elementwise` relies on.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional, Tuple

import numba.np.ufunc.parallel
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._jit import helper
from .machine import VENDOR, libc_function
from .machine import X86 as _X86

__all__ = [
    "LINE", "NT_MIN_RUN", "SEGMENT_VECTOR", "STREAM_MAX_BYTES", "STREAM_MIN_BYTES", "STREAM_MIN_GRAD_BYTES",
    "aligned_empty", "fence", "resident", "reused_memory", "segment_map", "segment_sums", "span", "stream_map",
    "stream_min_bytes", "streaming", "streams", "workers",
]

#: Bytes per cache line: the unit of one non-temporal vector store.
LINE = 64
#: Shortest contiguous run (bytes) written with streaming stores; shorter runs
#: (small maps such as 7x7) take ordinary stores: their head and tail elements,
#: written one by one around the aligned lines, cost more than the lines save.
NT_MIN_RUN = 8 * LINE
#: Bytes per vector of :func:`segment_map`'s ordinary (not streamed) loop: 32-byte
#: vectors, as LLVM's own loops here; a 64-byte unaligned store splits a cache line
#: every time.
SEGMENT_VECTOR = 32
#: Largest output (bytes) written with streaming stores while glibc maps large
#: blocks afresh on each allocation (its largest mmap threshold, on 64-bit).
STREAM_MAX_BYTES = 32 << 20


def stream_min_bytes(vendor: str) -> Tuple[int, int]:
    """The smallest outputs (bytes) written with streaming stores on a processor of
    ``vendor`` (:data:`.machine.VENDOR`): ``(forward outputs, gradients)``. A
    streaming store sends its line to memory and leaves it out of the caches: a
    gain where the output would only evict the input from the last-level cache, a
    loss where both sit easily in it.

    * Intel, and processors not measured: 4 MiB for both, measured on an Intel Xeon
      (``docs/experiments/streaming_stores.py`` and the layer benchmarks).
    * AMD: 8 MiB for forward outputs, 4 MiB for gradients. Measured on an AMD EPYC
      (Zen 4, 32 MiB L3; BENCHMARKS.md): the 6.4 MB outputs of a 8x64x56x56
      BatchNorm2d were written faster with ordinary stores, its training forward
      kernel up to 1.6x and its eval kernel 1.5-3x in the layer benchmark, the
      layers 1.07-2.2x (``docs/experiments/nt_layer.py``). With ordinary stores
      for the backward's 6.4 MB ``dx`` too, the forward+backward was slower in
      five of six rounds, so gradients keep 4 MiB. From 12.8 MB up streaming
      stores won in the layer benchmark (the hot loops of
      ``docs/experiments/nt_threshold.py``, which keep the input in the L3
      between calls, favoured ordinary stores up to 16 MB: they mislead).
    """
    if vendor == "AuthenticAMD":
        return 8 << 20, 4 << 20
    return 4 << 20, 4 << 20


#: Smallest forward output and smallest gradient (bytes) written with streaming stores
#: on this machine (:func:`stream_min_bytes`).
STREAM_MIN_BYTES, STREAM_MIN_GRAD_BYTES = stream_min_bytes(VENDOR)

# The thread count as a call to the threading layer's symbol: numba.get_num_threads()
# inside compiled code goes through a ctypes pointer, which Numba will not cache.
_threads = getattr(numba.np.ufunc.parallel, "_iget_num_threads", None)
if _threads is None:  # Numba's internals moved: a fixed count, enough for any machine's cores

    @helper
    def _threads():
        return 256

_enabled = True
_reused = os.environ.get("MALLOC_MMAP_MAX_") == "0"
_FLAGS = ("contract",)
_BINARY = {"+": "fadd", "-": "fsub", "*": "fmul"}


def aligned_empty(shape: Tuple[int, ...], dtype) -> np.ndarray:
    """A new C-contiguous array whose data starts on a cache line (:data:`LINE`).

    NumPy's own allocations start 16 bytes past a line (or wherever malloc's 16-byte
    granularity puts them); an output there puts a partial line at the start and end
    of every run the element passes stream. On an AMD EPYC the kernels took
    1.2-2.1x as long with a 16 MB output 16 or 32 bytes past a line as with one on
    a line, wherever the inputs lay (``docs/experiments/out_align.py``). torch's
    CPU tensors start on a line already."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(n * dtype.itemsize + LINE, np.uint8)
    skip = -raw.ctypes.data % LINE
    return raw[skip:skip + n * dtype.itemsize].view(dtype).reshape(shape)


def streaming(enable: Optional[bool] = None) -> bool:
    """Turn streaming stores for large outputs on (the default) or off; with no
    argument, report the setting. Returns whether they will be used (never on
    processors other than x86-64, where they are not emitted)."""
    global _enabled
    if enable is not None:
        _enabled = bool(enable)
    return _enabled and _X86


def reused_memory(reused: bool) -> None:
    """Tell the kernels whether large freed blocks are kept for reuse (set by
    :func:`normkit.allocator.keep_freed_memory`): then outputs above
    :data:`STREAM_MAX_BYTES` are streamed too."""
    global _reused
    _reused = bool(reused)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident(address: int, nbytes: int) -> bool:
    """Whether the first and the last page of ``[address, address + nbytes)`` are in
    memory (Linux ``mincore``): memory that was written before, not pages fresh from
    the operating system, which it zeroes on first touch. False where that cannot be
    told (no ``mincore``, an empty range, an address it refuses)."""
    fn = libc_function("mincore", (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)))
    if fn is None or nbytes <= 0:
        return False
    flag = (ctypes.c_ubyte * 1)()
    for byte in (address, address + nbytes - 1):
        if fn(byte - byte % _PAGE, _PAGE, flag) != 0 or not flag[0] & 1:
            return False
    return True


def streams(nbytes: int, gradient: bool = False, out: Optional[np.ndarray] = None) -> bool:
    """Whether an output of ``nbytes`` is written with streaming stores: a forward
    pass's output, or with ``gradient`` a backward pass's input gradient. Above
    :data:`STREAM_MAX_BYTES` only where freed memory is kept (:func:`reused_memory`)
    or ``out``, the output array, lies in memory already in use (:func:`resident`)."""
    low = STREAM_MIN_GRAD_BYTES if gradient else STREAM_MIN_BYTES
    if not (_enabled and _X86 and low <= nbytes):
        return False
    return nbytes <= STREAM_MAX_BYTES or _reused or (out is not None and resident(out.ctypes.data, nbytes))


@helper
def workers(tasks):
    """Workers for ``tasks`` tasks: one per thread, at most one per task, at least one."""
    return max(1, min(tasks, _threads()))


@helper
def span(w, workers, tasks):
    """Tasks ``[lo, hi)`` of worker ``w`` of ``workers``: contiguous, sizes differing by at most one.
    Always ``int64``: a ``prange`` index is unsigned in the parallel flavour, and unsigned with
    signed gives float64 in Numba's typing (then a float-to-int32 ``range``, and every callee
    compiled a second time for the other index type)."""
    w = np.int64(w)
    q = tasks // workers
    r = tasks % workers
    lo = w * q + min(w, r)
    return lo, lo + q + (1 if w < r else 0)


def _program(formula: str, n_operands: int):
    tokens = formula.split()
    depth = 0
    for tok in tokens:
        if tok.isdigit():
            if int(tok) >= n_operands:
                raise TypingError(f"stream_map formula {formula!r} names operand {tok}, but {n_operands} were given")
            depth += 1
        elif tok in _BINARY:
            depth -= 1
        elif tok != "relu":
            raise TypingError(f"stream_map formula {formula!r}: unknown token {tok!r}")
        if depth < 1:
            raise TypingError(f"stream_map formula {formula!r} is not a postfix expression")
    if depth != 1:
        raise TypingError(f"stream_map formula {formula!r} leaves {depth} values, expected 1")
    return tokens


def _evaluate(builder, tokens, load, zero):
    stack = []
    for tok in tokens:
        if tok.isdigit():
            stack.append(load(int(tok)))
        elif tok == "relu":
            v = stack.pop()
            stack.append(builder.select(builder.fcmp_ordered("<", v, zero), zero, v))  # NaN passes
        else:
            rhs = stack.pop()
            lhs = stack.pop()
            stack.append(getattr(builder, _BINARY[tok])(lhs, rhs, flags=_FLAGS))
    return stack[0]


def _splat(builder, value, vt: ir.VectorType):
    """``value`` in every lane of a vector of type ``vt``."""
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(i32, 0))
    lane0 = ir.Constant(ir.VectorType(i32, vt.count), [0] * vt.count)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), lane0)


def _lanes_below(builder, i, bound, lanes):
    """``<W x i1>``: which lanes of the vector at index ``i`` lie below ``bound``
    (``lanes`` the constant ``<0, 1, ..., W-1>`` of index type)."""
    at = builder.add(_splat(builder, i, lanes.type), lanes)
    return builder.icmp_signed("<", at, _splat(builder, bound, lanes.type))


def _check_operands(name, out, operands, segments=False):
    for i, op in enumerate(operands):
        if isinstance(op, types.Array):
            if op.ndim != 1 or op.dtype != out.dtype:
                raise TypingError(f"{name}: operand {i} must be 1-D {out.dtype}, got {op}")
        elif segments or not isinstance(op, (types.Float, types.Integer)):
            what = "an array" if segments else "an array or a number"
            raise TypingError(f"{name}: operand {i} must be {what}, got {op}")


def _check_map(name, formula, out, operands):
    """The typing checks :func:`stream_map` and :func:`segment_map` share."""
    if not isinstance(formula, types.StringLiteral):
        raise TypingError(f"{name}: the formula must be a string literal")
    if not isinstance(out, types.Array) or out.ndim != 1 or not isinstance(out.dtype, types.Float):
        raise TypingError(f"{name}: out must be a 1-D float array, got {out}")
    if not isinstance(operands, types.BaseTuple):
        raise TypingError(f"{name}: operands must be a tuple, got {operands}")
    _check_operands(name, out, operands)


def _unpack_operands(context, builder, operands, ops_v, dtype):
    """``({index: data pointer}, {index: scalar in dtype})`` of a tuple of operands."""
    ptrs, scalars = {}, {}
    for k, (op, v) in enumerate(zip(operands, cgutils.unpack_tuple(builder, ops_v, len(operands)))):
        if isinstance(op, types.Array):
            ptrs[k] = context.make_array(op)(context, builder, v).data
        else:
            scalars[k] = context.cast(builder, v, op, dtype)
    return ptrs, scalars


@intrinsic
def stream_map(typingctx, formula, out, operands, nt):
    """``out[i] = formula(operands at i)`` for every ``i`` of the 1-D contiguous ``out``;
    whole aligned lines with non-temporal stores when ``nt`` is true and the run is
    long enough (follow with :func:`fence`), else an ordinary loop."""
    _check_map("stream_map", formula, out, operands)
    tokens = _program(formula.literal_value, len(operands))
    sig = types.void(formula, out, operands, nt)

    def codegen(context, builder, signature, args):
        _, out_v, ops_v, nt_v = args
        ft = context.get_data_type(out.dtype)
        isz = context.get_abi_sizeof(ft)
        W = LINE // isz
        vt = ir.VectorType(ft, W)
        intp = context.get_value_type(types.intp)
        oary = context.make_array(out)(context, builder, out_v)
        n = builder.extract_value(oary.shape, 0)
        odata = oary.data
        ptrs, scalars = _unpack_operands(context, builder, operands, ops_v, out.dtype)
        vscalars = {k: _splat(builder, s, vt) for k, s in scalars.items()}

        def scalar_at(i):
            def load(k):
                if k in ptrs:
                    return builder.load(builder.gep(ptrs[k], [i]), align=isz)
                return scalars[k]
            return _evaluate(builder, tokens, load, ir.Constant(ft, 0.0))

        def vector_at(i):
            def load(k):
                if k in ptrs:
                    return builder.load(builder.bitcast(builder.gep(ptrs[k], [i]), vt.as_pointer()), align=isz)
                return vscalars[k]
            return _evaluate(builder, tokens, load, ir.Constant(vt, None))

        def scalar_loop(lo, hi):
            with cgutils.for_range_slice(builder, lo, hi, ir.Constant(intp, 1)) as (i, _):
                builder.store(scalar_at(i), builder.gep(odata, [i]), align=isz)

        # Streaming pays on runs of several lines: there the head (elements before
        # out's first line boundary) is written first, then whole aligned lines with
        # non-temporal stores, then the tail. Otherwise one ordinary loop over the
        # run, which LLVM vectorises as any other (unaligned) loop.
        nt_flag = context.cast(builder, nt_v, nt, types.boolean)
        long_run = builder.icmp_signed(">=", n, ir.Constant(intp, NT_MIN_RUN // isz))
        use_nt = cgutils.false_bit if not _X86 else builder.and_(nt_flag, long_run)
        md = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        zero = ir.Constant(intp, 0)
        with builder.if_else(use_nt) as (streamed, plain):
            with streamed:
                addr = builder.ptrtoint(odata, intp)
                misalign = builder.and_(builder.neg(addr), ir.Constant(intp, LINE - 1))
                head = builder.udiv(misalign, ir.Constant(intp, isz))
                lines = builder.sdiv(builder.sub(n, head), ir.Constant(intp, W))
                body_end = builder.add(head, builder.mul(lines, ir.Constant(intp, W)))
                with cgutils.for_range_slice(builder, head, body_end, ir.Constant(intp, W)) as (i, _):
                    dst = builder.bitcast(builder.gep(odata, [i]), vt.as_pointer())
                    builder.store(vector_at(i), dst, align=LINE).set_metadata("nontemporal", md)
                # head and tail (under a line each) in one loop: k < head, then body_end + ...
                edges = builder.add(head, builder.sub(n, body_end))
                with cgutils.for_range(builder, edges) as loop:
                    k = loop.index
                    i = builder.select(builder.icmp_signed("<", k, head), k,
                                       builder.add(body_end, builder.sub(k, head)))
                    builder.store(scalar_at(i), builder.gep(odata, [i]), align=isz)
            with plain:
                scalar_loop(zero, n)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def segment_map(typingctx, formula, out, operands, segments, seg_len, nt):
    """``out[i] = formula(operands at i, segments at i // seg_len)``: :func:`stream_map`
    over a run made of segments of ``seg_len`` elements (the channels of a GroupNorm
    group, consecutive InstanceNorm instances), each with its own coefficients.

    ``segments`` is a tuple of 1-D arrays of the output's dtype, one entry per
    segment; in the formula they follow ``operands`` (with two operands, the first
    segment array is ``2``). The run is walked in whole vectors -- one
    coefficient per vector, or two blended where a vector straddles a segment
    boundary -- instead of one short loop per segment with its own remainder:
    for segments shorter than a few vectors (7x7 and 14x14 maps) the per-segment
    loops cost more than the data. With ``nt`` and a long enough run the
    whole run is one stream of aligned lines (non-temporal stores, as
    :func:`stream_map`). Segments shorter than one vector take a scalar loop.
    """
    _check_map("segment_map", formula, out, operands)
    if not isinstance(segments, types.BaseTuple):
        raise TypingError(f"segment_map: segments must be a tuple, got {segments}")
    _check_operands("segment_map segments", out, segments, segments=True)
    if not isinstance(seg_len, types.Integer):
        raise TypingError(f"segment_map: seg_len must be an integer, got {seg_len}")
    n_ops = len(operands)
    tokens = _program(formula.literal_value, n_ops + len(segments))
    sig = types.void(formula, out, operands, segments, seg_len, nt)

    def codegen(context, builder, signature, args):
        _, out_v, ops_v, segs_v, len_v, nt_v = args
        ft = context.get_data_type(out.dtype)
        isz = context.get_abi_sizeof(ft)
        intp = context.get_value_type(types.intp)
        i32 = ir.IntType(32)
        oary = context.make_array(out)(context, builder, out_v)
        n = builder.extract_value(oary.shape, 0)
        odata = oary.data
        L = context.cast(builder, len_v, seg_len, types.intp)
        ptrs, scalars = _unpack_operands(context, builder, operands, ops_v, out.dtype)
        seg_ptrs = [context.make_array(op)(context, builder, v).data
                    for op, v in zip(segments, cgutils.unpack_tuple(builder, segs_v, len(segments)))]
        one = ir.Constant(intp, 1)
        zero = ir.Constant(intp, 0)

        def scalar_loop(lo, hi):
            with cgutils.for_range_slice(builder, lo, hi, one) as (i, _):
                j = builder.sdiv(i, L)

                def load(k):
                    if k in ptrs:
                        return builder.load(builder.gep(ptrs[k], [i]), align=isz)
                    if k in scalars:
                        return scalars[k]
                    return builder.load(builder.gep(seg_ptrs[k - n_ops], [j]), align=isz)
                builder.store(_evaluate(builder, tokens, load, ir.Constant(ft, 0.0)), builder.gep(odata, [i]),
                              align=isz)

        def vector_loop(lo, hi, W, aligned):
            """Vectors of W lanes at lo, lo + W, ... below hi; needs seg_len >= W."""
            vt = ir.VectorType(ft, W)
            idx_t = ir.VectorType(intp, W)
            lanes = ir.Constant(idx_t, list(range(W)))

            vscalars = {k: _splat(builder, s, vt) for k, s in scalars.items()}
            j0 = builder.sdiv(lo, L)
            seg = cgutils.alloca_once_value(builder, j0)
            bound = cgutils.alloca_once_value(builder, builder.mul(builder.add(j0, one), L))
            coef = [cgutils.alloca_once(builder, vt) for _ in seg_ptrs]
            Wc = ir.Constant(intp, W)
            with cgutils.for_range_slice(builder, lo, hi, Wc) as (i, _):
                j = builder.load(seg)
                b = builder.load(bound)
                for slot, ptr in zip(coef, seg_ptrs):
                    builder.store(_splat(builder, builder.load(builder.gep(ptr, [j]), align=isz), vt), slot)
                straddles = builder.icmp_signed(">", builder.add(i, Wc), b)
                with builder.if_then(straddles, likely=False):  # lanes from b on: the next segment
                    nxt = builder.add(j, one)
                    first = _lanes_below(builder, i, b, lanes)
                    for slot, ptr in zip(coef, seg_ptrs):
                        hi_v = _splat(builder, builder.load(builder.gep(ptr, [nxt]), align=isz), vt)
                        builder.store(builder.select(first, builder.load(slot), hi_v), slot)
                    builder.store(nxt, seg)
                    builder.store(builder.add(b, L), bound)

                def load(k):
                    if k in ptrs:
                        return builder.load(builder.bitcast(builder.gep(ptrs[k], [i]), vt.as_pointer()), align=isz)
                    if k in vscalars:
                        return vscalars[k]
                    return builder.load(coef[k - n_ops])
                val = _evaluate(builder, tokens, load, ir.Constant(vt, None))
                dst = builder.bitcast(builder.gep(odata, [i]), vt.as_pointer())
                store = builder.store(val, dst, align=LINE if aligned else isz)
                if aligned:
                    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(i32, 1)]))

        W_line = LINE // isz
        W_plain = SEGMENT_VECTOR // isz
        nt_flag = context.cast(builder, nt_v, nt, types.boolean)
        long_run = builder.icmp_signed(">=", n, ir.Constant(intp, NT_MIN_RUN // isz))
        wide = builder.icmp_signed(">=", L, ir.Constant(intp, W_line))
        use_nt = cgutils.false_bit if not _X86 else builder.and_(builder.and_(nt_flag, long_run), wide)
        with builder.if_else(use_nt) as (streamed, plain):
            with streamed:
                addr = builder.ptrtoint(odata, intp)
                head = builder.udiv(builder.and_(builder.neg(addr), ir.Constant(intp, LINE - 1)),
                                    ir.Constant(intp, isz))
                lines = builder.sdiv(builder.sub(n, head), ir.Constant(intp, W_line))
                body_end = builder.add(head, builder.mul(lines, ir.Constant(intp, W_line)))
                scalar_loop(zero, head)
                vector_loop(head, body_end, W_line, True)
                scalar_loop(body_end, n)
            with plain:
                Wp = ir.Constant(intp, W_plain)
                vectors = builder.and_(builder.icmp_signed(">=", L, Wp), builder.icmp_signed(">=", n, Wp))
                with builder.if_else(vectors) as (vec, scal):
                    with vec:
                        full = builder.sub(n, builder.srem(n, Wp))
                        vector_loop(zero, full, W_plain, False)
                        scalar_loop(full, n)
                    with scal:
                        scalar_loop(zero, n)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def segment_sums(typingctx, u, v, a, b, seg_len, s1, s2):
    """Per segment ``j`` of ``seg_len`` elements of the runs ``u`` and ``v``, adds
    ``sum(u - a)`` to ``s1[j]`` and ``sum((u - a) * (v - b))`` to ``s2[j]``, in
    float64 (the paired sums of :mod:`.reduce` for many short segments of one
    contiguous run: the channels of a GroupNorm group, or of one row of a block of
    BatchNorm channels). The shifts ``a`` and ``b`` are numbers, or float64 arrays
    with one entry per segment. Walked as :func:`segment_map`: whole
    vectors, a vector that straddles a boundary split between the two segments by
    lane masks, instead of one short loop per segment. ``len(u)`` must be a
    multiple of ``seg_len``; segments shorter than one vector are summed by a
    scalar loop. ``v`` and ``b`` both None: the forward moments, ``v = u`` and
    ``b = a``, each value loaded and shifted once."""
    square = isinstance(v, types.NoneType)
    if square != isinstance(b, types.NoneType):
        raise TypingError(f"segment_sums: v and b must both be None (the moments) or neither, got {v} and {b}")
    for name, arr in (("u", u),) if square else (("u", u), ("v", v)):
        if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(arr.dtype, types.Float):
            raise TypingError(f"segment_sums: {name} must be a 1-D float array, got {arr}")
    if not square and u.dtype != v.dtype:
        raise TypingError(f"segment_sums: u and v must share a dtype, got {u.dtype} and {v.dtype}")
    for name, arr in (("s1", s1), ("s2", s2)):
        if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.dtype != types.float64:
            raise TypingError(f"segment_sums: {name} must be a 1-D float64 array, got {arr}")
    for name, shift in (("a", a),) if square else (("a", a), ("b", b)):
        if isinstance(shift, types.Array):
            if shift.ndim != 1 or shift.dtype != types.float64:
                raise TypingError(f"segment_sums: {name} must be a number or a 1-D float64 array, got {shift}")
        elif not isinstance(shift, (types.Float, types.Integer)):
            raise TypingError(f"segment_sums: {name} must be a number or a 1-D float64 array, got {shift}")
    if not isinstance(seg_len, types.Integer):
        raise TypingError(f"segment_sums: seg_len must be an integer, got {seg_len}")
    shifts = tuple(sh if isinstance(sh, (types.Array, types.NoneType)) else types.float64 for sh in (a, b))
    sig = types.void(u, v, shifts[0], shifts[1], types.intp, s1, s2)

    def codegen(context, builder, signature, args):
        u_v, v_v, a_v, b_v, len_v, s1_v, s2_v = args
        ft = context.get_data_type(u.dtype)
        isz = context.get_abi_sizeof(ft)
        f64 = ir.DoubleType()
        intp = context.get_value_type(types.intp)
        i32 = ir.IntType(32)
        uary = context.make_array(u)(context, builder, u_v)
        n = builder.extract_value(uary.shape, 0)
        up = uary.data
        vp = up if square else context.make_array(v)(context, builder, v_v).data
        o1 = context.make_array(s1)(context, builder, s1_v).data
        o2 = context.make_array(s2)(context, builder, s2_v).data
        L = len_v
        one = ir.Constant(intp, 1)
        zero = ir.Constant(intp, 0)
        W = SEGMENT_VECTOR // isz
        Wc = ir.Constant(intp, W)
        vf = ir.VectorType(ft, W)
        vd = ir.VectorType(f64, W)
        idx_t = ir.VectorType(intp, W)

        def widen(x, ty):
            return x if ft == f64 else builder.fpext(x, ty)

        def hsum(vec):
            count = W
            while count > 1:
                half = count // 2
                lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, half), list(range(half))))
                hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, half), list(range(half, count))))
                vec = builder.fadd(lo, hi)
                count = half
            return builder.extract_element(vec, ir.Constant(i32, 0))

        shift_ptrs = [context.make_array(sh)(context, builder, val).data if isinstance(sh, types.Array) else None
                      for sh, val in zip(shifts, (a_v, b_v))]

        def shift_at(k, j):
            """Shift ``k`` (0: a, 1: b) of segment ``j``, float64."""
            if shift_ptrs[k] is None:
                return (a_v, b_v)[k]
            return builder.load(builder.gep(shift_ptrs[k], [j]))

        zero_v = ir.Constant(vd, None)
        zero_d = ir.Constant(f64, 0.0)
        acc1 = cgutils.alloca_once_value(builder, zero_v)
        acc2 = cgutils.alloca_once_value(builder, zero_v)
        acc3 = cgutils.alloca_once_value(builder, zero_v)  # the second vector of a step (vector path)
        acc4 = cgutils.alloca_once_value(builder, zero_v)
        t1 = cgutils.alloca_once_value(builder, zero_d)
        t2 = cgutils.alloca_once_value(builder, zero_d)
        seg = cgutils.alloca_once_value(builder, zero)

        def scalar_terms(i, j):
            d = builder.fsub(widen(builder.load(builder.gep(up, [i]), align=isz), f64), shift_at(0, j), flags=_FLAGS)
            if square:
                return d, builder.fmul(d, d, flags=_FLAGS)
            e = builder.fsub(widen(builder.load(builder.gep(vp, [i]), align=isz), f64), shift_at(1, j), flags=_FLAGS)
            return d, builder.fmul(d, e, flags=_FLAGS)

        def add(slot, val):
            builder.store(builder.fadd(builder.load(slot), val, flags=_FLAGS), slot)

        def accumulate(out, j, val):
            ptr = builder.gep(out, [j])
            builder.store(builder.fadd(builder.load(ptr), val), ptr)

        def finish(j):
            both1 = builder.fadd(builder.load(acc1), builder.load(acc3))
            both2 = builder.fadd(builder.load(acc2), builder.load(acc4))
            accumulate(o1, j, builder.fadd(hsum(both1), builder.load(t1)))
            accumulate(o2, j, builder.fadd(hsum(both2), builder.load(t2)))

        vectors = builder.and_(builder.icmp_signed(">=", L, Wc), builder.icmp_signed(">=", n, Wc))
        with builder.if_else(vectors) as (vec, scal):
            with vec:
                bound = cgutils.alloca_once_value(builder, L)
                lanes = ir.Constant(idx_t, list(range(W)))
                full = builder.sub(n, builder.srem(n, Wc))
                # The current segment's shifts as vectors, set at the start of each segment
                # (a number's once): inside a segment a vector costs its loads and arithmetic
                # only; the lane masks are built where a vector reaches a segment's end.
                used = shift_ptrs[:1] if square else shift_ptrs
                slots = [None if ptr is None else cgutils.alloca_once_value(builder, _splat(builder, shift_at(k, zero), vd))
                         for k, ptr in enumerate(used)]
                fixed = [_splat(builder, shift_at(k, zero), vd) if ptr is None else None for k, ptr in enumerate(used)]

                def shift_vector(k):
                    return fixed[k] if slots[k] is None else builder.load(slots[k])

                def terms(i):
                    def load(ptr, shift):
                        x = builder.load(builder.bitcast(builder.gep(ptr, [i]), vf.as_pointer()), align=isz)
                        return builder.fsub(widen(x, vd), shift, flags=_FLAGS)
                    d = load(up, shift_vector(0))
                    if square:
                        return d, builder.fmul(d, d, flags=_FLAGS)
                    return d, builder.fmul(d, load(vp, shift_vector(1)), flags=_FLAGS)

                # Two vectors per step while both lie inside the segment, into two pairs of
                # accumulators (two independent chains of adds; summed at the segment's end).
                step = cgutils.alloca_once_value(builder, zero)
                head = builder.append_basic_block("segment_sums.head")
                body = builder.append_basic_block("segment_sums.body")
                done = builder.append_basic_block("segment_sums.done")
                builder.branch(head)
                builder.position_at_end(head)
                i = builder.load(step)
                builder.cbranch(builder.icmp_signed("<", i, full), body, done)
                builder.position_at_end(body)
                bnd = builder.load(bound)
                j = builder.load(seg)
                pair = builder.icmp_signed("<", builder.add(i, builder.add(Wc, Wc)), bnd)
                with builder.if_else(pair, likely=True) as (two, one_vector):
                    with two:
                        d0, p0 = terms(i)
                        d1, p1 = terms(builder.add(i, Wc))
                        add(acc1, d0)
                        add(acc2, p0)
                        add(acc3, d1)
                        add(acc4, p1)
                        builder.store(builder.add(i, builder.add(Wc, Wc)), step)
                    with one_vector:
                        ends = builder.icmp_signed(">=", builder.add(i, Wc), bnd)
                        d, p = terms(i)
                        with builder.if_else(ends, likely=False) as (split, inside):
                            with inside:
                                add(acc1, d)
                                add(acc2, p)
                            with split:  # lanes below the bound close this segment, the rest open the next
                                first = _lanes_below(builder, i, bnd, lanes)
                                add(acc1, builder.select(first, d, zero_v))
                                add(acc2, builder.select(first, p, zero_v))
                                finish(j)
                                nxt = builder.add(j, one)
                                with builder.if_then(builder.icmp_signed("<", bnd, n)):  # a next segment exists
                                    for k, slot in enumerate(slots):
                                        if slot is not None:
                                            builder.store(_splat(builder, shift_at(k, nxt), vd), slot)
                                builder.store(zero_v, acc1)
                                builder.store(zero_v, acc2)
                                straddles = builder.icmp_signed(">", builder.add(i, Wc), bnd)
                                with builder.if_then(straddles):  # the lanes from the bound on, next shifts
                                    d2, p2 = terms(i)
                                    builder.store(builder.select(first, zero_v, d2), acc1)
                                    builder.store(builder.select(first, zero_v, p2), acc2)
                                builder.store(zero_v, acc3)
                                builder.store(zero_v, acc4)
                                builder.store(nxt, seg)
                                builder.store(builder.add(bnd, L), bound)
                        builder.store(builder.add(i, Wc), step)
                builder.branch(head)
                builder.position_at_end(done)
                with builder.if_then(builder.icmp_signed("<", full, n)):  # the last segment's tail
                    with cgutils.for_range_slice(builder, full, n, one) as (i, _):
                        d, p = scalar_terms(i, builder.load(seg))
                        add(t1, d)
                        add(t2, p)
                    finish(builder.load(seg))
            with scal:
                with cgutils.for_range(builder, n) as loop:
                    i = loop.index
                    j = builder.sdiv(i, L)
                    d, p = scalar_terms(i, j)
                    add(t1, d)
                    add(t2, p)
                    with builder.if_then(builder.icmp_signed("==", builder.srem(builder.add(i, one), L), zero)):
                        accumulate(o1, j, builder.load(t1))
                        accumulate(o2, j, builder.load(t2))
                        builder.store(zero_d, t1)
                        builder.store(zero_d, t2)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fence(typingctx, nt):
    """Order this thread's earlier non-temporal stores before its later stores
    (``sfence``) when ``nt`` is true; nothing otherwise."""
    sig = types.void(nt)

    def codegen(context, builder, signature, args):
        if _X86:
            flag = context.cast(builder, args[0], nt, types.boolean)
            with builder.if_then(flag):
                fnty = ir.FunctionType(ir.VoidType(), [])
                fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.sfence")
                builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen

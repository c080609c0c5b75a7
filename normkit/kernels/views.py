"""Views that hold no reference, for the inner loops of the parallel kernels.

Every Numba slice (``x[r]``, ``x[p, c0:c1]``) is an array that shares its
parent's reference count: creating it increments that count and dropping it
decrements it, both atomic operations on one memory word. Inside a parallel
loop every worker slices the same parents, so that word bounces between the
cores on every row. Measured on a channels-last element pass over rows of
64-2,048 values, two threads, an AMD EPYC (Zen 4)
(``docs/experiments/borrowed_views.py``): the same loop over views made by
:func:`borrow` ran up to 1.6x faster (rows of 64 values), and with the row's
body inlined as well (``@helper(inline=True)``) 1.1-4.5x faster than over
slices with a compiled call per row.

:func:`borrow` builds the view without the reference (its ``meminfo`` is
null, which Numba's reference counting skips). That is safe where the parent
outlives the view, as in every kernel loop here: the parents are the kernel's
arguments.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._jit import helper

__all__ = ["borrow", "row_of", "run_of"]


@intrinsic
def borrow(typingctx, arr, start, n):
    """``arr.reshape(-1)[start:start + n]`` of a C-contiguous ``arr``, as a 1-D C-contiguous
    array that holds no reference to ``arr`` (use it only while ``arr`` lives). Bounds are
    the caller's: nothing is checked."""
    if not isinstance(arr, types.Array) or arr.layout != "C":
        raise TypingError(f"borrow: expected a C-contiguous array, got {arr}")
    if not isinstance(start, types.Integer) or not isinstance(n, types.Integer):
        raise TypingError(f"borrow: start and n must be integers, got {start} and {n}")
    view = types.Array(arr.dtype, 1, "C")
    sig = view(arr, start, n)

    def codegen(context, builder, signature, args):
        arr_v, start_v, n_v = args
        intp = context.get_value_type(types.intp)
        src = context.make_array(arr)(context, builder, arr_v)
        out = context.make_array(view)(context, builder)
        itemsize = ir.Constant(intp, context.get_abi_sizeof(context.get_data_type(arr.dtype)))
        first = context.cast(builder, start_v, signature.args[1], types.intp)
        count = context.cast(builder, n_v, signature.args[2], types.intp)
        context.populate_array(out, data=builder.gep(src.data, [first]), shape=cgutils.pack_array(builder, [count]),
                               strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize, meminfo=None)
        return out._getvalue()

    return sig, codegen


@helper(inline=True)
def run_of(a, p, c):
    """``a[p, c]``, the run of ``L`` values of row ``p`` and channel ``c`` of a C-contiguous
    ``(P, C, L)`` array, as a :func:`borrow`-ed view."""
    L = a.shape[2]
    return borrow(a, (p * a.shape[1] + c) * L, L)


@helper(inline=True)
def row_of(a, r):
    """``a[r]``, row ``r`` of a C-contiguous 2-D array, as a :func:`borrow`-ed view."""
    D = a.shape[1]
    return borrow(a, r * D, D)

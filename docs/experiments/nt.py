import numpy as np, torch
from numba import njit, prange, types
from numba.core.extending import intrinsic
from numba.core import cgutils
from llvmlite import ir

@intrinsic
def store_nt(typingctx, arr, idx, val):
    """arr[idx] = val with a non-temporal hint."""
    sig = types.void(arr, idx, arr.dtype)
    def codegen(context, builder, signature, args):
        aryty, idxty, valty = signature.args
        ary, i, v = args
        array = context.make_array(aryty)(context, builder, ary)
        ptr = cgutils.get_item_pointer(context, builder, aryty, array, [i], wraparound=False)
        st = builder.store(v, ptr)
        st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return sig, codegen

FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
@njit(parallel=True, fastmath=FM)
def scale_nt(x, o, a):
    n = x.shape[0]
    for t in prange(64):
        lo = t * n // 64; hi = (t + 1) * n // 64
        for i in range(lo, hi):
            store_nt(o, i, x[i] * a)
@njit(parallel=True, fastmath=FM)
def scale(x, o, a):
    n = x.shape[0]
    for t in prange(64):
        lo = t * n // 64; hi = (t + 1) * n // 64
        for i in range(lo, hi):
            o[i] = x[i] * a
x = torch.randn(32*64*112*112).numpy(); o = np.empty_like(x)
scale_nt(x, o, np.float32(2)); assert np.array_equal(o, x * 2)
scale(x, o, np.float32(2))
asm = list(scale_nt.inspect_asm().values())[0]
print("vmovntps" in asm, asm.count("vmovnt"))
from normkit.bench.timing import measure_interleaved
for n in (32*64*112*112, 32*256*28*28):
    x = torch.randn(n).numpy(); o = torch.empty(n).numpy()
    r = measure_interleaved({"nt": lambda: scale_nt(x, o, np.float32(2)), "plain": lambda: scale(x, o, np.float32(2))}, budget=1.0)
    print(n * 4 / 1e6, "MB", {k: round(v.ms, 3) for k, v in r.items()})
ir_text = list(scale_nt.inspect_llvm().values())[0]
print("nontemporal in IR:", ir_text.count("nontemporal"))
import re
print([l for l in ir_text.splitlines() if "nontemporal" in l][:3])

"""Prototype: y = (x - m) * a + b with ordinary stores vs aligned 64-byte
non-temporal vector stores (an LLVM intrinsic written by hand), with an sfence
once per call or after every run. Usage: streaming_stores.py"""
import time

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

W = 16  # float32 per 64-byte line


def _ptr(context, builder, arrty, arr, idx):
    return builder.gep(context.make_array(arrty)(context, builder, arr).data, [idx])


@intrinsic
def nt_affine16(typingctx, y, i, x, j, m, a, b):
    sig = types.void(y, i, x, j, m, a, b)

    def codegen(context, builder, signature, args):
        yv, iv, xv, jv, mv, av, bv = args
        vt = ir.VectorType(context.get_value_type(y.dtype), W)
        yp = builder.bitcast(_ptr(context, builder, y, yv, iv), vt.as_pointer())
        xp = builder.bitcast(_ptr(context, builder, x, xv, jv), vt.as_pointer())
        idx = ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W)

        def splat(s):
            v = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), idx)

        r = builder.fadd(builder.fmul(builder.fsub(builder.load(xp, align=4), splat(mv)), splat(av)), splat(bv))
        st = builder.store(r, yp, align=64)
        st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def sfence(typingctx):
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(fastmath=True)
def run_nt(xr, o, m, a, b):
    n = o.shape[0]
    h = min(n, ((-o.ctypes.data) % 64) // 4)
    for k in range(h):
        o[k] = (xr[k] - m) * a + b
    i = h
    while i + W <= n:
        nt_affine16(o, i, xr, i, m, a, b)
        i += W
    for k in range(i, n):
        o[k] = (xr[k] - m) * a + b


@njit(parallel=True, fastmath=True)
def per_run(x, out, m, a, b, mode):  # mode 0 ordinary, 1 streaming + one fence, 2 streaming + fence per run
    P, C, L = x.shape
    for t in prange(P * C):
        p = t // C
        c = t % C
        if mode:
            run_nt(x[p, c], out[p, c], m, a, b)
            if mode == 2:
                sfence()
        else:
            xr = x[p, c]
            o = out[p, c]
            for k in range(L):
                o[k] = (xr[k] - m) * a + b
    sfence()


def bench(f, *args, reps=30):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t)
    return np.median(ts) * 1e3


for shape in [(32, 256, 28, 28), (32, 1024, 14, 14), (32, 64, 112, 112), (8, 64, 56, 56)]:
    xt = torch.randn(*shape)
    yt = torch.empty_like(xt)
    x = xt.numpy().reshape(shape[0], shape[1], -1)
    y = yt.numpy().reshape(x.shape)
    m, a, b = np.float32(0.1), np.float32(2), np.float32(1)
    for mode in (0, 1, 2):
        y[:] = 0
        per_run(x, y, m, a, b, mode)
        assert np.allclose(y, (x - m) * a + b)
    for _ in range(2):
        print(shape, "ordinary %.3f  streaming %.3f  streaming, fence per run %.3f  torch copy_ %.3f ms" % (
            bench(per_run, x, y, m, a, b, 0), bench(per_run, x, y, m, a, b, 1), bench(per_run, x, y, m, a, b, 2),
            bench(yt.copy_, xt)))

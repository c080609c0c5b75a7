"""Where the output starts within a cache line: the kernels' backward, training forward
and eval on a (P, C, 1) view (the BatchNorm1d / channels-last form) with inputs and
output placed 0, 16 or 32 bytes past a 64-byte line (NumPy allocates 16 bytes past
one, torch on a line), then normkit.numpy's batch_norm / batch_norm_backward calls on
NumPy arrays as a user would pass them. Two threads, medians in ms.
Usage: out_align.py PxC [nont] (nont: streaming stores off)"""
import os
import sys

import numpy as np

import normkit.numpy as nnp
from normkit import kernels
from normkit.kernels import stream

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median_time import median_time  # noqa: E402

if "nont" in sys.argv[2:]:
    stream.STREAM_MIN_BYTES = stream.STREAM_MIN_GRAD_BYTES = 1 << 40
P, C = (int(v) for v in sys.argv[1].split("x"))


def at(off, like):
    buf = np.empty(like.size * like.itemsize + 128, np.uint8)
    s = (-buf.ctypes.data) % 64 + off
    r = buf[s:s + like.size * like.itemsize].view(like.dtype).reshape(like.shape)
    r[:] = like
    return r


def ms(f):
    return median_time(f, 100, 10) * 1e3


rng = np.random.default_rng(0)
x0 = rng.standard_normal((P, C, 1), dtype=np.float32)
g0 = rng.standard_normal(x0.shape, dtype=np.float32)
mean = x0.mean(axis=(0, 2)).astype(np.float64)
rstd = np.ones(C)
w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
for xo, oo in [(0, 0), (0, 16), (16, 16), (16, 0), (0, 32)]:
    x, g, dx, y = at(xo, x0), at(xo, g0), at(oo, x0), at(oo, x0)
    r = (ms(lambda: kernels.backward(g, x, mean, rstd, w, True, dx)), ms(lambda: kernels.forward_batch(x, w, b, 1e-5, y)),
         ms(lambda: kernels.forward_fixed(x, mean, rstd, w, b, 1e-5, y)))
    print(f"inputs at {xo:2d}, output at {oo:2d} past a line: backward {r[0]:.3f}  forward {r[1]:.3f}  eval {r[2]:.3f}",
          f"(streamed: {stream.streams(dx.nbytes, True)}, {stream.streams(y.nbytes)})", flush=True)
xa, ga = x0.reshape(P, C).copy(), g0.reshape(P, C).copy()  # NumPy's own allocations
res = nnp.batch_norm(xa)
for _ in range(2):
    print(f"normkit.numpy, inputs at {xa.ctypes.data % 64} past a line: batch_norm {ms(lambda: nnp.batch_norm(xa)):.3f}",
          f"batch_norm_backward {ms(lambda: nnp.batch_norm_backward(ga, xa, res.mean, res.var)):.3f}",
          f"(output at {nnp.batch_norm(xa).y.ctypes.data % 64})", flush=True)

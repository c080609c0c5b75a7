"""BatchNorm2d's training forward, backward and eval kernels (norm.forward_batch, norm.backward,
norm.forward_fixed) of this tree and of another tree's copy of the package, in one process,
alternating rounds: the other tree's normkit is imported as a second package (`normkit_ab`,
through a symbolic link in a temporary directory; the kernels import each other relatively,
and Numba caches each source file apart). Medians in us over rounds of 50 calls; outputs
checked equal. SUMS=1 in the environment times the reductions alone instead: the forward's
moments (norm.moments) and the backward's paired sums (norm.grad_sums), and prints each
tree's largest errors against float64 NumPy (relative to the largest value). Arrays start on
a cache line (stream.aligned_empty; NumPy's own allocations land 16 bytes past one at random,
which moves streamed kernels by up to 1.5x, output_buffers.py; the records before the
borrowed views used NumPy's). THREADS=n in the environment: n threads (default: Numba's).
Usage: [SUMS=1] kernel_ab.py OTHER_TREE SHAPE [SHAPE ...]"""
import importlib
import os
import sys
import tempfile
import time

import numba
import numpy as np

from normkit.kernels import norm as this
from normkit.kernels.stream import aligned_empty

if os.environ.get("THREADS"):
    numba.set_num_threads(int(os.environ["THREADS"]))
link_dir = tempfile.mkdtemp()
os.symlink(os.path.abspath(sys.argv[1]) + "/normkit", link_dir + "/normkit_ab")
sys.path.insert(0, link_dir)
other = importlib.import_module("normkit_ab.kernels.norm")
forms = {sys.argv[1]: other, "this tree": this}


def rounds(f, n=50):
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e6


for spec in sys.argv[2:]:
    shape = tuple(int(v) for v in spec.split("x"))
    N, C = shape[:2]
    L = int(np.prod(shape[2:]))
    rng = np.random.default_rng(0)
    x, dy = aligned_empty((N, C, L), np.float32), aligned_empty((N, C, L), np.float32)
    x[:] = rng.standard_normal((N, C, L), dtype=np.float32)
    dy[:] = rng.standard_normal((N, C, L), dtype=np.float32)
    w = rng.random(C, dtype=np.float32) + 0.5
    b = rng.standard_normal(C, dtype=np.float32)
    outs = {}
    for k, mod in forms.items():
        out, dx = aligned_empty(x.shape, x.dtype), aligned_empty(x.shape, x.dtype)
        mean, var, rstd = mod.forward_batch(x, w, b, 1e-5, out)
        dw, db = mod.backward(dy, x, mean, rstd, w, True, dx)
        outs[k] = (out, dx, mean, var, dw, db)
    dirs = ("moments", "sums") if os.environ.get("SUMS") else ("fwd", "bwd", "eval")
    errors = []
    if "sums" in dirs:  # each tree's reductions against float64 NumPy, largest relative errors
        x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
        mean64, var64 = x64.mean((0, 2)), x64.var((0, 2))
        s1_64 = dy64.sum((0, 2))
        s2_64 = (dy64 * (x64 - outs["this tree"][2][None, :, None])).sum((0, 2))
        for k, mod in forms.items():
            mean, var = mod.moments(x)
            s1, s2 = mod.grad_sums(dy, x, outs["this tree"][2])
            err = [np.abs(a - e).max() / np.abs(e).max() for a, e in
                   ((mean, mean64), (var, var64), (s1, s1_64), (s2, s2_64))]
            errors.append(f"  {k:16s}max relative error: mean {err[0]:.1e} var {err[1]:.1e} sum(dy) {err[2]:.1e} "
                          f"sum(dy*(x-mean)) {err[3]:.1e}")
    else:
        for a, bb in zip(*outs.values()):
            assert np.allclose(a, bb, rtol=1e-5, atol=1e-5)
    res = {(k, d): [] for k in forms for d in dirs}
    for _ in range(7):
        for k, mod in forms.items():
            out, dx = aligned_empty(x.shape, x.dtype), aligned_empty(x.shape, x.dtype)
            mean, var, rstd = mod.forward_batch(x, w, b, 1e-5, out)
            if "sums" in dirs:
                res[k, "moments"].append(rounds(lambda: mod.moments(x)))
                res[k, "sums"].append(rounds(lambda: mod.grad_sums(dy, x, mean)))
                continue
            res[k, "fwd"].append(rounds(lambda: mod.forward_batch(x, w, b, 1e-5, out)))
            res[k, "bwd"].append(rounds(lambda: mod.backward(dy, x, mean, rstd, w, True, dx)))
            res[k, "eval"].append(rounds(lambda: mod.forward_fixed(x, mean, var, w, b, 1e-5, out)))
    print(spec)
    for k in forms:
        print(f"  {k:16s}" + "   ".join(f"{d} {np.median(v):8.1f} us ({min(v):.0f}-{max(v):.0f})"
                                        for d in dirs for v in [res[k, d]]))
    for line in errors:
        print(line)

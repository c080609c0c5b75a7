"""BatchNorm2d's training forward and backward kernels (norm.forward_batch, norm.backward)
of this tree and of another tree's copy of the package, in one process, alternating
rounds: the other tree's normkit is imported as a second package (`normkit_ab`, through a
symbolic link in a temporary directory; the kernels import each other relatively, and
Numba caches each source file apart). Medians in us over rounds of 50 calls; outputs
checked equal. THREADS=n in the environment: n threads (default: Numba's).
Usage: kernel_ab.py OTHER_TREE SHAPE [SHAPE ...]"""
import importlib
import os
import sys
import tempfile
import time

import numba
import numpy as np

from normkit.kernels import norm as this

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
    x = rng.standard_normal((N, C, L), dtype=np.float32)
    dy = rng.standard_normal((N, C, L), dtype=np.float32)
    w = rng.random(C, dtype=np.float32) + 0.5
    b = rng.standard_normal(C, dtype=np.float32)
    outs = {}
    for k, mod in forms.items():
        out, dx = np.empty_like(x), np.empty_like(x)
        mean, var, rstd = mod.forward_batch(x, w, b, 1e-5, out)
        dw, db = mod.backward(dy, x, mean, rstd, w, True, dx)
        outs[k] = (out, dx, mean, var, dw, db)
    for a, bb in zip(*outs.values()):
        assert np.allclose(a, bb, rtol=1e-5, atol=1e-5)
    res = {(k, d): [] for k in forms for d in ("fwd", "bwd")}
    for _ in range(7):
        for k, mod in forms.items():
            out, dx = np.empty_like(x), np.empty_like(x)
            mean, var, rstd = mod.forward_batch(x, w, b, 1e-5, out)
            res[k, "fwd"].append(rounds(lambda: mod.forward_batch(x, w, b, 1e-5, out)))
            res[k, "bwd"].append(rounds(lambda: mod.backward(dy, x, mean, rstd, w, True, dx)))
    print(spec)
    for k in forms:
        f, g = res[k, "fwd"], res[k, "bwd"]
        print(f"  {k:16s} forward {np.median(f):8.1f} us ({min(f):.0f}-{max(f):.0f})"
              f"   backward {np.median(g):8.1f} us ({min(g):.0f}-{max(g):.0f})")

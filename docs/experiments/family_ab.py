"""The family's kernels of this tree and of another tree's copy of the package, in one
process, alternating rounds, as kernel_ab.py does for BatchNorm's (the other tree imported
as `normkit_ab` through a symbolic link): LayerNorm's row kernels (rowwise.row_forward,
rowwise.row_backward) for specs `ln:RxD`, GroupNorm's (grouped.group_forward,
grouped.group_backward) for `gn:NxCxL:G`. Medians in us over rounds of 50 calls (min-max);
outputs checked equal to 1e-5. Arrays start on a cache line (stream.aligned_empty).
ROUNDS=n in the environment: n rounds (default 7).
Usage: family_ab.py OTHER_TREE SPEC [SPEC ...]"""
import importlib
import os
import sys
import tempfile
import time

import numpy as np

from normkit.kernels import grouped, rowwise
from normkit.kernels.stream import aligned_empty

link_dir = tempfile.mkdtemp()
os.symlink(os.path.abspath(sys.argv[1]) + "/normkit", link_dir + "/normkit_ab")
sys.path.insert(0, link_dir)
trees = {sys.argv[1]: "normkit_ab.kernels", "this tree": "normkit.kernels"}


def rounds(f, n=50):
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e6


def layer_norm(pkg, x, dy, w, b):
    mod = importlib.import_module(pkg + ".rowwise")
    out, dx = aligned_empty(x.shape, x.dtype), aligned_empty(x.shape, x.dtype)
    mean, var, rstd = mod.row_forward(x, w, b, 1e-5, out)
    return (lambda: mod.row_forward(x, w, b, 1e-5, out),
            lambda: mod.row_backward(dy, x, mean, rstd, w, dx), (out, dx, mean, var))


def group_norm(pkg, x, dy, w, b, G):
    mod = importlib.import_module(pkg + ".grouped")
    out, dx = aligned_empty(x.shape, x.dtype), aligned_empty(x.shape, x.dtype)
    mean, var, rstd = mod.group_forward(x, G, w, b, 1e-5, out)
    return (lambda: mod.group_forward(x, G, w, b, 1e-5, out),
            lambda: mod.group_backward(dy, x, G, mean, rstd, w, dx), (out, dx, mean, var))


for spec in sys.argv[2:]:
    kind, dims, *rest = spec.split(":")
    shape = tuple(int(v) for v in dims.split("x"))
    rng = np.random.default_rng(0)
    x, dy = aligned_empty(shape, np.float32), aligned_empty(shape, np.float32)
    x[:] = rng.standard_normal(shape, dtype=np.float32)
    dy[:] = rng.standard_normal(shape, dtype=np.float32)
    C = shape[-1] if kind == "ln" else shape[1]
    w = rng.random(C, dtype=np.float32) + 0.5
    b = rng.standard_normal(C, dtype=np.float32)
    make = layer_norm if kind == "ln" else (lambda pkg, *a: group_norm(pkg, *a, int(rest[0])))
    calls = {k: make(pkg, x, dy, w, b) for k, pkg in trees.items()}
    for k, (fwd, bwd, outs) in calls.items():
        fwd(), bwd()
    for a, bb in zip(*(c[2] for c in calls.values())):
        assert np.allclose(a, bb, rtol=1e-5, atol=1e-5)
    res = {(k, d): [] for k in calls for d in ("fwd", "bwd")}
    for _ in range(int(os.environ.get("ROUNDS", 7))):
        for k, (fwd, bwd, _) in calls.items():
            res[k, "fwd"].append(rounds(fwd))
            res[k, "bwd"].append(rounds(bwd))
    print(spec)
    for k in calls:
        print(f"  {k:16s}" + "   ".join(f"{d} {np.median(v):8.1f} us ({min(v):.0f}-{max(v):.0f})"
                                        for d in ("fwd", "bwd") for v in [res[k, d]]))

"""Task shapes of the columns pattern (channels-last and BatchNorm1d statistics):
column block and row-task count, timed side by side in interleaved rounds on the
bench's channels-last and BatchNorm1d shapes, forward (square) and backward sums.
Prints each variant's median time relative to the current default (below 1 = faster).
Usage: col_tasks.py [rounds] [--default] [--small]"""
import sys, time
import numpy as np
from normkit.kernels import reduce

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 15
# (column block, elements per row task, most row tasks)
VARIANTS = {
    "default": (reduce.COL_BLOCK, reduce.COL_TASK_ELEMS, reduce.COL_TASKS_MAX),
    "blk2048 tm16": (2048, reduce.COL_TASK_ELEMS, 16),
    "blk1024 tm4": (1024, reduce.COL_TASK_ELEMS, 4),
    "blk2048 tm4": (2048, reduce.COL_TASK_ELEMS, 4),
    "blk2048 tm2": (2048, reduce.COL_TASK_ELEMS, 2),
    "blk2048 e256K tm16": (2048, 1 << 18, 16),
}
if "--default" in sys.argv:  # only the current default (to run at two commits)
    VARIANTS = {"default": VARIANTS["default"]}
SHAPES = [  # (rows, channels): N*H*W x C for channels-last, N x C for BatchNorm1d
    (25088, 256), (1568, 2048), (6272, 1024), (25088, 512), (100352, 256), (25088, 64),
    (1024, 256), (8192, 512), (16384, 256), (65536, 1024),
    (512, 256), (768, 256), (128, 1024),  # two and three row tasks by default
]
if "--small" in sys.argv:
    SHAPES = SHAPES[-3:]


def burst(f, n):
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


for P, C in SHAPES:
    x = np.random.default_rng(0).standard_normal((P, C, 1), dtype=np.float32)
    g = np.random.default_rng(1).standard_normal((P, C, 1), dtype=np.float32)
    sh = x[0, :, 0].astype(np.float64)
    zero = np.zeros(C)
    s1 = np.empty(C)
    s2 = np.empty(C)
    n = max(2, 3_000_000 // x.size)
    for kind in ("fwd", "bwd"):
        if kind == "fwd":
            calls = {k: (lambda v=v: reduce.sums_par(x, x, sh, sh, s1, s2, reduce.CHUNK, *v, True)) for k, v in VARIANTS.items()}
        else:
            calls = {k: (lambda v=v: reduce.sums_par(g, x, zero, sh, s1, s2, reduce.CHUNK, *v, False)) for k, v in VARIANTS.items()}
        ref = {}
        for k, f in calls.items():  # same results whatever the task shape (up to float64 rounding)
            f()
            ref[k] = (s1.copy(), s2.copy())
            assert np.allclose(ref[k][1], ref["default"][1], rtol=1e-12), k
            burst(f, 2)
        times = {k: [] for k in calls}
        for _ in range(ROUNDS):
            for k, f in calls.items():
                times[k].append(burst(f, n))
        med = {k: float(np.median(v)) for k, v in times.items()}
        base = med["default"]
        print(f"{P}x{C} {kind}: default {base * 1e3:.3f} ms (min {min(times['default']) * 1e3:.3f}); " + ", ".join(f"{k} {med[k] / base:.2f}" for k in calls if k != "default"), flush=True)

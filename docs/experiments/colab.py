import numpy as np
from numba import prange
from normkit.kernels._jit import helper, twin
from normkit.kernels import reduce
from normkit.kernels.reduce import sums_par, task_bounds, ROW_MIN
from normkit.bench.timing import measure_interleaved
@helper
def _col_rows_old(u, v, uw, vw, r0, r1, j0, nj, a1, a2):
    for r in range(r0, r1):
        ur = u[r, j0:j0 + nj]
        vr = v[r, j0:j0 + nj]
        for j in range(nj):
            d = ur[j] - uw[j]
            a1[j] += d
            a2[j] += d * (vr[j] - vw[j])
src = reduce._sums
import types
g = dict(src.__globals__); g["_col_rows"] = _col_rows_old
old = types.FunctionType(src.__code__, g, "_sums_oldx")
old_par, _ = twin(old)
for P, C in [(1568, 2048), (8192, 512), (25088, 256), (1024, 256)]:
    x = np.random.randn(P, C, 1).astype(np.float32) + 3
    sh = x[0, :, 0].astype(np.float64)
    s1 = np.empty(C); s2 = np.empty(C); t1 = np.empty(C); t2 = np.empty(C)
    cfg = (reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS, reduce.COL_TASKS_MAX)
    f_new = lambda: sums_par(x, x, sh, sh, s1, s2, *cfg)
    f_old = lambda: old_par(x, x, sh, sh, t1, t2, *cfg)
    f_new(); f_old()
    print(P, C, "rel diff", np.abs(s2 - t2).max() / np.abs(t2).max())
    for k, t in measure_interleaved({"new": f_new, "old": f_old}, budget=0.5).items():
        print(f"   {k} {t.ms:.3f} {t.min*1e3:.3f}")

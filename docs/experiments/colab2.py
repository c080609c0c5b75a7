import numpy as np, torch
from normkit.kernels import reduce
from normkit.kernels.reduce import sums_par
from normkit.bench.timing import measure_interleaved
for P, C in [(1568, 2048), (8192, 512), (25088, 256), (1024, 256)]:
    x = torch.randn(P, C, 1).numpy() + 3
    sh = x[0, :, 0].astype(np.float64)
    s1 = np.empty(C); s2 = np.empty(C); t1 = np.empty(C); t2 = np.empty(C)
    cfg = (reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS, reduce.COL_TASKS_MAX)
    f_new = lambda: sums_par(x, x, sh, sh, s1, s2, *cfg, True)
    f_old = lambda: sums_par(x, x, sh, sh, t1, t2, *cfg, False)
    f_new(); f_old()
    print(P, C, "rel diff", np.abs(s2 - t2).max() / np.abs(t2).max(), np.abs(s1 - t1).max())
    for k, t in measure_interleaved({"square": f_new, "general": f_old}, budget=0.5).items():
        print(f"   {k} {t.ms:.3f} {t.min*1e3:.3f}")

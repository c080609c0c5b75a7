"""The columns pattern's forward sweep (``reduce._col_rows_sq``): which vector registers
its packed instructions use (compiled afresh, uncached, so that ``inspect_asm`` works),
and the serial statistics' speed on 1024x256 in values per ns.
Usage: col_asm.py"""
import collections, re, time
import numpy as np
from numba import njit
from normkit.kernels import reduce
from normkit.kernels._jit import FASTMATH

f = njit(fastmath=FASTMATH)(reduce._col_rows_sq.py_func)
x = np.random.default_rng(0).standard_normal((1024, 256), dtype=np.float32)
uw, a1, a2 = np.zeros(256), np.zeros(256), np.zeros(256)
f(x, uw, 0, 1024, 0, 256, a1, a2)
asm = list(f.inspect_asm().values())[0]
counts = collections.Counter(re.findall(r"\b(v[a-z0-9]+pd|vcvtps2pd)\s+[^\n]*?%(zmm|ymm|xmm)", asm))
print("packed float64 instructions by register width:", dict(counts))
x3 = x.reshape(1024, 256, 1)
sh, s1, s2 = np.zeros(256), np.empty(256), np.empty(256)
run = lambda: reduce.sums_ser(x3, x3, sh, sh, s1, s2, reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS, reduce.COL_TASKS_MAX, True)
for _ in range(50):
    run()
times = []
for _ in range(7):
    t = time.perf_counter()
    for _ in range(2000):
        run()
    times.append((time.perf_counter() - t) / 2000)
print(f"sums_ser 1024x256: {np.median(times) * 1e6:.1f} us, {x.size / np.median(times) / 1e9:.1f} values/ns")

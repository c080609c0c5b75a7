"""The timing loop shared by this session's experiment scripts (older scripts keep their own
copies, as they were run): ``median_time(f, n, warm)`` calls ``f`` ``warm`` times, then
``n`` times one by one, and returns the median seconds of a call. Import it from a
script in this folder after ``sys.path.insert(0, os.path.dirname(__file__))`` (so it
also works under run_at.py)."""
import time

import numpy as np


def median_time(f, n, warm):
    for _ in range(warm):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))

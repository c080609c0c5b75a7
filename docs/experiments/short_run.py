"""Training forward and eval kernels on one shape; run once per value of
elementwise.SHORT_RUN (edited by hand, NUMBA_DISABLE_CACHE=1). Usage: short_run.py SHAPE"""
import sys, numpy as np, torch, time
import normkit.kernels.elementwise as E
import normkit.kernels as K
from normkit.bench.timing import measure_interleaved
shape = tuple(int(v) for v in sys.argv[1].split("x"))
x = torch.randn(*shape); out = torch.empty_like(x)
xv = x.numpy().reshape(shape[0], shape[1], -1); ov = out.numpy().reshape(xv.shape)
C = shape[1]; w = np.ones(C, np.float32); b = np.zeros(C, np.float32)
mean, var, rstd = K.forward_batch(xv, w, b, 1e-5, ov)
g = torch.randn(*shape); gv = g.numpy().reshape(xv.shape); dx = torch.empty_like(x); dv = dx.numpy().reshape(xv.shape)
r = measure_interleaved({"eval": lambda: K.forward_fixed(xv, mean, var, w, b, 1e-5, ov),
                         "fwd": lambda: K.forward_batch(xv, w, b, 1e-5, ov)}, budget=1.0)
print("SHORT_RUN", E.SHORT_RUN, shape, "  ".join(f"{k} {v.median*1e3:.3f}" for k, v in r.items()))

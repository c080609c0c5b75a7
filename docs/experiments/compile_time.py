"""CPU and wall time of the first BatchNorm2d training step with an empty JIT cache, and
the Numba functions that compiled longest. Usage: compile_time.py"""
import os, tempfile, time, sys
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp()
import torch
from numba.core import event as ev
import normkit.nn as nkn
rec = ev.RecordingListener()
ev.register("numba:compile", rec)
torch.set_num_threads(2)
bn = nkn.BatchNorm2d(32)
xb = torch.randn(32, 32, 32, 32, requires_grad=True)
import resource
c0 = resource.getrusage(resource.RUSAGE_SELF); t = time.perf_counter(); bn(xb).sum().backward(); wall = time.perf_counter() - t; c1 = resource.getrusage(resource.RUSAGE_SELF); print("cpu %.2f s" % (c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime))
tot = {}  # per function: time from the start to the end of its compilations (callees' included)
own = {}  # the same less the callees' compilations that ran inside it
stack = []
for ts, e in rec.buffer:
    key = e.data["dispatcher"].py_func.__qualname__ if e.data and "dispatcher" in e.data else str(e.data)
    if e.is_start: stack.append([ts, 0.0])
    else:
        t0, inner = stack.pop()
        tot[key] = tot.get(key, 0) + ts - t0
        own[key] = own.get(key, 0) + ts - t0 - inner
        if stack: stack[-1][1] += ts - t0
print("wall %.2f s" % wall)
ours = [e for _, e in rec.buffer if e.is_start and e.data["dispatcher"].py_func.__module__.startswith("normkit")]
print("specialisations compiled in normkit's modules: %d" % len(ours))
print("with callees, own: function (%d compiled)" % len(tot))
for k, v in sorted(tot.items(), key=lambda kv: -kv[1])[:12]: print("%.2f  %.2f  %s" % (v, own[k], k))

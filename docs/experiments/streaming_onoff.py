"""normkit layers with streaming stores on and off, and torch, interleaved.
Usage: streaming_onoff.py [FILTER] [--keep]  (--keep: allocator.keep_freed_memory())"""
import sys, torch, numpy as np
import normkit.allocator
if "--keep" in sys.argv:
    sys.argv.remove("--keep")
    print("keep_freed_memory", normkit.allocator.keep_freed_memory())
import normkit.nn as nkn
from normkit.kernels import stream
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
cases = [("bn", (32,256,28,28), False), ("bn", (32,1024,14,14), False), ("bn", (32,64,112,112), False), ("bn", (32,256,28,28), True), ("bn", (32,2048,7,7), False),
         ("bn", (8,64,56,56), False), ("ln", (8192,4096), False), ("ln", (4096,768), False), ("gn", (32,256,28,28), False), ("gn", (32,64,112,112), False)]
if len(sys.argv) > 1: cases = [c for c in cases if sys.argv[1] in str(c)]
def mk(kind, shape):
    if kind == "bn": return nkn.BatchNorm2d(shape[1]), torch.nn.BatchNorm2d(shape[1])
    if kind == "ln": return nkn.LayerNorm(shape[-1]), torch.nn.LayerNorm(shape[-1])
    return nkn.GroupNorm(32, shape[1]), torch.nn.GroupNorm(32, shape[1])
for kind, shape, cl in cases:
    m, t = mk(kind, shape)
    x = torch.randn(*shape)
    if cl: x = x.contiguous(memory_format=torch.channels_last)
    xg = x.clone().requires_grad_(); g = torch.randn_like(x)
    def fwd(mod):
        return lambda: mod(x)
    def fb(mod):
        def f():
            xg.grad = None
            mod(xg).backward(g)
        return f
    def with_stream(flag, fn):
        def f():
            stream.streaming(flag); fn(); stream.streaming(True)
        return f
    for d, mkf in (("fwd", fwd), ("fwd_bwd", fb)):
        r = measure_interleaved({"nt": with_stream(True, mkf(m)), "plain": with_stream(False, mkf(m)), "torch": mkf(t)}, budget=0.3)
        med = {k: v.median * 1e3 for k, v in r.items()}
        print(f"{kind} {shape} {'CL' if cl else ''} {d}: nt {med['nt']:.2f} plain {med['plain']:.2f} torch {med['torch']:.2f}  x torch nt {med['torch']/med['nt']:.2f} plain {med['torch']/med['plain']:.2f}", flush=True)

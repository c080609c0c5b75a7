"""BatchNorm1d 1024x256 (and two neighbours) training forward: the current two-pass kernel
against a column-blocked fused form (``blk.py``: each task its channels over all rows,
statistics then apply while they are in cache), with C/2, C/4, C/8 channels per task.
Usage: blk1d.py"""
import sys, time
import numpy as np
sys.path.insert(0, __import__("os").path.dirname(__file__))
import blk
from normkit.kernels import norm
def loop(f, n=2000):
    for _ in range(50): f()
    best=[]
    for r in range(7):
        t = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - t) / n * 1e6)
    return round(min(best),1), round(sorted(best)[3],1)
for shape in [(1024,256,1),(2048,256,1),(1024,512,1)]:
    P,C,L=shape
    x = np.random.randn(*shape).astype(np.float32); out = np.empty_like(x)
    w = np.ones(C, np.float32); b = np.zeros(C, np.float32)
    par, fused, cfg = norm._config(x, out=out)
    fp = norm._forward_batch[0]
    r = blk.blk_forward(x, w, b, 1e-5, out, C//2)
    print(shape, np.abs(r[0]-x.mean(axis=(0,2))).max())
    for rep in range(2):
        print(" current", loop(lambda: fp(x, w, b, 1e-5, out, cfg)), "blk C/2", loop(lambda: blk.blk_forward(x, w, b, 1e-5, out, C//2)),
          "blk C/4", loop(lambda: blk.blk_forward(x, w, b, 1e-5, out, C//4)), "blk C/8", loop(lambda: blk.blk_forward(x, w, b, 1e-5, out, C//8)))

"""One kernel, one input, several outputs allocated the same way: does the output buffer
matter? The eval kernel (norm.forward_fixed) of a (P, C, L) view writes into each of K
outputs from stream.aligned_empty (the NumPy front end's allocation; ALLOC=numpy in the
environment: numpy.empty, 16 bytes past a cache line), interleaved rounds;
medians in us per output. Also reports, per output, the fraction of its pages the kernel
backs with transparent huge pages (AnonHugePages of its mappings in /proc/self/smaps,
where the outputs have mappings of their own). STREAM=0/1 in the environment forces
ordinary/streaming stores (default: the library's choice).
Usage: [STREAM=0|1] [ALLOC=numpy] output_buffers.py PxCxL [K]"""
import os
import re
import sys

import numpy as np

from normkit import kernels
from normkit.bench.timing import measure_interleaved
from normkit.kernels import stream


def huge_fraction(arr):
    lo, hi = arr.ctypes.data, arr.ctypes.data + arr.nbytes
    huge = rss = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = int(m.group(1), 16) < hi and int(m.group(2), 16) > lo
            elif inside and line.startswith("AnonHugePages:"):
                huge += int(line.split()[1])
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return huge / rss if rss else float("nan")


if "STREAM" in os.environ:
    stream.streaming(os.environ["STREAM"] == "1")
shape = tuple(int(v) for v in sys.argv[1].split("x"))
K = int(sys.argv[2]) if len(sys.argv) > 2 else 4
rng = np.random.default_rng(0)
x = stream.aligned_empty(shape, np.float32)
x[:] = rng.standard_normal(shape, dtype=np.float32)
C = shape[1]
mean, var = rng.standard_normal(C), rng.random(C) + 0.5
w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
alloc = np.empty if os.environ.get("ALLOC") == "numpy" else stream.aligned_empty
outs = [alloc(shape, np.float32) for _ in range(K)]
for o in outs:
    kernels.forward_fixed(x, mean, var, w, b, 1e-5, o)
print(f"{sys.argv[1]}: streams {stream.streams(outs[0].nbytes, out=outs[0])}; huge-page fraction per output",
      ", ".join(f"{huge_fraction(o):.2f}" for o in outs), f"(input {huge_fraction(x):.2f});",
      "bytes past a cache line", ", ".join(str(o.ctypes.data % stream.LINE) for o in outs))
fns = {f"out{i}": (lambda o=o: kernels.forward_fixed(x, mean, var, w, b, 1e-5, o)) for i, o in enumerate(outs)}
for _ in range(3):
    res = measure_interleaved(fns, budget=0.3)
    print("  " + "   ".join(f"{k} {v.ms * 1e3:.0f}" for k, v in res.items()))

"""The small-ResNet training step: torch's BN, normkit's BN with streaming stores
(the default) and without, interleaved in one process. Usage: step_streaming.py [ROUNDS]"""
import copy
import sys

import torch

import normkit.nn as nkn
from normkit.bench.model import _step, small_resnet
from normkit.bench.timing import measure_interleaved
from normkit.kernels import stream

torch.set_num_threads(2)
base = small_resnet().train()
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 3, 32, 32, generator=g)
y = torch.randint(0, 10, (32,), generator=g)
ours = nkn.convert(copy.deepcopy(base))
run = _step(ours, x, y)


def without():
    stream.streaming(False)
    run()
    stream.streaming(True)


for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    t = measure_interleaved({"torch": _step(base, x, y), "streaming": run, "ordinary": without},
                            budget=1.5, min_reps=5, max_reps=50)
    print("  ".join(f"{k} {v.median * 1e3:.1f} ms" for k, v in t.items()), flush=True)

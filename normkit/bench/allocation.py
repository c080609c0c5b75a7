"""Allocation study: both peers on a large activation, default allocator vs the opt-in setting.

Each setting runs in a fresh process (allocator state is per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict

_SCRIPT = r"""
import json, sys, torch
tuned, threads, shape = sys.argv[1] == "tuned", int(sys.argv[2]), tuple(json.loads(sys.argv[3]))
if tuned:
    import normkit.allocator
    assert normkit.allocator.keep_freed_memory()
torch.set_num_threads(threads)
import numba
numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
import normkit.nn as nkn
from normkit.bench.timing import measure_interleaved
x = torch.randn(shape)
out = torch.empty_like(x)
a, b = nkn.BatchNorm2d(shape[1]), torch.nn.BatchNorm2d(shape[1])
t = measure_interleaved({"normkit": lambda: a(x), "torch": lambda: b(x),
                         "fresh output": lambda: torch.empty_like(x).copy_(x),
                         "existing output": lambda: out.copy_(x)}, budget=1.0)
print(json.dumps({k: v.ms for k, v in t.items()}))
"""


def allocation_study(shape=(32, 64, 112, 112), threads: int = 2) -> Dict[str, Dict[str, float]]:
    """Training-forward milliseconds per peer, and the cost of a fresh vs existing output,
    under ``default`` and ``tuned`` (:func:`normkit.allocator.keep_freed_memory`)."""
    out = {}
    for setting in ("default", "tuned"):
        res = subprocess.run([sys.executable, "-c", _SCRIPT, setting, str(threads), json.dumps(list(shape))],
                             capture_output=True, text=True, env=dict(os.environ), check=True, timeout=900)
        out[setting] = json.loads(res.stdout.strip().splitlines()[-1])
    return out

"""BatchNorm2d 32x64x112x112 (103 MB) forward+backward timed as `normkit bench` times it
(the same peers: normkit, torch eager, normkit's kernels into existing memory and the
floor's primitives, interleaved by normkit.bench.timing.measure_interleaved), with the
page faults and the system CPU time (all threads) of each peer's calls counted by
getrusage. Names after the layout keep only those peers (e.g. `normkit torch`).
Usage: fwd_bwd_faults.py channels_last|contiguous [PEER ...]"""
import resource
import sys

import torch

from normkit.bench.cases import Case
from normkit.bench.floor import primitive_callables
from normkit.bench.peers import make_callables
from normkit.bench.timing import measure_interleaved

torch.set_num_threads(2)
case = Case("BatchNorm2d", (32, 64, 112, 112), sys.argv[1], "fwd_bwd")
fns = make_callables(case, ("normkit", "torch", "kernel"))
fns.update(primitive_callables(case))
if sys.argv[2:]:
    fns = {k: v for k, v in fns.items() if k in sys.argv[2:]}
faults, system = {}, {}


def counted(name, f):
    def run():
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        f()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        faults[name] = faults.get(name, 0) + r1.ru_minflt - r0.ru_minflt
        system[name] = system.get(name, 0) + r1.ru_stime - r0.ru_stime
    return run


fns = {k: counted(k, f) for k, f in fns.items()}
for _ in range(2):
    faults.clear()
    system.clear()
    res = measure_interleaved(fns, budget=0.25)
    calls = {k: v.reps + 2 for k, v in res.items()}  # measure_interleaved's two untimed calls counted too
    print("  ".join(f"{k} {v.ms:.1f} ms ({faults[k] / calls[k]:.0f} faults, {system[k] / calls[k] * 1e3:.1f} ms system)"
                    for k, v in res.items()), flush=True)

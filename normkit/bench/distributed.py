"""``normkit bench --distributed``: the price of synchronising batch statistics.

Two gloo ranks on 127.0.0.1 (one thread each) time one training step
(forward + backward) of a BatchNorm2d layer for a sweep of activation sizes:

* ``local``: normkit's BatchNorm2d on each rank's own batch (no communication);
* ``sync``: normkit's SyncBatchNorm -- one small collective per direction;
* ``naive``: gather the full activations from every rank (autograd-aware
  all_gather), batch-normalize the concatenation, keep this rank's slice.

The sync overhead (``sync - local``) should stay flat as activations grow
(it moves ``O(C)`` numbers), while the naive approach grows with them. Each
rank reports its median; the table shows the slower rank (the step's cost).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

_WORKER = r"""
import json, os, sys, time, statistics
from datetime import timedelta
import torch, torch.distributed as dist
import torch.distributed.nn.functional as dfn
rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
sizes, reps = json.loads(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(1)
import numba
numba.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                        timeout=timedelta(seconds=120))
import normkit.nn as nkn
calls = {"n": 0}
for name in ("all_gather", "all_reduce", "all_gather_into_tensor", "broadcast", "reduce_scatter"):
    if hasattr(dist, name):
        orig = getattr(dist, name)
        def wrapped(*a, _orig=orig, **k):
            calls["n"] += 1
            return _orig(*a, **k)
        setattr(dist, name, wrapped)
results = []
C = 64
for hw in sizes:
    shape = (8, C, hw, hw)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(shape, generator=g, requires_grad=True)
    dy = torch.randn(shape, generator=g)
    local, sync, plain = nkn.BatchNorm2d(C), nkn.SyncBatchNorm(C), nkn.BatchNorm2d(C)
    def step_local():
        torch.autograd.grad(local(x), [x], dy)
    def step_sync():
        torch.autograd.grad(sync(x), [x], dy)
    def step_naive():
        full = torch.cat(dfn.all_gather(x), 0)
        y = plain(full)[rank * shape[0]:(rank + 1) * shape[0]]
        torch.autograd.grad(y, [x], dy)
    row = {"shape": list(shape), "MB_per_rank": x.numel() * 4 / 2**20}
    for label, fn in (("local", step_local), ("sync", step_sync), ("naive", step_naive)):
        for _ in range(3):
            fn()
        before = calls["n"]
        fn()
        row[label + "_collectives"] = calls["n"] - before
        times = []
        for _ in range(reps):
            dist.barrier()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        row[label + "_ms"] = statistics.median(times) * 1e3
    results.append(row)
with open(out, "w") as f:
    json.dump(results, f)
dist.barrier()
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(world: int = 2, quick: bool = False) -> List[Dict[str, Any]]:
    """Per activation size: each direction's slower-rank median (ms) and collective counts."""
    sizes, reps = ([8], 3) if quick else ([8, 16, 32, 64], 25)
    port = str(_free_port())
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.json") for r in range(world)]
        procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(r), str(world), port, outs[r],
                                   json.dumps(sizes), str(reps)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
        for p in procs:
            _, err = p.communicate(timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"a distributed benchmark rank failed:\n{err[-3000:]}")
        per_rank = [json.load(open(o)) for o in outs]
    rows = []
    for rank_rows in zip(*per_rank):
        row = dict(rank_rows[0])
        for key in ("local_ms", "sync_ms", "naive_ms"):
            row[key] = max(r[key] for r in rank_rows)
        rows.append(row)
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    out = ["| activation per rank | MB | local ms | sync ms | naive gather ms | sync overhead ms | naive overhead ms "
           "| collectives (local/sync/naive) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {'x'.join(map(str, r['shape']))} | {r['MB_per_rank']:.1f} | {r['local_ms']:.2f} | "
                   f"{r['sync_ms']:.2f} | {r['naive_ms']:.2f} | {r['sync_ms'] - r['local_ms']:.2f} | "
                   f"{r['naive_ms'] - r['local_ms']:.2f} | {r['local_collectives']}/{r['sync_collectives']}/"
                   f"{r['naive_collectives']} |")
    return "\n".join(out)

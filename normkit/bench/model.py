"""Whole-model measurements: a training step of a small ResNet-style net, its peak
memory, and the first-call latency with a cold and a warm JIT cache."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, Optional

import torch
from torch import nn

import normkit.nn as nkn

from .timing import Timing, measure_interleaved


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.short is None else self.short(x)))


def small_resnet(width: int = 32, classes: int = 10) -> nn.Module:
    """A ResNet-style net for 32x32 images: stem, three stages of two residual blocks."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        Block(width, width, 1), Block(width, width, 1),
        Block(width, 2 * width, 2), Block(2 * width, 2 * width, 1),
        Block(2 * width, 4 * width, 2), Block(4 * width, 4 * width, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes),
    )


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def run():
        loss = nn.functional.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
    return run


def training_step(batch: int = 32, budget: float = 1.0) -> Dict[str, Timing]:
    """Forward + backward of the small ResNet with torch's BN and with normkit's."""
    base = small_resnet().train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    ours = nkn.convert(copy.deepcopy(base))
    return measure_interleaved({"torch": _step(base, x, y), "normkit": _step(ours, x, y)},
                               budget=budget, min_reps=5, max_reps=50)


_PROBE = r"""
import json, os, sys, threading, time
t0 = time.perf_counter()
import torch
which, batch = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
from normkit.bench.model import small_resnet
import normkit.nn as nkn
bn = (nkn.BatchNorm2d if which == "normkit" else torch.nn.BatchNorm2d)(32)
xb = torch.randn(batch, 32, 32, 32, requires_grad=True)
tb = time.perf_counter()
bn(xb).sum().backward()  # the first training step through BatchNorm2d: JIT load or compile
first_bn = time.perf_counter() - tb
model = small_resnet().train()
if which == "normkit":
    model = nkn.convert(model)
g = torch.Generator().manual_seed(0)
x = torch.randn(batch, 3, 32, 32, generator=g); y = torch.randint(0, 10, (batch,), generator=g)
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    model.zero_grad(set_to_none=True)
    loss.backward()
t1 = time.perf_counter()
step()
first = time.perf_counter() - t1
import_to_step = time.perf_counter() - t0
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
from normkit.allocator import pool_bytes
pooled = pool_bytes()  # resident before the step, in use during it: counted as the step's
base = rss()
sampler = threading.Thread(target=sample); sampler.start()
step()
done.set(); sampler.join()
from normkit.bench.model import peak_tensor_bytes
print(json.dumps({"first_bn_step_s": first_bn, "first_step_s": first, "import_to_step_s": import_to_step,
                  "peak_step_bytes": max(0, peak[0] - base) + pooled, "peak_tensor_bytes": peak_tensor_bytes(step)}))
"""


def peak_tensor_bytes(fn) -> Optional[int]:
    """The peak of live tensor bytes allocated while ``fn()`` runs, from the torch
    profiler's memory events (every CPU tensor allocation and free, normkit's outputs
    included), plus everything normkit's output pool holds when ``fn`` starts (its
    blocks were allocated earlier, out of the profiler's sight: counted as live
    throughout, an upper bound). Unlike the process's resident memory it does not
    depend on what the C allocator keeps or returns, or on loaded code. None if the
    profiler's event stream is unavailable."""
    from torch.profiler import ProfilerActivity, profile

    from ..allocator import pool_bytes

    pooled = pool_bytes()

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
    except (AttributeError, RuntimeError):
        return None
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak + pooled


def _probe(which: str, batch: int, threads: int, env: Dict[str, str]) -> Dict[str, float]:
    full_env = dict(os.environ, **env)
    res = subprocess.run([sys.executable, "-c", _PROBE, which, str(batch), str(threads)],
                         capture_output=True, text=True, env=full_env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def fresh_process_costs(batch: int = 32, threads: int = 2) -> Dict[str, Dict[str, float]]:
    """First training step in a new process: torch's BN; normkit with an empty JIT cache
    (cold) and again with the cache that run left (warm); peak memory of the next step,
    as the process's resident memory (sampled) and as live tensor bytes (profiler)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        return {
            "torch": _probe("torch", batch, threads, env),
            "normkit (cold JIT cache)": _probe("normkit", batch, threads, env),
            "normkit (warm JIT cache)": _probe("normkit", batch, threads, env),
        }

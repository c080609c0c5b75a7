"""The memory floor: the simplest streaming operations that move a case's bytes.

Measured in the same run as the peers, into memory that already exists:

* training forward: one full read (a sum) plus one copy;
* inference forward: one copy;
* backward: two full reads plus one read-read-write pass (``out = x + dy``);
* forward + backward: the sum of the two.

Beside it, the price of a *fresh* output: allocating a tensor of the input's
size and writing it once, minus writing into existing memory. Above the size
the allocator keeps (glibc's mmap threshold), every fresh tensor is obtained
from the operating system page by page -- any PyTorch peer pays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from .cases import Case
from .peers import make_input
from .timing import measure_interleaved


@dataclass(frozen=True)
class Floor:
    seconds: float  # the streaming floor into existing memory
    alloc: float  # extra seconds per freshly allocated output of the input's size


_cache: Dict[Tuple, Tuple[float, float, float, float]] = {}


def _primitives(case: Case) -> Tuple[float, float, float, float]:
    key = (case.shape, case.layout, case.dtype)
    if key not in _cache:
        x = make_input(case)
        dy = make_input(case, seed=1)
        out = torch.empty_like(x)
        t = measure_interleaved({
            "read": lambda: torch.sum(x),
            "copy": lambda: out.copy_(x),
            "add": lambda: torch.add(x, dy, out=out),
            "fresh": lambda: torch.empty_like(x).copy_(x),
        }, budget=0.2)
        copy = t["copy"].median
        _cache[key] = (t["read"].median, copy, t["add"].median, max(0.0, t["fresh"].median - copy))
    return _cache[key]


def floor(case: Case) -> Floor:
    read, copy, add, alloc = _primitives(case)
    fwd = read + copy
    bwd = 2 * read + add
    seconds = {"train_fwd": fwd, "eval_fwd": copy, "bwd": bwd, "fwd_bwd": fwd + bwd}[case.direction]
    return Floor(seconds, alloc)


def outputs_allocated(case: Case) -> int:
    """Input-sized tensors each call allocates (y; dx; both)."""
    return {"train_fwd": 1, "eval_fwd": 1, "bwd": 1, "fwd_bwd": 2}[case.direction]

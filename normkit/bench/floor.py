"""The memory floor: the simplest streaming operations that move a case's bytes.

Timed interleaved with the peers of each case, into memory that already exists:

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
from typing import Callable, Dict

import torch

from .cases import Case
from .peers import make_input


@dataclass(frozen=True)
class Floor:
    seconds: float  # the streaming floor into existing memory
    alloc: float  # extra seconds per freshly allocated output of the input's size


#: Names of the streaming primitives, as timed beside the peers.
PRIMITIVES = ("floor:read", "floor:copy", "floor:add", "floor:fresh")


def primitive_callables(case: Case) -> Dict[str, Callable[[], object]]:
    """The floor's streaming operations on tensors of the case's shape and layout, to be
    timed interleaved with the peers (a floor measured apart would see another moment
    of a noisy machine): a sum, a copy and an add into existing memory, and a copy into
    a freshly allocated tensor."""
    x = make_input(case)
    dy = make_input(case, seed=1)
    out = torch.empty_like(x)
    return {
        "floor:read": lambda: torch.sum(x),
        "floor:copy": lambda: out.copy_(x),
        "floor:add": lambda: torch.add(x, dy, out=out),
        "floor:fresh": lambda: torch.empty_like(x).copy_(x),
    }


def floor(case: Case, seconds: Dict[str, float]) -> Floor:
    """The floor of ``case`` from the primitives' median ``seconds`` (keyed as :data:`PRIMITIVES`)."""
    read, copy, add = seconds["floor:read"], seconds["floor:copy"], seconds["floor:add"]
    alloc = max(0.0, seconds["floor:fresh"] - copy)
    fwd = read + copy
    bwd = 2 * read + add
    total = {"train_fwd": fwd, "eval_fwd": copy, "bwd": bwd, "fwd_bwd": fwd + bwd}[case.direction]
    return Floor(total, alloc)


def outputs_allocated(case: Case) -> int:
    """Input-sized tensors each call allocates (y; dx; both)."""
    return {"train_fwd": 1, "eval_fwd": 1, "bwd": 1, "fwd_bwd": 2}[case.direction]

"""Allocation of large CPU tensors: a pool and huge pages for normkit's own outputs,
and an opt-in allocator setting for the whole process.

Above glibc's mmap threshold every fresh tensor is mapped from the operating
system and its pages are faulted in one by one on first write, then unmapped
when it is freed. For activation-sized tensors this costs more than batch
normalization's own work: measured here, allocating and filling a 103 MB tensor
takes several times as long as writing into existing memory (BENCHMARKS.md).
Every PyTorch CPU peer pays it, for every output and gradient.

:func:`keep_freed_memory` tells glibc to serve large blocks from its heap and
to keep freed memory instead of returning it, so the next tensor of that size
reuses pages that are already mapped. The trade-off: the process's resident
memory stays at its peak (memory is reused, not given back to the system).
Equivalent environment variables, set before the process starts:
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. PyTorch's own
``THP_MEM_ALLOC_ENABLE=1`` (transparent huge pages for large allocations)
attacks the same cost from the other side: 512 times fewer page faults.

What normkit does by default, for its own outputs only (the forward's ``y``,
the backward's ``dx``): a fresh tensor of at least :data:`HUGE_PAGE_MIN` bytes
is advised to the kernel as transparent-huge-page memory (``madvise`` with
``MADV_HUGEPAGE``, one system call) before it is first written, so its pages
are faulted in 2 MiB at a time instead of 4 KiB -- what NumPy does for its own
arrays of 4 MiB and more. Measured here, a fresh 103 MB output then costs
about half as much to obtain and fill (BENCHMARKS.md). It has no effect where
transparent huge pages are disabled (``/sys/kernel/mm/transparent_hugepage``
set to ``never``) and none outside Linux; :func:`huge_pages` turns it off.

**The output pool.** Below glibc's largest mmap threshold freed blocks go back
to its heap, but the heap's top is trimmed (returned to the system) as soon
as more than twice the last threshold is free: in a training step, where
each layer's output and gradient are freed before the next step asks for
the same sizes again, that is every step, and their pages are faulted in
again. Opt-in, :func:`output_pool` keeps the memory of normkit's own outputs
(:data:`POOL_MIN` to :data:`POOL_BLOCK_MAX` bytes; larger blocks are glibc's
mmap chunks, fresh on every allocation, and get the huge-page advice above) in
a pool: a block is handed out again, for an output of exactly its size, once
no tensor or array refers to it any more. Measured on BatchNorm2d training
steps (``docs/experiments/output_pool.py``): the few hundred page faults per
step are gone and the step is 4-22% faster; in ``normkit bench``'s loops no
change, and the small ResNet's step peaks about 13 MB (18%) higher in live
bytes, the idle blocks the pool keeps counted in -- hence not the default. The
pool holds at most :data:`POOL_MAX` bytes (blocks in use included; beyond it,
outputs are ordinary fresh tensors); :func:`release_pool` frees its idle
blocks. Pooled outputs are ordinary CPU tensors in every respect but one: their
storage cannot grow (``resize_`` to more elements raises, as for any tensor
made by ``torch.from_numpy``).
"""

from __future__ import annotations

import ctypes
import math
import threading
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .kernels import stream
from .kernels.machine import libc_function

__all__ = [
    "HUGE_PAGE_MIN", "POOL_BLOCK_MAX", "POOL_MAX", "POOL_MIN", "advise_huge_pages", "huge_pages", "keep_freed_memory", "new_output",
    "output_pool", "pool_bytes", "release_pool",
]

#: Smallest output (bytes) that normkit advises as huge-page memory.
HUGE_PAGE_MIN = 4 << 20
#: Smallest output (bytes) served from the output pool.
POOL_MIN = 256 << 10
#: Largest output (bytes) served from the output pool: glibc's largest mmap
#: threshold. Larger blocks are mapped afresh by glibc on every allocation whatever
#: the heap does; they get the huge-page advice instead.
POOL_BLOCK_MAX = 32 << 20
#: Most bytes the output pool holds, blocks in use included.
POOL_MAX = 256 << 20
_MADV_HUGEPAGE = 14  # Linux
_HUGE = 2 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM = 128 * 1024


_huge_enabled = True


def _madvise_fn():
    return libc_function("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))


def huge_pages(enable: bool = True) -> bool:
    """Turn the huge-page advice for normkit's large outputs on (the default) or off.

    Returns whether the advice is available here (Linux with ``madvise``).
    """
    global _huge_enabled
    _huge_enabled = bool(enable)
    return bool(_madvise_fn())


def advise_huge_pages(address: int, nbytes: int) -> bool:
    """Advise the 2 MiB-aligned part of ``[address, address + nbytes)`` as huge-page memory.

    For fresh, not yet written memory of at least :data:`HUGE_PAGE_MIN` bytes
    (smaller blocks are left alone). Returns whether the advice was given; a
    refusal by the kernel changes nothing and is not an error.
    """
    if not _huge_enabled or nbytes < HUGE_PAGE_MIN:
        return False
    fn = _madvise_fn()
    if not fn:
        return False
    start = -(-address // _HUGE) * _HUGE
    end = (address + nbytes) // _HUGE * _HUGE
    if end <= start:
        return False
    return fn(start, end - start, _MADV_HUGEPAGE) == 0


def keep_freed_memory(enable: bool = True) -> bool:
    """Keep freed large blocks for reuse (``enable=True``) or restore glibc's defaults.

    Affects every allocation of the process from now on (torch, NumPy, normkit).
    Returns False, and changes nothing, where glibc's ``mallopt`` is unavailable
    (macOS, Windows, musl). With freed memory kept, normkit also writes outputs
    above 32 MiB with streaming stores (:mod:`normkit.kernels.stream`).
    """
    mallopt = libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    if mallopt is None:
        return False
    mmap_max, trim = (0, 2**31 - 1) if enable else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM)
    done = bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    if done:  # reused blocks are not freshly zeroed: large outputs gain from streaming stores
        stream.reused_memory(enable)
    return done


# --------------------------------------------------------------------------- the output pool


class _Block:
    """Pooled memory (a 1-D uint8 NumPy array over torch-allocated memory) and a weak
    reference to the array last made over it for an output: the array
    ``torch.from_numpy`` keeps alive for exactly as long as the output's storage
    lives (torch views, ``.numpy()`` arrays and autograd's saved tensors all hold
    that storage). The block is idle once that array is gone."""

    __slots__ = ("memory", "user")

    def __init__(self, memory: np.ndarray) -> None:
        self.memory = memory
        self.user: Optional[weakref.ref] = None

    def idle(self) -> bool:
        return self.user is None or self.user() is None


class _Pool:
    """Blocks by size in bytes, taken and dropped under a lock (so two threads never
    take one block)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blocks: Dict[int, List[_Block]] = {}
        self.total = 0
        self.enabled = False

    def take(self, nbytes: int, dtype: np.dtype, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
        """An array of ``shape`` and ``dtype`` (``nbytes`` in all) over an idle block, a
        new block if none is idle and the pool has room, or None. The caller hands
        it to ``torch.from_numpy`` and keeps no other reference to it."""
        with self.lock:
            block = next((b for b in self.blocks.get(nbytes, ()) if b.idle()), None)
            if block is None:
                if self.total + nbytes > POOL_MAX:
                    self._drop_idle(self.total + nbytes - POOL_MAX)
                    if self.total + nbytes > POOL_MAX:
                        return None
                block = _Block(torch.empty(nbytes, dtype=torch.uint8).numpy())  # seen by torch's profiler
                if nbytes >= HUGE_PAGE_MIN:
                    advise_huge_pages(block.memory.ctypes.data, nbytes)
                self.blocks.setdefault(nbytes, []).append(block)
                self.total += nbytes
            out = block.memory.view(dtype).reshape(shape)
            block.user = weakref.ref(out)
            return out

    def _drop_idle(self, wanted: int) -> int:
        """Forget idle blocks (their memory is freed) until ``wanted`` bytes are; the bytes freed."""
        freed = 0
        for nbytes in list(self.blocks):
            keep = []
            for block in self.blocks[nbytes]:
                if freed < wanted and block.idle():
                    freed += nbytes
                else:
                    keep.append(block)
            if keep:
                self.blocks[nbytes] = keep
            else:
                del self.blocks[nbytes]
        self.total -= freed
        return freed

    def forget(self) -> None:
        """Forget every block: idle ones are freed, those in use live on with their outputs."""
        self.blocks.clear()
        self.total = 0


_pool = _Pool()


def new_output(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A new contiguous CPU tensor for a normkit output: from the pool (float32/float64,
    :data:`POOL_MIN` to :data:`POOL_BLOCK_MAX` bytes), else ``torch.empty`` (advised
    as huge-page memory from :data:`HUGE_PAGE_MIN` bytes)."""
    np_dtype = NUMPY_DTYPES.get(dtype)
    if _pool.enabled and np_dtype is not None:
        shape = tuple(int(size) for size in shape)
        nbytes = math.prod(shape) * np_dtype.itemsize
        if POOL_MIN <= nbytes <= POOL_BLOCK_MAX:
            out = _pool.take(nbytes, np_dtype, shape)
            if out is not None:
                return torch.from_numpy(out)
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    if nbytes >= HUGE_PAGE_MIN:
        advise_huge_pages(out.data_ptr(), nbytes)
    return out


#: The NumPy dtypes of the torch dtypes normkit's kernels run on.
NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def output_pool(enable: Optional[bool] = None) -> bool:
    """Turn the output pool on or off (the default); with no argument, report the
    setting. Turned off, the pool forgets its blocks: idle ones are freed, those in
    use are freed with their outputs."""
    if enable is not None:
        with _pool.lock:
            _pool.enabled = bool(enable)
            if not enable:
                _pool.forget()
    return _pool.enabled


def pool_bytes() -> int:
    """Bytes the output pool holds, blocks in use and idle."""
    return _pool.total


def release_pool() -> int:
    """Free the pool's idle blocks (those no tensor refers to); returns the bytes freed."""
    with _pool.lock:
        return _pool._drop_idle(_pool.total)

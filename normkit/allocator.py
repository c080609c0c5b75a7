"""Allocation of large CPU tensors: huge pages for normkit's own outputs, and an
opt-in allocator setting for the whole process.

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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from .kernels import stream

__all__ = ["HUGE_PAGE_MIN", "advise_huge_pages", "huge_pages", "keep_freed_memory"]

#: Smallest output (bytes) that normkit advises as huge-page memory.
HUGE_PAGE_MIN = 4 << 20
_MADV_HUGEPAGE = 14  # Linux
_PAGE = 4096
_HUGE = 2 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM = 128 * 1024


def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    return lib if hasattr(lib, "mallopt") else None


_madvise = None
_huge_enabled = True


def _madvise_fn():
    global _madvise
    if _madvise is None:
        lib = _libc() if sys.platform.startswith("linux") else None
        fn = getattr(lib, "madvise", None) if lib is not None else None
        if fn is not None:
            fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            fn.restype = ctypes.c_int
        _madvise = fn or False
    return _madvise


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
    lib = _libc()
    if lib is None:
        return False
    mmap_max, trim = (0, 2**31 - 1) if enable else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM)
    done = bool(lib.mallopt(_M_MMAP_MAX, mmap_max)) and bool(lib.mallopt(_M_TRIM_THRESHOLD, trim))
    if done:  # reused blocks are not freshly zeroed: large outputs gain from streaming stores
        stream.reused_memory(enable)
    return done

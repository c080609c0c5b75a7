"""An opt-in allocator setting for large CPU tensors.

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
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

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


def keep_freed_memory(enable: bool = True) -> bool:
    """Keep freed large blocks for reuse (``enable=True``) or restore glibc's defaults.

    Affects every allocation of the process from now on (torch, NumPy, normkit).
    Returns False, and changes nothing, where glibc's ``mallopt`` is unavailable
    (macOS, Windows, musl).
    """
    lib = _libc()
    if lib is None:
        return False
    mmap_max, trim = (0, 2**31 - 1) if enable else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM)
    return bool(lib.mallopt(_M_MMAP_MAX, mmap_max)) and bool(lib.mallopt(_M_TRIM_THRESHOLD, trim))

"""Numba compilation settings shared by every kernel.

* ``cache=True``: compiled machine code is written next to the sources (or, when
  the package directory is read-only, to Numba's per-user cache directory), so
  only the first process on a machine pays the JIT cost.
* ``fastmath`` allows reassociation and contraction, which is what lets LLVM
  vectorise the float64 reductions and fuse multiply-adds. It deliberately
  leaves out ``nnan``/``ninf``: non-finite inputs must propagate into the
  statistics, where the layers detect them.
"""

from __future__ import annotations

from numba import njit

__all__ = ["FASTMATH", "kernel", "helper"]

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: Parallel kernels (``prange`` loops run on Numba's thread pool).
kernel = njit(cache=True, nogil=True, fastmath=FASTMATH, parallel=True)

#: Small serial helpers called from kernels or from Python.
helper = njit(cache=True, nogil=True, fastmath=FASTMATH)

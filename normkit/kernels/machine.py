"""Facts about the processor that the kernels' defaults depend on.

Read once at import: the instruction set family (streaming stores exist on x86
only) and the vendor, which picks between kernel forms whose speed was measured
to differ between processor makers (:func:`.norm.short_run_limits`). Also the
operating system's memory calls that the allocator and the streaming-store policy
use (:func:`libc_function`), looked up on first use.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys
from typing import Callable, Optional, Sequence

__all__ = ["VENDOR", "X86", "cpuinfo_field", "libc_function"]


def cpuinfo_field(name: str, path: str = "/proc/cpuinfo") -> str:
    """The value of the first ``name : value`` line of ``path`` (Linux's
    ``/proc/cpuinfo``), or ``""`` where the file or the field is missing."""
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


#: Whether this is an x86 processor.
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
#: The x86 vendor string (``GenuineIntel``, ``AuthenticAMD``), or ``""`` where unknown.
VENDOR = cpuinfo_field("vendor_id") if X86 else ""


@functools.lru_cache(maxsize=None)
def libc_function(name: str, argtypes: Sequence[type], restype: type = ctypes.c_int) -> Optional[Callable]:
    """The C library's function ``name`` with its ``argtypes`` and ``restype`` (a tuple
    of ctypes types, and one), from the libraries the process has loaded; ``None``
    outside Linux or where the library has no such function. Looked up once per
    name and signature."""
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None), name, None)
    if fn is not None:
        fn.argtypes = tuple(argtypes)
        fn.restype = restype
    return fn

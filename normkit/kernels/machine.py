"""Facts about the processor that the kernels' defaults depend on.

Read once at import: the instruction set family (streaming stores exist on x86
only) and the vendor, which picks between kernel forms whose speed was measured
to differ between processor makers (:func:`.norm.short_run_limits`).
"""

from __future__ import annotations

import platform

__all__ = ["VENDOR", "X86", "cpuinfo_field"]


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

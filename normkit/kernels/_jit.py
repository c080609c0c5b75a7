"""Numba compilation settings shared by every kernel.

* ``cache=True``: compiled machine code is written next to the sources (or, when
  the package directory is read-only, to Numba's per-user cache directory), so
  only the first process on a machine pays the JIT cost.
* ``fastmath`` allows reassociation and contraction, which is what lets LLVM
  vectorise the float64 reductions and fuse multiply-adds. It deliberately
  leaves out ``nnan``/``ninf``: non-finite inputs must propagate into the
  statistics, where the layers detect them.
* ``error_model="numpy"``: a float division by zero gives IEEE infinity or NaN,
  as NumPy and torch do, instead of raising ``ZeroDivisionError`` (with ``eps=0``
  a constant group has ``1/sqrt(0)``: torch's layers give NaN or infinity there,
  and so do these kernels). It also takes the test-and-raise branch out of every
  division, which is what lets LLVM vectorise the per-channel coefficient loops
  (``docs/experiments/block_coefs.py``). Integer divisors are never zero here:
  sizes are checked at the public boundary.
* :func:`helper` compiles functions that only other kernels call *without* the
  CPython and C entry points Numba otherwise builds for every function: each is
  a module of its own to optimise and emit. Dropping them, with one compilation
  per index type (:func:`.stream.span`), took 13-27% off the first BatchNorm2d
  training step's cold-cache JIT time (``docs/experiments/compile_time.py``,
  BENCHMARKS.md). Calling such a helper from Python
  raises :class:`TypeError` (there is nothing to call) instead of jumping to a
  missing entry point. ``@helper(inline=True)`` inlines one into its callers
  instead: for the bodies the element passes run once per row. The kernels
  called from Python are compiled by :func:`twin`, with a CPython entry point
  and without the C one (nothing takes their addresses).
* :func:`twin` compiles one source twice: with ``prange`` loops on Numba's
  thread pool, and as plain loops for inputs too small to repay a parallel launch.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Dict, Optional, Tuple

import numba
from numba import njit
from numba.core.registry import CPUDispatcher

__all__ = ["FASTMATH", "helper", "twin"]

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

_OPTIONS = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy", no_cfunc_wrapper=True)

_internal = njit(no_cpython_wrapper=True, **_OPTIONS)
_inlined = njit(no_cpython_wrapper=True, inline="always", **_OPTIONS)


class _HelperDispatcher(CPUDispatcher):
    """A dispatcher whose compilations have no CPython entry point: callable from
    jitted code only."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"{self.py_func.__module__}.{self.py_func.__qualname__} is a kernel helper, compiled to be "
            "called from jitted code only (no Python entry point); call it from an @njit function")


def helper(fn: Optional[Callable] = None, *, inline: bool = False) -> Callable:
    """Compile ``fn`` as a serial helper for other kernels: no CPython or C entry point.

    ``@helper(inline=True)`` has Numba inline it into each caller's IR: for the
    per-row bodies of the element passes, where a compiled call per row of a
    few hundred values costs more than the row (``docs/experiments/borrowed_views.py``)."""
    if fn is None:
        return lambda f: helper(f, inline=inline)
    dispatcher = (_inlined if inline else _internal)(fn)
    dispatcher.__class__ = _HelperDispatcher  # same layout: only the Python call differs
    return dispatcher


def twin(fn: Callable, par_globals: Optional[Dict[str, Any]] = None,
         ser_globals: Optional[Dict[str, Any]] = None, loops: bool = True,
         suffix: str = "") -> Tuple[Callable, Callable]:
    """``(parallel, serial)`` compilations of ``fn``.

    The serial one is compiled from a copy of the function under another
    qualified name: Numba's on-disk cache is keyed by that name, and must not
    hand one flavour's machine code to the other. ``par_globals`` /
    ``ser_globals`` rebind global names for each flavour, so that one source
    can call the parallel kernels in one compilation and the serial ones in the
    other (each compiled only when first called). ``loops=False`` is for
    orchestrators without ``prange`` loops of their own: both flavours are then
    compiled serially, differing only in what they call. ``suffix`` names
    further specialisations of one source (e.g. one per activation bound as a
    compile-time constant) apart in the cache.
    """
    par_fn = fn
    if par_globals or suffix:
        par_fn = _clone(fn, fn.__name__ + suffix, par_globals or {})
    ser_fn = _clone(fn, fn.__name__ + suffix + "_serial", ser_globals or {})
    return njit(parallel=loops, **_OPTIONS)(par_fn), njit(parallel=False, **_OPTIONS)(ser_fn)


def _clone(fn: Callable, name: str, extra_globals: Dict[str, Any]) -> Callable:
    scope = fn.__globals__ if not extra_globals else {**fn.__globals__, **extra_globals}
    clone = types.FunctionType(fn.__code__, scope, name, fn.__defaults__, fn.__closure__)
    clone.__qualname__ = fn.__qualname__.rsplit(".", 1)[0] + "." + name if "." in fn.__qualname__ else name
    clone.__module__ = fn.__module__
    return clone


# Serial entry points call the parallel kernels. Compiling them starts Numba's
# thread pool as a side effect, but loading them from the on-disk cache does
# not, and a cached caller then jumps into a pool that was never started (a
# segfault). Asking for the thread count starts the pool, once, at import.
numba.get_num_threads()

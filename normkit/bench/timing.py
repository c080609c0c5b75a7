"""Wall-clock timing with warm-up, adaptive repetitions and robust statistics."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the spread of ``reps`` timed calls."""

    median: float
    min: float
    max: float
    reps: int

    @property
    def ms(self) -> float:
        return self.median * 1e3


def measure(fn: Callable[[], object], *, budget: float = 0.3, min_reps: int = 5, max_reps: int = 200,
            warmup: int = 2) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then as many timed calls as fit in
    ``budget`` seconds (within ``[min_reps, max_reps]``). Garbage collection is
    paused while timing so that it does not land inside one peer's calls."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    reps = int(min(max_reps, max(min_reps, budget / one)))
    samples: List[float] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    finally:
        if enabled:
            gc.enable()
    return Timing(statistics.median(samples), min(samples), max(samples), reps)


def settle(seconds: float = 0.02) -> None:
    """Let the previous peer's thread pool stop spinning before the next one starts."""
    time.sleep(seconds)


def measure_interleaved(fns: Dict[str, Callable[[], object]], *, budget: float = 0.3, rounds: int = 7,
                        min_reps: int = 3, max_reps: int = 100) -> Dict[str, Timing]:
    """Time several peers fairly on a noisy machine: in each of ``rounds`` rounds every
    peer runs a short burst of calls, so slow and fast phases of the machine fall on
    all of them alike. ``budget`` is each peer's total timed seconds."""
    bursts: Dict[str, int] = {}
    for name, fn in fns.items():
        fn()  # warm-up (JIT, torch.compile, allocator)
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        bursts[name] = max(1, int(min(max_reps, max(min_reps, budget / one)) // rounds))
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                settle(0.005)
                for _ in range(bursts[name]):
                    t = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t)
    finally:
        if enabled:
            gc.enable()
    return {name: Timing(statistics.median(v), min(v), max(v), len(v)) for name, v in samples.items()}

"""Shared helpers for :mod:`normkit.tools`: which modules count as batch norms,
how a batch is fed to a model, and a dependency-free progress bar on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batchnorm_layers", "default_forward", "progress", "is_batchnorm"]


def is_batchnorm(module: nn.Module) -> bool:
    """A BatchNorm with running statistics: torch's and normkit's ``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm`` (both), and normkit's Ghost/Renorm/Act variants (all ``_BatchNorm``)."""
    return isinstance(module, _BatchNorm)


def batchnorm_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every BatchNorm that tracks running statistics."""
    return [
        (name, m) for name, m in model.named_modules()
        if is_batchnorm(m) and m.track_running_stats and m.running_mean is not None and m.running_var is not None
    ]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Feed one batch: a tensor is the input; a tuple/list's first item is (``(x, y)`` loaders);
    a dict is passed as keyword arguments."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    if isinstance(batch, dict):
        return model(**batch)
    raise TypeError(
        f"expected each batch to be a tensor, a (input, target) tuple/list or a dict of keyword inputs, "
        f"got {type(batch).__name__}; pass forward=lambda model, batch: ... to feed it yourself"
    )


def progress(items: Iterable[Any], total: Optional[int], label: str, enabled: bool = True) -> Iterator[Any]:
    """Yield ``items`` while drawing ``label [#####.....] k/total`` on stderr (a single line,
    redrawn at most 10 times a second; nothing when ``enabled`` is false or stderr is closed)."""
    if not enabled:
        yield from items
        return
    start = last = time.perf_counter()
    k = 0

    def draw(final: bool = False) -> None:
        elapsed = time.perf_counter() - start
        if total:
            done = int(20 * min(k, total) / total)
            bar = f"[{'#' * done}{'.' * (20 - done)}] {k}/{total}"
        else:
            bar = f"{k} batches"
        sys.stderr.write(f"\r{label} {bar} {elapsed:.1f}s" + ("\n" if final else ""))
        sys.stderr.flush()

    try:
        for item in items:
            yield item
            k += 1
            now = time.perf_counter()
            if now - last > 0.1:
                draw()
                last = now
    finally:
        draw(final=True)


def take(batches: Iterable[Any], num_batches: Optional[int]) -> Tuple[Iterable[Any], Optional[int]]:
    """At most ``num_batches`` of ``batches`` and the expected total (``len`` if known)."""
    if num_batches is not None:
        if num_batches < 1:
            raise ValueError(f"num_batches must be a positive int or None, got {num_batches}")
        import itertools
        try:
            total: Optional[int] = min(num_batches, len(batches))  # type: ignore[arg-type]
        except TypeError:
            total = num_batches
        return itertools.islice(batches, num_batches), total
    try:
        return batches, len(batches)  # type: ignore[arg-type]
    except TypeError:
        return batches, None


Forward = Callable[[nn.Module, Any], Any]

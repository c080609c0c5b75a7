"""Precise BatchNorm statistics (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm").

After training, a BatchNorm layer's ``running_mean``/``running_var`` are an EMA
of per-batch statistics taken while the weights were still moving. :func:`recalibrate`
replaces them by the true population statistics of each layer's inputs over a
set of batches, with the weights fixed:

* per channel ``c``, over every value ``x`` the layer received in all batches
  (``n_c`` values: batch x spatial positions, pooled over batches, weighted by
  count -- not an EMA and not a mean of per-batch variances)::

      running_mean[c] = mean(x)          running_var[c] = sum((x - mean)^2) / (n_c - 1)

  (unbiased over the pooled count, PyTorch's convention for ``running_var``);
* accumulated in float64 with Chan et al.'s pairwise merge of ``(n, mean, M2)``
  per batch (no ``E[x^2] - E[x]^2`` cancellation);
* across processes when ``torch.distributed`` is initialised: every rank's
  ``(n, mean, M2)`` of every layer goes through **one** ``all_reduce`` (each rank
  fills its own slot, so the sum is an all-gather) and is merged exactly, so all
  ranks end with identical statistics of the union of their data.

During the passes the BatchNorm layers run in training mode (each batch is
normalized with its own statistics, as in training and in precise BN) and every
other module in eval mode (no dropout). Afterwards the model's ``training``
flags, parameters and every other buffer (``num_batches_tracked``, BatchRenorm's
``renorm_step``...) are exactly as before; only ``running_mean``/``running_var``
of the layers that saw data change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ._common import Forward, batchnorm_layers, default_forward, progress, take

__all__ = ["recalibrate", "population_stats", "PopulationStats"]


@dataclass
class PopulationStats:
    """Per-channel statistics of one layer's inputs: ``count`` values per channel,
    ``mean`` and ``m2 = sum((x - mean)^2)`` (float64 tensors of shape ``(C,)``)."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @property
    def var_unbiased(self) -> torch.Tensor:
        return self.m2 / (self.count - 1) if self.count > 1 else torch.zeros_like(self.m2)

    @property
    def var_biased(self) -> torch.Tensor:
        return self.m2 / self.count if self.count > 0 else torch.zeros_like(self.m2)

    def merge(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Chan et al.'s pairwise update with another group's ``(count, mean, m2)``."""
        if count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean.clone(), m2.clone()
            return
        n = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / n)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * count / n)
        self.count = n


def _batch_moments(x: torch.Tensor) -> Tuple[int, torch.Tensor, torch.Tensor]:
    x = x.detach()
    C = x.shape[1]
    v = x.transpose(0, 1).reshape(C, -1).to(torch.float64)
    n = v.shape[1]
    if n == 0:
        z = torch.zeros(C, dtype=torch.float64, device=x.device)
        return 0, z, z.clone()
    mean = v.mean(dim=1)
    m2 = ((v - mean[:, None]) ** 2).sum(dim=1)
    return n, mean, m2


def _all_ranks_merge(stats: Dict[str, PopulationStats], names: List[str], sizes: List[int], device: Any) -> None:
    """Replace each rank's stats by the exact merge over all ranks: one all_reduce."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    per_rank = sum(1 + 2 * c for c in sizes)
    buf = torch.zeros(world, per_rank, dtype=torch.float64, device=device)
    off = 0
    for name, C in zip(names, sizes):
        s = stats[name]
        buf[rank, off] = float(s.count)
        if s.count:
            buf[rank, off + 1:off + 1 + C] = s.mean
            buf[rank, off + 1 + C:off + 1 + 2 * C] = s.m2
        off += 1 + 2 * C
    dist.all_reduce(buf)  # each rank wrote only its own row: the sum is an all-gather
    off = 0
    for name, C in zip(names, sizes):
        merged = PopulationStats(0, torch.zeros(C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64))
        for r in range(world):
            n = int(round(buf[r, off].item()))
            merged.merge(n, buf[r, off + 1:off + 1 + C], buf[r, off + 1 + C:off + 1 + 2 * C])
        stats[name] = merged
        off += 1 + 2 * C


def population_stats(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: Optional[int] = None,
    *,
    forward: Forward = default_forward,
    progress_bar: bool = True,
    distributed: Optional[bool] = None,
) -> Dict[str, PopulationStats]:
    """Population statistics of every BatchNorm layer's inputs over ``batches``
    (see the module docstring), without changing the model. Keys are qualified
    module names; layers that received no value map to ``count == 0``."""
    layers = batchnorm_layers(model)
    if not layers:
        return {}
    stats = {name: PopulationStats(0, torch.zeros(m.num_features, dtype=torch.float64),
                                   torch.zeros(m.num_features, dtype=torch.float64)) for name, m in layers}
    bn_ids = {id(m) for _, m in layers}
    modes = {m: m.training for m in model.modules()}
    saved = {name: {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None}
             for name, m in layers}
    handles = []

    def hook_for(name: str):
        def pre_hook(module: nn.Module, args: Tuple[Any, ...]) -> None:
            x = args[0]
            if isinstance(x, torch.Tensor):
                stats[name].merge(*_batch_moments(x))
        return pre_hook

    try:
        for m in model.modules():
            m.train(id(m) in bn_ids)
        for name, m in layers:
            handles.append(m.register_forward_pre_hook(hook_for(name)))
        items, total = take(batches, num_batches)
        with torch.no_grad():
            for batch in progress(items, total, "recalibrate", progress_bar):
                forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():
            for name, m in layers:
                for k, b in m.named_buffers(recurse=False):
                    if k in saved[name]:
                        b.copy_(saved[name][k])
    if distributed is None:
        import torch.distributed as dist
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        names = [n for n, _ in layers]
        device = layers[0][1].running_mean.device
        _all_ranks_merge(stats, names, [m.num_features for _, m in layers], device)
    return stats


def recalibrate(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: Optional[int] = None,
    *,
    forward: Forward = default_forward,
    progress_bar: bool = True,
    distributed: Optional[bool] = None,
) -> Dict[str, int]:
    """Set every BatchNorm's running statistics to the population statistics of its
    inputs over ``batches`` (at most ``num_batches`` of them); see the module docstring.

    ``batches``: an iterable of tensors, ``(input, target)`` tuples or keyword dicts
    (a DataLoader works), or anything ``forward(model, batch)`` understands.
    ``distributed``: None = merge across ranks iff a process group of >1 rank is up
    (then every rank must call this with the same layers).
    Returns ``{layer name: values per channel used}``; layers that received nothing
    keep their statistics and are named in a ``UserWarning``.
    """
    stats = population_stats(model, batches, num_batches, forward=forward,
                             progress_bar=progress_bar, distributed=distributed)
    counts: Dict[str, int] = {}
    unseen: List[str] = []
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, s in stats.items():
            m = modules[name]
            counts[name] = s.count
            if s.count == 0:
                unseen.append(name)
                continue
            m.running_mean.copy_(s.mean.to(m.running_mean.device))
            m.running_var.copy_(s.var_unbiased.to(m.running_var.device))
    if unseen:
        warnings.warn(f"recalibrate: these BatchNorm layers received no input and keep their statistics: {unseen}",
                      UserWarning, stacklevel=2)
    return counts

"""Safe running-statistics updates: skip (and report) batches with NaN/Inf, and
snapshot/restore every normalization buffer.

The failure this guards against: one mixed-precision overflow (or a corrupt
sample) produces a NaN/Inf batch, and in training mode BatchNorm folds it into
``running_mean``/``running_var`` -- every later eval output is NaN.

* normkit's layers have the flag already: ``nonfinite="skip"`` on the module
  (``"propagate"``, PyTorch's behaviour, is the default).
* :func:`skip_nonfinite_updates` turns it on for a whole model for the duration
  of a ``with`` block -- normkit layers get ``nonfinite="skip"``; torch's own
  BatchNorm layers (no such flag) get a forward pre-hook that snapshots their
  buffers and a forward hook that restores them when the input had a NaN/Inf, or
  when the update made finite statistics non-finite -- and restores everything on
  exit. Each skipped update emits :class:`normkit.running.NonFiniteBatchWarning`
  and is recorded in the returned :class:`SkipLog`.
* :func:`snapshot` / :func:`restore`: a copy of every normalization buffer
  (``running_mean``, ``running_var``, ``num_batches_tracked``, BatchRenorm's
  ``renorm_step``, ...; optionally the affine parameters) and its exact return.

The batch's *output* is not changed by skipping (it is computed from batch
statistics and is NaN where the input is); only the running statistics are kept.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..running import NonFiniteBatchWarning
from ._common import is_batchnorm

__all__ = ["skip_nonfinite_updates", "SkipLog", "snapshot", "restore", "normalization_modules"]


def normalization_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Every normalization module: BatchNorm/InstanceNorm/SyncBatchNorm (torch's
    ``_NormBase``, normkit's subclasses included), GroupNorm, LayerNorm, RMSNorm,
    LocalResponseNorm and normkit's FrozenBatchNorm."""
    kinds: Tuple[type, ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    if hasattr(nn, "RMSNorm"):
        kinds += (nn.RMSNorm,)
    from ..nn.frozen import FrozenBatchNorm
    kinds += (FrozenBatchNorm,)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def snapshot(model: nn.Module, parameters: bool = False) -> Dict[str, torch.Tensor]:
    """``{qualified name: clone}`` of every buffer of every normalization module
    (and its parameters if ``parameters``). Pass it to :func:`restore`."""
    snap: Dict[str, torch.Tensor] = {}
    for name, m in normalization_modules(model):
        pre = f"{name}." if name else ""
        for k, b in m.named_buffers(recurse=False):
            if b is not None:
                snap[pre + k] = b.detach().clone()
        if parameters:
            for k, p in m.named_parameters(recurse=False):
                snap[pre + k] = p.detach().clone()
    return snap


def restore(model: nn.Module, snap: Dict[str, torch.Tensor]) -> None:
    """Copy a :func:`snapshot` back in place (same tensors, so optimizers and
    references stay valid). Every entry is checked before anything is written:
    a missing name or a shape mismatch raises ``KeyError``/``ValueError`` and
    changes nothing."""
    state = dict(model.named_buffers())
    state.update(dict(model.named_parameters()))
    targets = []
    for k, v in snap.items():
        if k not in state:
            raise KeyError(f"restore: the snapshot has '{k}', which the model does not have; "
                           "was the snapshot taken from another model?")
        if state[k].shape != v.shape:
            raise ValueError(f"restore: '{k}' has shape {tuple(state[k].shape)} in the model, "
                             f"{tuple(v.shape)} in the snapshot")
        targets.append((state[k], v))
    with torch.no_grad():
        for t, v in targets:
            t.copy_(v)


@dataclass
class SkipLog:
    """What :func:`skip_nonfinite_updates` skipped: ``(layer name, reason)`` per event."""

    events: List[Tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events)


def _finite(*ts: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts if t is not None)


@contextlib.contextmanager
def skip_nonfinite_updates(model: nn.Module) -> Iterator[SkipLog]:
    """Within the block, no BatchNorm of ``model`` folds a NaN/Inf batch into its
    running statistics (see the module docstring). Yields a :class:`SkipLog`."""
    log = SkipLog()
    policies: List[Tuple[nn.Module, str]] = []
    handles = []

    def hooks(name: str, native: bool):
        state: Dict[str, object] = {}

        def pre(module: nn.Module, args):
            state.clear()
            if not (module.training and module.track_running_stats and module.running_mean is not None):
                return
            state["nbt"] = module.num_batches_tracked.clone() if module.num_batches_tracked is not None else None
            if native:
                state["mean"] = module.running_mean.detach().clone()
                state["var"] = module.running_var.detach().clone()
                x = args[0] if args else None
                state["bad_input"] = isinstance(x, torch.Tensor) and not _finite(x)

        def post(module: nn.Module, args, output):
            if not state:
                return
            if not native:  # normkit's own policy did the skipping; only record it
                if state["nbt"] is not None and int(module.num_batches_tracked) == int(state["nbt"]):
                    log.events.append((name, "non-finite batch statistics (nonfinite='skip')"))
                return
            became_bad = _finite(state["mean"], state["var"]) and not _finite(module.running_mean, module.running_var)
            if state["bad_input"] or became_bad:
                with torch.no_grad():
                    module.running_mean.copy_(state["mean"])
                    module.running_var.copy_(state["var"])
                    if state["nbt"] is not None:
                        module.num_batches_tracked.copy_(state["nbt"])
                why = "NaN/Inf in the input" if state["bad_input"] else "the update made the statistics non-finite"
                log.events.append((name, why))
                warnings.warn(f"{name or type(module).__name__}: {why}; skipped its running-statistics update",
                              NonFiniteBatchWarning, stacklevel=2)
        return pre, post

    try:
        for name, m in model.named_modules():
            if not is_batchnorm(m):
                continue
            native = not hasattr(m, "nonfinite")
            if not native:
                policies.append((m, m.nonfinite))
                m.nonfinite = "skip"
            pre, post = hooks(name, native)
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        yield log
    finally:
        for h in handles:
            h.remove()
        for m, p in policies:
            m.nonfinite = p

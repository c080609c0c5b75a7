"""``SyncBatchNorm``: batch statistics over every process of a ``torch.distributed`` group.

``normkit.nn.SyncBatchNorm`` *is* a ``torch.nn.SyncBatchNorm`` (a subclass:
same constructor, parameters, buffers and state_dict keys) that runs on every
backend and device -- gloo on CPU included, where torch's refuses to run --
and is exact with uneven and empty per-rank batches. The mathematics and the
failure protocol are in :mod:`normkit.nn._distributed`; in short, training
costs one small collective per direction per layer (``2 + 2C`` float64 values
per rank forward, ``1 + 2C`` backward), independent of the activation size.

:func:`convert_sync_batchnorm` swaps every BatchNorm of a model for it (as
``torch.nn.SyncBatchNorm.convert_sync_batchnorm``) and
:func:`revert_sync_batchnorm` goes back to normkit's ``BatchNorm1d/2d/3d``.

DistributedDataParallel on CPU refuses any ``torch.nn.SyncBatchNorm`` instance
("SyncBatchNorm layers only work with GPU modules"). Importing this module
narrows that check so that it ignores normkit's layers (which do work on CPU);
torch's own SyncBatchNorm is still refused there as before.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import _checks
from . import functional as F
from ._distributed import SyncBatchNormError, sync_batch_norm, sync_group
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["SyncBatchNorm", "SyncBatchNormError", "convert_sync_batchnorm", "revert_sync_batchnorm"]

#: normkit BatchNorm class per dimensionality, for revert_sync_batchnorm.
_BN_CLASSES: Dict[int, Type[nn.Module]] = {1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d}
#: input dims -> BatchNorm dimensionality (an (N, C, L) input is BatchNorm1d's).
_DIM_OF_NDIM = {2: 1, 3: 1, 4: 2, 5: 3}


class SyncBatchNorm(nn.SyncBatchNorm):
    r"""Batch normalization with statistics over all processes of a ``torch.distributed`` group.

    Training (and torch.distributed initialised, and more than one rank in the
    group): every rank's input ``(N_r, C, *)`` -- ``N_r`` may differ between
    ranks and be 0 -- is normalized with the statistics of the *concatenated*
    batch. With ``n = sum_r N_r * prod(*)`` values per channel, global mean
    ``mu`` and biased variance ``var``::

        y = weight * (x - mu) / sqrt(var + eps) + bias
        running = (1 - momentum) * running + momentum * batch   (running_var: var * n / (n - 1))

    computed in float64 and bit-identical on every rank (``momentum=None``:
    cumulative average over ``num_batches_tracked``). The input gradient is the
    one of a single process on the concatenated batch; ``weight.grad`` and
    ``bias.grad`` hold this rank's share (as torch's SyncBatchNorm), so that
    DistributedDataParallel's gradient averaging yields the full-batch gradient
    (scale each rank's loss by ``world_size / global_batch`` when the per-rank
    batches are uneven).

    No synchronisation, hence no collective call, happens in eval mode (running
    statistics; or, with ``track_running_stats=False``, each rank's own batch
    statistics, as torch), when torch.distributed is not initialised, or when
    the group has one rank: the layer then behaves exactly as normkit's
    ``BatchNorm*d``.

    Args: as ``torch.nn.SyncBatchNorm`` -- ``num_features`` (C), ``eps=1e-5``,
    ``momentum=0.1`` (weight of the new batch, or None), ``affine=True``,
    ``track_running_stats=True``, ``process_group=None`` (the default group;
    each rank passes a group it belongs to), ``device``, ``dtype``, keyword
    ``bias=True`` -- plus the keyword ``nonfinite`` (``"propagate"``, ``"skip"``
    or ``"raise"``, decided on the global statistics, so on every rank alike).

    Shape: input ``(N, C, *)`` with at least 2 dims (2 to 5 cover BatchNorm1d/2d/3d),
    output the same, in the input's memory format (channels_last kept). CPU
    float32/float64 run on normkit's kernels, everything else on torch ops
    (float16/bfloat16 with float32 statistics).

    Every rank of the group must run each SyncBatchNorm layer -- forward, and
    backward if the input needs a gradient -- in the same order, in the same
    mode (train/eval) and with the same ``num_features``; a rank with no data
    passes a batch of size 0 (it still takes part in both collectives). Errors:

    * one value per channel in the global batch raises the same ``ValueError``
      on every rank; ``nonfinite="raise"`` the same ``NonFiniteBatchError``;
    * an error only one rank can see (wrong channel count or dtype, ...) is
      raised on that rank *after* it joined the collective, and every other
      rank raises :class:`SyncBatchNormError` -- nobody is left waiting;
    * a peer that crashed, exited or never calls the layer makes the
      collective fail: at once when its connection closes, else after the
      process group's timeout, ``torch.distributed.init_process_group(timeout=...)``
      (torch's defaults: 30 minutes for gloo, 10 for NCCL).

    An error *after* the synchronisation on one rank only (out of memory while
    normalizing, a rank that skips its backward) cannot be announced any more:
    the peers then fail at their next collective, at the latest after the timeout.

    After an error the parameters, running statistics and
    ``num_batches_tracked`` are unchanged. Double backward is not supported
    (``create_graph=True`` works, differentiating the result raises).

    Attributes: as torch's, plus ``nonfinite`` and ``bn_dim`` (1, 2, 3 or None: the
    BatchNorm dimensionality this layer stands for, from the layer it was
    converted from or the last input's dims; :func:`revert_sync_batchnorm` uses it).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Optional[Any] = None,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        nonfinite: str = "propagate",
    ) -> None:
        extra = {} if bias else {"bias": False}  # torch < 2.6 has no `bias` argument
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, process_group, device, dtype, **extra
        )
        self.nonfinite = _checks.check_nonfinite_policy(type(self).__name__, nonfinite)
        #: BatchNorm dimensionality this layer stands for (1, 2, 3): from the layer it
        #: was converted from or the last input; used by revert_sync_batchnorm.
        self.bn_dim: Optional[int] = None

    @property
    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"{self._layer_name} expected an input of shape (N, C, *) with at least 2 dims, "
                f"got {input.dim()}D input of shape {tuple(input.shape)}"
            )
        _checks.check_channels(self._layer_name, tuple(input.shape), 1, self.num_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        sync = sync_group(self.process_group, self._layer_name) if self.training else None
        track = self.track_running_stats
        if sync is None:
            self._check_input_dim(input)
            # normkit BatchNorm's mode rules (PyTorch's)
            batch_stats = self.training or (self.running_mean is None and self.running_var is None)
            use = not self.training or track
            y = F.batch_norm(
                input,
                self.running_mean if use else None,
                self.running_var if use else None,
                self.weight,
                self.bias,
                batch_stats,
                self.momentum,
                self.eps,
                num_batches_tracked=self.num_batches_tracked if self.training and track else None,
                nonfinite=self.nonfinite,
                layer=self._layer_name,
            )
        else:
            group, world = sync
            y = sync_batch_norm(
                input,
                self.running_mean if track else None,
                self.running_var if track else None,
                self.weight,
                self.bias,
                self.momentum,
                self.eps,
                group=group,
                world_size=world,
                num_features=self.num_features,
                num_batches_tracked=self.num_batches_tracked if track else None,
                nonfinite=self.nonfinite,
                layer=self._layer_name,
            )
        dim = _DIM_OF_NDIM.get(input.dim())
        if dim is not None:
            self.__dict__["bn_dim"] = dim
        return y

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.nonfinite == "propagate" else f"{text}, nonfinite={self.nonfinite!r}"

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Optional[Any] = None) -> nn.Module:
        """Same as :func:`convert_sync_batchnorm` (normkit's layer, not torch's)."""
        return convert_sync_batchnorm(module, process_group)


# --------------------------------------------------------------------------- conversion


def _bn_dim_of(module: nn.Module) -> Optional[int]:
    if isinstance(module, nn.BatchNorm1d):
        return 1
    if isinstance(module, nn.BatchNorm2d):
        return 2
    if isinstance(module, nn.BatchNorm3d):
        return 3
    return getattr(module, "bn_dim", None)


def _carry(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give ``new`` the very parameter and buffer objects of ``old``, its mode and qconfig."""
    for name in ("weight", "bias"):
        new._parameters[name] = old._parameters.get(name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new._buffers[name] = old._buffers.get(name)
    new.training = old.training
    if hasattr(old, "qconfig"):
        new.qconfig = old.qconfig
    return new


def _has_uninitialized(module: nn.Module) -> bool:
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters(recurse=False)) or any(
        isinstance(b, nn.parameter.UninitializedBuffer) for b in module.buffers(recurse=False)
    )


def convert_sync_batchnorm(module: nn.Module, process_group: Optional[Any] = None) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a normkit :class:`SyncBatchNorm`.

    As ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: every instance of
    ``torch.nn.modules.batchnorm._BatchNorm`` -- torch's and normkit's
    ``BatchNorm1d/2d/3d``, torch's ``SyncBatchNorm``, normkit's (to change its
    group) -- becomes a normkit ``SyncBatchNorm`` with the same ``num_features``,
    ``eps``, ``momentum``, ``affine``, ``track_running_stats``, ``nonfinite``,
    training mode and qconfig, and the very same parameter and buffer objects
    (an optimizer built before keeps working), synchronising over
    ``process_group`` (None: the default group). Hooks are not carried.

    Children are replaced in place; the (possibly new) root is returned. The
    layer remembers the dimensionality it came from for :func:`revert_sync_batchnorm`.
    """
    if isinstance(module, _BatchNorm):
        if _has_uninitialized(module):
            raise ValueError(
                f"convert_sync_batchnorm: {type(module).__name__} has uninitialized (lazy) parameters; "
                f"run one forward pass before converting"
            )
        new = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            device="meta",  # every tensor is replaced by the old layer's below
            bias=not (module.affine and module.bias is None),
            nonfinite=getattr(module, "nonfinite", "propagate"),
        )
        new.bn_dim = _bn_dim_of(module)
        output = _carry(new, module)
    else:
        output = module
    for name, child in module.named_children():
        output.add_module(name, convert_sync_batchnorm(child, process_group))
    return output


def revert_sync_batchnorm(module: nn.Module, dim: Optional[int] = None) -> nn.Module:
    """Replace every ``SyncBatchNorm`` (normkit's or torch's) by normkit's ``BatchNorm1d/2d/3d``.

    The class is chosen per layer by the dimensionality it knows: the input
    dims of its last forward (2 or 3 -> BatchNorm1d, 4 -> 2d, 5 -> 3d), else the
    BatchNorm it was converted from. ``dim`` (1, 2 or 3) is used for layers that
    know neither (never run, or torch's own SyncBatchNorm); if such a layer
    exists and ``dim`` is None, ``ValueError`` is raised before anything is changed.

    Parameters, buffers (the same objects), hyper-parameters, ``nonfinite``,
    training mode and qconfig are carried; ``process_group`` is dropped. Children
    are replaced in place; the (possibly new) root is returned.
    """
    if dim is not None and dim not in _BN_CLASSES:
        raise ValueError(f"revert_sync_batchnorm expected dim in (1, 2, 3) or None, got {dim!r}")
    unknown: List[str] = [
        name or "<root>"
        for name, m in module.named_modules()
        if isinstance(m, nn.SyncBatchNorm) and getattr(m, "bn_dim", None) is None
    ]
    if unknown and dim is None:
        raise ValueError(
            f"revert_sync_batchnorm cannot tell BatchNorm1d/2d/3d for {', '.join(unknown)}: they have not "
            f"run a forward pass and were not converted from a BatchNorm*d; pass dim=1, 2 or 3"
        )

    def visit(m: nn.Module) -> nn.Module:
        for name, child in m.named_children():
            new_child = visit(child)
            if new_child is not child:
                setattr(m, name, new_child)
        if not isinstance(m, nn.SyncBatchNorm):
            return m
        cls = _BN_CLASSES[getattr(m, "bn_dim", None) or dim]
        new = cls(
            m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, device="meta",
            nonfinite=getattr(m, "nonfinite", "propagate"),
        )
        return _carry(new, m)

    return visit(module)


# --------------------------------------------------------------------------- DDP on CPU


def _allow_on_cpu_ddp() -> None:
    """Let DistributedDataParallel on CPU accept normkit's SyncBatchNorm.

    torch's DDP refuses every ``torch.nn.SyncBatchNorm`` instance when the module
    is on the CPU, because torch's own implementation needs a GPU. normkit's
    subclass does not: the check is narrowed to the layers that are not
    normkit's (torch's own SyncBatchNorm on CPU is still refused). Idempotent;
    a torch without the check is left alone.
    """
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP
    except ImportError:  # pragma: no cover
        return
    original = getattr(DDP, "_passing_sync_batchnorm_handle", None)
    if original is None or getattr(original, "_normkit", False):
        return

    @functools.wraps(original)
    def _passing_sync_batchnorm_handle(self: Any, module: nn.Module) -> Any:
        foreign = [
            m for m in module.modules() if isinstance(m, nn.SyncBatchNorm) and not isinstance(m, SyncBatchNorm)
        ]
        return original(self, nn.ModuleList(foreign))

    _passing_sync_batchnorm_handle._normkit = True  # type: ignore[attr-defined]
    DDP._passing_sync_batchnorm_handle = _passing_sync_batchnorm_handle


_allow_on_cpu_ddp()

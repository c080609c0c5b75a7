"""PyTorch front end: drop-in modules, the functional forms, and model conversion.

Every normkit module subclasses its torch counterpart where torch has one (same
constructor, parameters, buffers and state_dict keys); CPU float32/float64
inputs run on normkit's fused kernels, everything else on plain torch ops.
"""

from . import functional, functional_family
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .batchnorm_act import BatchNormAct2d, batch_norm_act
from .convert import convert
from .frozen import FrozenBatchNorm, FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d, freeze, unfreeze
from .ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d, ghost_batch_norm
from .groupnorm import GroupNorm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .layernorm import LayerNorm, RMSNorm
from .renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, batch_renorm, renorm_limits
from .spectral import SpectralNorm, spectral_norm
from .sync_batchnorm import SyncBatchNorm, SyncBatchNormError, convert_sync_batchnorm, revert_sync_batchnorm

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct2d", "BatchRenorm1d", "BatchRenorm2d",
    "BatchRenorm3d", "FrozenBatchNorm", "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d",
    "GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d",
    "InstanceNorm3d", "LayerNorm", "RMSNorm", "SpectralNorm", "SyncBatchNorm", "SyncBatchNormError",
    "convert_sync_batchnorm", "revert_sync_batchnorm", "batch_norm_act", "batch_renorm", "convert", "freeze",
    "functional", "functional_family", "ghost_batch_norm", "renorm_limits", "spectral_norm", "unfreeze",
]

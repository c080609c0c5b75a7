"""PyTorch front end: drop-in modules, the functional form, and model conversion.

``normkit.nn.BatchNorm1d/2d/3d`` subclass ``torch.nn.BatchNorm1d/2d/3d`` with the
same constructor, parameters, buffers and state_dict keys; CPU float32/float64
inputs run on normkit's fused kernels, everything else on plain torch ops.
"""

from . import functional
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .batchnorm_act import BatchNormAct2d, batch_norm_act
from .convert import convert

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct2d", "batch_norm_act", "convert", "functional"]

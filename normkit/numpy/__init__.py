"""NumPy front end: functional batch normalization and a stateful layer.

Works without PyTorch. Computation runs on the fused Numba kernels; the
readable float64 oracle is :mod:`normkit.reference`.
"""

from .batchnorm import BatchNorm
from .functional import BatchNormResult, batch_norm, batch_norm_backward

__all__ = ["BatchNorm", "BatchNormResult", "batch_norm", "batch_norm_backward"]

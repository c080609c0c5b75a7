"""NumPy reference implementations: readable, float64, slow -- the oracle.

Nothing here is optimised; every fast path in :mod:`normkit.kernels` and
:mod:`normkit.nn` is tested against these functions.
"""

from .batchnorm import batch_norm, batch_norm_backward, batch_stats
from .core import moments, normalize, normalize_backward

__all__ = [
    "batch_norm",
    "batch_norm_backward",
    "batch_stats",
    "moments",
    "normalize",
    "normalize_backward",
]

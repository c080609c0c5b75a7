"""NumPy reference implementations: readable, float64, slow -- the oracle.

Nothing here is optimised; every fast path in :mod:`normkit.kernels` and
:mod:`normkit.nn` is tested against these functions.
"""

from .batchnorm import batch_norm, batch_norm_backward, batch_stats
from .core import moments, normalize, normalize_backward
from .groupnorm import group_norm, group_norm_backward
from .instancenorm import instance_norm, instance_norm_backward, instance_norm_running_stats
from .layernorm import layer_norm, layer_norm_backward
from .remedies import batch_renorm, batch_renorm_backward, ghost_batch_norm, renorm_corrections
from .rmsnorm import default_rms_eps, rms_norm, rms_norm_backward

__all__ = [
    "batch_norm", "batch_norm_backward", "batch_renorm", "batch_renorm_backward", "batch_stats", "default_rms_eps",
    "ghost_batch_norm", "group_norm", "group_norm_backward", "instance_norm", "instance_norm_backward",
    "instance_norm_running_stats", "layer_norm", "layer_norm_backward", "moments", "normalize",
    "normalize_backward", "renorm_corrections", "rms_norm", "rms_norm_backward",
]

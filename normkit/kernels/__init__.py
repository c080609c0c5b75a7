"""Fused Numba CPU kernels with the contracts of :mod:`normkit.reference`.

Inputs are trusted (validated by the front ends) C-contiguous float32/float64
``(P, C, L)`` views; see :mod:`normkit.kernels.norm` for the shared core and
:mod:`normkit.kernels.layout` for how an array with a channel axis is viewed.
"""

from .layout import ChannelView, channel_view
from .norm import apply_coefficients, apply_coefficients2, backward, forward_batch, forward_fixed, grad_input, grad_sums, inv_std, moments

__all__ = [
    "apply_coefficients", "apply_coefficients2", "ChannelView", "backward", "channel_view", "forward_batch", "forward_fixed", "grad_input", "grad_sums",
    "inv_std", "moments",
]

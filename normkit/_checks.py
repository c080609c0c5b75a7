"""Input validation shared by the NumPy API and the PyTorch modules.

Everything here looks only at shapes, sizes and dtype names, so one message
serves both front ends. Validation happens once, at the public boundary,
before any state is touched; the kernels trust their inputs.
Each error says what was expected, what came, and where it helps, what to do.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

__all__ = [
    "NONFINITE_POLICIES",
    "check_channel_axis",
    "check_channels",
    "check_eps",
    "check_floating",
    "check_momentum",
    "check_ndim",
    "check_nonfinite_policy",
    "check_param_shape",
    "check_training_batch",
    "reduced_count",
]

NONFINITE_POLICIES = ("propagate", "skip", "raise")


def check_ndim(layer: str, shape: Sequence[int], allowed: Sequence[int]) -> None:
    """``len(shape)`` must be one of ``allowed``."""
    if len(shape) not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        layouts = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}
        hint = " or ".join(layouts.get(d, f"{d}D") for d in allowed)
        raise ValueError(
            f"{layer} expected {want} input {hint}, got {len(shape)}D input of shape {tuple(shape)}"
        )


def check_channel_axis(layer: str, shape: Sequence[int], axis: int) -> int:
    """Normalize ``axis`` against ``len(shape)`` and return it (non-negative)."""
    ndim = len(shape)
    if ndim < 1:
        raise ValueError(f"{layer} expected an input with a channel axis, got a 0-d input")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{layer} channel axis {axis} is out of range for a {ndim}D input of shape {tuple(shape)}"
        )
    return axis % ndim


def check_channels(layer: str, shape: Sequence[int], axis: int, expected: int) -> None:
    """The input's size along the channel ``axis`` must equal ``expected``."""
    got = shape[axis]
    if got != expected:
        raise ValueError(
            f"{layer} expected input with {expected} channels along dim {axis}, "
            f"got {got} (input shape {tuple(shape)}); "
            f"is the channel axis right, or was the layer built for another width?"
        )


def check_floating(layer: str, dtype_name: str, is_floating: bool) -> None:
    if not is_floating:
        raise TypeError(
            f"{layer} expected a floating-point input (float16, bfloat16, float32 or float64), "
            f"got dtype {dtype_name}; convert it first, e.g. x.float()"
        )


def reduced_count(shape: Sequence[int], axis: int) -> int:
    """Number of values averaged per channel: the product of every size but the channel's."""
    return math.prod(s for i, s in enumerate(shape) if i != axis)


def check_training_batch(layer: str, shape: Sequence[int], axis: int) -> None:
    """Training needs more than one value per channel (the variance of one value is undefined).

    An empty batch (zero values) passes: it is a no-op, as in PyTorch.
    """
    if reduced_count(shape, axis) == 1:
        raise ValueError(
            f"{layer} expected more than 1 value per channel when training, got input shape "
            f"{tuple(shape)} (1 value per channel); use a batch larger than 1 or call eval()"
        )


def check_param_shape(layer: str, what: str, shape: Optional[Tuple[int, ...]], expected: Tuple[int, ...]) -> None:
    """A parameter or running statistic must have exactly ``expected`` shape (None = absent, fine)."""
    if shape is not None and tuple(shape) != tuple(expected):
        raise ValueError(
            f"{layer} expected {what} of shape {tuple(expected)}, got {tuple(shape)}; "
            f"was a checkpoint for another width loaded?"
        )


def check_eps(layer: str, eps: float) -> float:
    eps = float(eps)
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"{layer} expected eps >= 0 and finite, got {eps}")
    return eps


def check_momentum(layer: str, momentum: Optional[float]) -> Optional[float]:
    if momentum is None:
        return None
    m = float(momentum)
    if not 0.0 <= m <= 1.0:
        raise ValueError(
            f"{layer} expected momentum in [0, 1] (the weight of the new batch, PyTorch's "
            f"convention) or None, got {momentum}; a Keras/Flax decay d converts as 1 - d"
        )
    return m


def check_nonfinite_policy(layer: str, policy: str) -> str:
    if policy not in NONFINITE_POLICIES:
        raise ValueError(
            f"{layer} expected nonfinite to be one of {NONFINITE_POLICIES}, got {policy!r}"
        )
    return policy

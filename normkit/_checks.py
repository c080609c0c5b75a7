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
    return math.prod([s for i, s in enumerate(shape) if i != axis])  # a list: torch.compile traces it


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


# --------------------------------------------------------------------------- the family: LayerNorm,
# GroupNorm, InstanceNorm, RMSNorm

__all__ += [
    "check_groups",
    "check_min_ndim",
    "check_ndim_layouts",
    "check_normalized_shape",
    "check_spatial_size",
]


def check_ndim_layouts(layer: str, shape: Sequence[int], layouts: "dict[int, str]") -> None:
    """``len(shape)`` must be a key of ``layouts`` (ndim -> layout text, e.g. ``{2: "(C, L)"}``)."""
    if len(shape) not in layouts:
        want = " or ".join(f"{d}D {text}" for d, text in layouts.items())
        raise ValueError(f"{layer} expected {want} input, got {len(shape)}D input of shape {tuple(shape)}")


def check_min_ndim(layer: str, shape: Sequence[int], min_ndim: int, layout: str) -> None:
    """At least ``min_ndim`` dims, laid out as ``layout`` (e.g. ``"(N, C, *)"``)."""
    if len(shape) < min_ndim:
        raise ValueError(
            f"{layer} expected an input {layout} with at least {min_ndim} dims, "
            f"got {len(shape)}D input of shape {tuple(shape)}"
        )


def check_groups(layer: str, num_groups: int, num_channels: int) -> None:
    """``num_groups`` must be a positive divisor of ``num_channels``; the error quotes both."""
    import numbers

    for name, value in (("num_groups", num_groups), ("num_channels", num_channels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{layer} expected {name} to be a positive integer, got {value!r}")
    num_groups, num_channels = int(num_groups), int(num_channels)
    if num_channels % num_groups != 0:
        divisors = [d for d in range(1, num_channels + 1) if num_channels % d == 0]
        shown = ", ".join(map(str, divisors[:12])) + (", ..." if len(divisors) > 12 else "")
        raise ValueError(
            f"{layer} expected num_channels ({num_channels}) to be divisible by num_groups ({num_groups}); "
            f"num_groups must divide the channel count: {shown}"
        )


def check_normalized_shape(layer: str, shape: Sequence[int], normalized_shape: Sequence[int]) -> None:
    """``normalized_shape`` is non-empty and equals the input's trailing sizes."""
    norm_shape = tuple(normalized_shape)
    k = len(norm_shape)
    if k == 0:
        raise ValueError(f"{layer} expected normalized_shape with at least one dimension, got ()")
    if len(shape) < k or tuple(shape[len(shape) - k:]) != norm_shape:
        raise ValueError(
            f"{layer} expected an input whose last {k} dim{'s' if k > 1 else ''} "
            f"{'are' if k > 1 else 'is'} normalized_shape {norm_shape}, i.e. of shape (*, "
            f"{', '.join(map(str, norm_shape))}), got input of shape {tuple(shape)}; "
            f"was the layer built for another width?"
        )


def check_spatial_size(layer: str, shape: Sequence[int]) -> None:
    """Instance statistics need more than one spatial value per (sample, channel).

    ``shape`` is ``(N, C, *)``; an empty spatial extent passes (an empty output).
    """
    if math.prod(shape[2:]) == 1:
        raise ValueError(
            f"{layer} expected more than 1 spatial element per instance when using instance statistics "
            f"(training, or track_running_stats=False), got input shape {tuple(shape)}; "
            f"the variance of one value is undefined"
        )

"""Running-statistics bookkeeping shared by every stateful layer.

Conventions (PyTorch's, used everywhere in normkit):

* ``momentum`` is the weight of the **new** batch, default 0.1::

      running = (1 - momentum) * running + momentum * batch

  Keras and Flax give a *decay* instead (``0.99`` means ``momentum=0.01``):
  convert with :func:`momentum_from_decay`.
* ``momentum=None`` is the cumulative moving average: after the k-th batch,
  ``running`` is the plain mean of the k batch statistics (factor ``1/k``).
* Normalization uses the biased variance; ``running_var`` stores the unbiased
  one, ``var * n / (n - 1)`` over the ``n`` values reduced per channel.

The functions work in place on NumPy arrays and on torch tensors alike (only
``*=`` and ``+=`` are used), so the NumPy layer, the fast PyTorch path and the
pure-torch path share one implementation of the rule.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional

__all__ = [
    "NonFiniteBatchError",
    "NonFiniteBatchWarning",
    "commit_batch_stats",
    "update_factor",
    "update_running_stats",
    "unbiased_variance_scale",
    "momentum_from_decay",
    "decay_from_momentum",
]


def update_factor(momentum: Optional[float], num_batches_tracked: int) -> float:
    """Weight of the new batch for the update that makes the count ``num_batches_tracked``.

    ``momentum`` if given, else ``1 / num_batches_tracked`` (cumulative average),
    where ``num_batches_tracked`` already counts the batch being added.
    """
    if momentum is not None:
        return float(momentum)
    if num_batches_tracked < 1:
        raise ValueError(
            f"momentum=None needs num_batches_tracked >= 1 after the update, got {num_batches_tracked}"
        )
    return 1.0 / float(num_batches_tracked)


def unbiased_variance_scale(n: int) -> float:
    """Bessel's factor ``n / (n - 1)`` turning a biased variance of ``n`` values unbiased.

    ``n == 1`` has no unbiased estimate; like PyTorch we then store the biased
    one (0) -- callers refuse single-value training batches before this point.
    """
    return n / (n - 1) if n > 1 else 1.0


def update_running_stats(running_mean: Any, running_var: Any, mean: Any, var: Any, n: int, factor: float) -> None:
    """In place: ``running = (1 - factor) * running + factor * batch``.

    ``var`` is the biased batch variance over ``n`` values per channel; the
    unbiased one is folded into ``running_var``. Works on NumPy arrays and on
    torch tensors (``mean``/``var`` may be float64 and are cast on the add).
    """
    keep = 1.0 - factor
    running_mean *= keep
    running_mean += factor * mean
    running_var *= keep
    running_var += (factor * unbiased_variance_scale(n)) * var


def momentum_from_decay(decay: float) -> float:
    """Keras/Flax decay (weight of the *old* value, e.g. 0.99) -> normkit momentum (0.01)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    return _clean(1.0 - decay)


def decay_from_momentum(momentum: float) -> float:
    """normkit/PyTorch momentum (weight of the *new* batch, e.g. 0.1) -> Keras/Flax decay (0.9)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    return _clean(1.0 - momentum)


def _clean(value: float) -> float:
    # 1 - 0.99 is 0.010000000000000009 in binary floating point; 15 significant
    # digits give back the decimal the user meant (0.01) without losing anything real.
    return float(f"{value:.15g}")


class NonFiniteBatchWarning(RuntimeWarning):
    """A batch with NaN or Inf statistics was left out of the running statistics."""


class NonFiniteBatchError(FloatingPointError):
    """A batch with NaN or Inf statistics was refused (``nonfinite="raise"``)."""


def commit_batch_stats(
    layer: str,
    policy: str,
    mean: Any,
    var: Any,
    n: int,
    running_mean: Any,
    running_var: Any,
    factor: float,
    update: Callable[..., None] = update_running_stats,
) -> bool:
    """Fold one batch's statistics into the running ones under a non-finite policy.

    Policies (``nonfinite=`` on every stateful layer):

    * ``"propagate"`` (default, PyTorch's behaviour): always update; a batch
      containing NaN/Inf makes the running statistics NaN/Inf.
    * ``"skip"``: if any channel's batch mean or variance is not finite, leave the
      running statistics (and the caller's ``num_batches_tracked``) untouched and
      emit a :class:`NonFiniteBatchWarning`; the output is still computed.
    * ``"raise"``: refuse such a batch with :class:`NonFiniteBatchError`, nothing changed.

    Returns whether the running statistics were updated (the caller then counts
    the batch). ``update`` applies the rule: :func:`update_running_stats`, or its
    compiled twin for NumPy buffers (:func:`normkit.kernels.running.update_running_stats`). ``mean``/``var`` may be NumPy arrays or torch tensors; only the
    non-default policies read them back (a device sync on GPU).
    """
    if policy != "propagate" and not math.isfinite(float(mean.sum()) + float(var.sum())):
        msg = (
            f"{layer}: the batch has non-finite values (NaN or Inf in the batch mean/variance); "
        )
        if policy == "raise":
            raise NonFiniteBatchError(msg + "running statistics and num_batches_tracked left unchanged")
        warnings.warn(msg + "skipped its running-statistics update", NonFiniteBatchWarning, stacklevel=4)
        return False
    update(running_mean, running_var, mean, var, n, factor)
    return True

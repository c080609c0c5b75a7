"""Batch statistics synchronised over ``torch.distributed``: what SyncBatchNorm runs in training.

One collective per direction, independent of the activation size:

* **forward** -- every rank of the process group computes, per channel, its
  count ``n_r``, mean ``mu_r`` and sum of squared deviations ``M2_r``
  (CPU float32/float64: :func:`normkit.kernels.moments` over the ``(P, C, L)``
  view; otherwise torch operations in at least float32). One ``all_gather`` of
  a float64 vector ``[status, n_r, mu_r (C), M2_r (C)]`` per rank gives every
  rank the same ``(world, 2 + 2C)`` table, merged on the host in rank order
  with Chan's parallel formula (:func:`merge_moments`): only IEEE ``+ - * /``
  on identical data, so every rank gets bit-identical ``(n, mu, var)``.
  Every rank then normalizes its own share, ``y = w * (x - mu) / sqrt(var + eps) + b``.
* **backward** -- one ``all_reduce`` (sum) of the float64 vector
  ``[status, sum(dy) (C), sum(dy * (x - mu)) (C)]``
  (:func:`normkit.kernels.grad_sums`); then, with ``g = w * rstd``,
  ``dx = g*dy - g*rstd^2 * S2/n * (x - mu) - g * S1/n`` over the global ``n``
  (:func:`normkit.kernels.grad_input`): exactly the ``dx`` of one process on the
  concatenated batch. ``dweight = rstd * sum(dy * (x - mu))`` and
  ``dbias = sum(dy)`` are this rank's own share (torch's convention), so
  DistributedDataParallel's gradient averaging yields the full-batch gradient.

Failure protocol (no rank is left waiting):

* an error only this rank can see (wrong channel count, dtype, a failing
  kernel...) is caught; the rank still joins the collective with ``status = 1``
  and raises its own error afterwards, while every other rank raises
  :class:`SyncBatchNormError` naming it. Same in the backward.
* errors decided on the merged statistics -- one value per channel in the
  *global* batch (``ValueError``), ``nonfinite="raise"`` -- are raised by every
  rank together, since every rank holds the same table.
* a peer that crashes, exits or never calls the collective makes the
  collective itself fail: at once when its connection closes, otherwise after
  the process group's timeout (``init_process_group(timeout=...)``; torch's
  default is 30 minutes for gloo, 10 for NCCL). That error is re-raised with a
  note naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .. import _checks, kernels
from ..kernels.running import update_running_stats as fold_running_stats
from ..running import commit_batch_stats, update_factor
from . import _torch_impl
from ._bridge import as_view, new_like_view
from .functional import check_input, uses_kernels

__all__ = ["SyncBatchNormError", "merge_moments", "sync_batch_norm", "sync_group"]


class SyncBatchNormError(RuntimeError):
    """A peer rank failed inside a synchronised batch norm; this rank stops with it.

    Raised on every rank whose own input was fine when another rank of the same
    process group could not contribute (its own exception says why), so that
    all ranks leave the collective together instead of waiting for a timeout.
    """


# --------------------------------------------------------------------------- merging


def merge_moments(counts: np.ndarray, means: np.ndarray, m2s: np.ndarray) -> Tuple[int, np.ndarray, np.ndarray]:
    """Chan's parallel merge of per-rank moments, in rank order, in float64.

    ``counts`` ``(R,)``, ``means`` and ``m2s`` ``(R, C)``: rank ``r`` holds
    ``counts[r]`` values per channel with mean ``means[r]`` and sum of squared
    deviations ``m2s[r]``. Ranks with count 0 are skipped. For two parts ``a, b``::

        n = n_a + n_b,  d = mu_b - mu_a
        mu = mu_a + d * n_b / n
        M2 = M2_a + M2_b + d^2 * n_a * n_b / n

    Returns ``(n, mu, M2)`` (``mu = M2 = 0`` for ``n = 0``). Only elementwise
    ``+ - * /`` in float64, so the same table gives bit-identical results on
    every machine.
    """
    counts = np.asarray(counts, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    m2s = np.asarray(m2s, dtype=np.float64)
    n = 0.0
    mean = np.zeros(means.shape[1])
    m2 = np.zeros(means.shape[1])
    for r in range(counts.shape[0]):
        nb = float(counts[r])
        if nb == 0.0:
            continue
        if n == 0.0:
            n, mean, m2 = nb, means[r].copy(), m2s[r].copy()
            continue
        total = n + nb
        delta = means[r] - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2s[r] + delta * delta * (n * nb / total)
        n = total
    return int(n), mean, m2


# --------------------------------------------------------------------------- collectives


def sync_group(process_group: Any, layer: str) -> Optional[Tuple[Any, int]]:
    """``(group, world_size)`` to synchronise over, or None when there is nothing to sync.

    None when torch.distributed is unavailable or not initialised, or the group
    has a single rank. A rank that is not a member of ``process_group`` gets a
    ``ValueError`` (no other rank waits for it, so raising alone is safe).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size(process_group)
    if world < 0:
        raise ValueError(
            f"{layer}: this process (global rank {dist.get_rank()}) is not a member of the layer's "
            f"process_group; give each rank a group that contains it (see torch.distributed.new_group)"
        )
    return (process_group, world) if world > 1 else None


def _comm_device(group: Any, input: Any) -> torch.device:
    """Where the small payloads live: the CPU for gloo, else the input's device
    (the current CUDA device for an NCCL group fed CPU tensors)."""
    backend = str(dist.get_backend(group)).lower()
    if backend == "gloo":
        return torch.device("cpu")
    device = input.device if isinstance(input, torch.Tensor) else torch.device("cpu")
    if device.type == "cpu" and backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _note(exc: BaseException, layer: str, stage: str) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(
            f"normkit: raised by the {stage} collective of {layer}: a peer rank crashed, exited, "
            f"or did not reach the same layer within the process group's timeout "
            f"(torch.distributed.init_process_group(timeout=...))"
        )


def _gather(payload: torch.Tensor, group: Any, world: int, layer: str) -> np.ndarray:
    parts = [torch.empty_like(payload) for _ in range(world)]
    try:
        dist.all_gather(parts, payload, group=group)
    except Exception as exc:
        _note(exc, layer, "forward")
        raise
    return torch.stack(parts).cpu().numpy()


def _reduce(payload: torch.Tensor, group: Any, layer: str) -> np.ndarray:
    try:
        dist.all_reduce(payload, op=dist.ReduceOp.SUM, group=group)
    except Exception as exc:
        _note(exc, layer, "backward")
        raise
    return payload.cpu().numpy()


def _peer_failure(layer: str, stage: str, ranks: str) -> SyncBatchNormError:
    return SyncBatchNormError(
        f"{layer}: {ranks} of the process group failed in the {stage} pass before the "
        f"synchronisation (that rank's own exception says why); this rank stops too, so that "
        f"no rank waits for the others"
    )


# --------------------------------------------------------------------------- autograd


@dataclass
class _Spec:
    """Everything the autograd function needs besides its tensor arguments."""

    group: Any
    world: int
    eps: float
    layer: str
    num_features: int
    running_mean: Optional[torch.Tensor]
    running_var: Optional[torch.Tensor]
    stats: List[Any]


def _kernel_path(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> bool:
    """Numba kernels for CPU float32/float64 (the tests switch this off to exercise the torch path)."""
    return uses_kernels(x, weight, bias)


def _vec(t: Optional[torch.Tensor], C: int, fill: float, dtype: torch.dtype) -> np.ndarray:
    """An affine vector for the kernels; an absent one as ones/zeros. Multiplying by 1
    and adding 0 are exact, and one compiled specialisation then serves every
    ``affine``/``bias`` combination."""
    if t is None:
        return np.full(C, fill, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    return t.detach().numpy()


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape([1, -1] + [1] * (ndim - 2))


def _keep_format(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s channels-last layout if ``like`` is channels-last."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    if like.dim() == 5 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last_3d):
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t


def _validate(spec: _Spec, x: Any, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> None:
    """The local checks (no single-value check: that one is decided on the global count)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{spec.layer} expected a torch.Tensor input, got {type(x).__name__}")
    check_input(spec.layer, x, False, weight, bias, spec.running_mean, spec.running_var)
    _checks.check_channels(spec.layer, tuple(x.shape), 1, spec.num_features)
    if spec.num_features == 0:
        raise ValueError(f"{spec.layer} expected a non-zero number of channels")


class _RefuseDoubleBackward(torch.autograd.Function):
    """Passes the first-order gradients through; differentiating them raises a clear error."""

    @staticmethod
    def forward(ctx, layer, *tensors):
        ctx.layer = layer
        return tuple(None if t is None else t.clone() for t in tensors[3:])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{ctx.layer}: double backward through a synchronised SyncBatchNorm is not supported "
            f"(its backward exchanges statistics between processes); differentiate a model in eval "
            f"mode or with normkit.nn.BatchNorm*d instead"
        )


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm over every rank of ``spec.group``. See the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, spec: _Spec):
        C = spec.num_features
        device = _comm_device(spec.group, x)
        payload = torch.zeros(2 + 2 * C, dtype=torch.float64, device=device)
        error: Optional[BaseException] = None
        kernel = False
        x3 = view = None
        n_local = 0
        try:
            _validate(spec, x, weight, bias)
            kernel = _kernel_path(x, weight, bias)
            n_local = x.numel() // C
            if n_local:
                if kernel:
                    x3, view = as_view(x, 1)
                    mean_l, var_l = kernels.moments(x3)
                    mean_t = torch.from_numpy(mean_l)
                    m2_t = torch.from_numpy(var_l * n_local)
                else:
                    mean_t, var_t = _torch_impl.batch_stats(x)
                    mean_t = mean_t.to(torch.float64)
                    m2_t = var_t.to(torch.float64) * n_local
                payload[1] = float(n_local)
                payload[2:2 + C].copy_(mean_t)
                payload[2 + C:].copy_(m2_t)
        except Exception as exc:  # joined below with status 1, raised after the collective
            error = exc
            payload.zero_()
            payload[0] = 1.0

        table = _gather(payload, spec.group, spec.world, spec.layer)
        if error is not None:
            raise error
        failed = np.flatnonzero(table[:, 0])
        if failed.size:
            ranks = "rank " if failed.size == 1 else "ranks "
            raise _peer_failure(spec.layer, "forward", ranks + ", ".join(str(int(r)) for r in failed))

        n, mean, m2 = merge_moments(table[:, 1], table[:, 2:2 + C], table[:, 2 + C:])
        if n == 1:
            raise ValueError(
                f"{spec.layer} expected more than 1 value per channel when training, got 1 value per "
                f"channel in the global batch of all {spec.world} ranks; use a larger batch or call eval()"
            )
        var = m2 / n if n else m2
        mean = np.ascontiguousarray(mean)
        var = np.ascontiguousarray(var)
        rstd = kernels.inv_std(var, spec.eps)
        spec.stats[:] = [n, mean, var]

        if n_local == 0:
            y = torch.empty_like(x)
        elif kernel:
            y, y3 = new_like_view(x.shape, view, x.dtype)
            rstd = kernels.forward_fixed(
                x3, mean, var, _vec(weight, C, 1.0, x.dtype), _vec(bias, C, 0.0, x.dtype), spec.eps, y3
            )
        else:
            y = _torch_impl.normalize(
                x, torch.from_numpy(mean).to(x.device), torch.from_numpy(var).to(x.device), weight, bias, spec.eps
            )
        ctx.save_for_backward(x, weight)
        ctx.mean, ctx.rstd, ctx.n, ctx.n_local = mean, rstd, n, n_local
        ctx.kernel, ctx.view, ctx.device = kernel, view, device
        ctx.group, ctx.layer, ctx.C = spec.group, spec.layer, C
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        create_graph = torch.is_grad_enabled()
        with torch.no_grad():
            dx, dw, db = _backward(ctx, dy)
        if create_graph:
            x, weight = ctx.saved_tensors
            dx, dw, db = _RefuseDoubleBackward.apply(ctx.layer, dy, x, weight, dx, dw, db)
        return dx, dw, db, None


def _backward(ctx, dy: torch.Tensor):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    C = ctx.C
    if ctx.n == 0:  # an empty global batch: every rank knows, nobody communicates
        dx = torch.zeros_like(x) if need_x else None
        dw = torch.zeros_like(weight) if need_w else None
        db = torch.zeros(C, dtype=ctx.bias_dtype, device=x.device) if need_b else None
        return dx, dw, db

    payload = torch.zeros(1 + 2 * C, dtype=torch.float64, device=ctx.device)
    error: Optional[BaseException] = None
    s1 = s2 = None
    try:
        if ctx.n_local == 0:
            s1 = s2 = np.zeros(C) if ctx.kernel else torch.zeros(C, dtype=torch.float64, device=x.device)
        elif ctx.kernel:
            x3, view = as_view(x, 1, like=ctx.view)
            dy3, _ = as_view(dy, 1, like=view)
            s1, s2 = kernels.grad_sums(dy3, x3, ctx.mean)
        else:
            xc = x if x.dtype in (torch.float32, torch.float64) else x.float()
            dims = _torch_impl.reduce_dims(x.dim())
            dyc = dy.to(xc.dtype)
            xmu = xc - _per_channel(torch.from_numpy(ctx.mean).to(xc), x.dim())
            s1 = dyc.sum(dims).to(torch.float64)
            s2 = (dyc * xmu).sum(dims).to(torch.float64)
        if need_x:
            payload[1:1 + C].copy_(torch.as_tensor(s1))
            payload[1 + C:].copy_(torch.as_tensor(s2))
    except Exception as exc:
        error = exc
        payload.zero_()
        payload[0] = 1.0

    dx = None
    if need_x:
        total = _reduce(payload, ctx.group, ctx.layer)
        if error is not None:
            raise error
        if total[0] != 0:
            raise _peer_failure(ctx.layer, "backward", f"{int(total[0])} rank(s)")
        S1 = np.ascontiguousarray(total[1:1 + C])
        S2 = np.ascontiguousarray(total[1 + C:])
        if ctx.n_local == 0:
            dx = torch.zeros_like(x)
        elif ctx.kernel:
            dx, dx3 = new_like_view(x.shape, view, x.dtype)
            kernels.grad_input(dy3, x3, ctx.mean, ctx.rstd, _vec(weight, C, 1.0, x.dtype), S1, S2, ctx.n, dx3)
        else:
            g = ctx.rstd if weight is None else weight.detach().cpu().double().numpy() * ctx.rstd
            a = g
            b = -g * ctx.rstd * ctx.rstd * S2 / ctx.n
            k = -g * S1 / ctx.n
            nd = x.dim()

            def vec(v: np.ndarray) -> torch.Tensor:
                return _per_channel(torch.from_numpy(np.ascontiguousarray(v)).to(xc), nd)

            dx = _keep_format((dyc * vec(a) + xmu * vec(b) + vec(k)).to(x.dtype), x)
    elif error is not None:
        raise error

    rstd_t = torch.from_numpy(ctx.rstd)
    dw = (torch.as_tensor(s2).cpu() * rstd_t).to(device=weight.device, dtype=weight.dtype) if need_w else None
    db = torch.as_tensor(s1).to(device=x.device, dtype=ctx.bias_dtype) if need_b else None
    return dx, dw, db


# --------------------------------------------------------------------------- functional


def sync_batch_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    momentum: Optional[float],
    eps: float,
    *,
    group: Any,
    world_size: int,
    num_features: int,
    num_batches_tracked: Optional[torch.Tensor] = None,
    nonfinite: str = "propagate",
    layer: str = "SyncBatchNorm",
) -> torch.Tensor:
    """Training-mode batch normalization with statistics over every rank of ``group``.

    Every rank of ``group`` (``world_size > 1`` ranks) must call it for the same
    layer in the same order. ``input`` ``(N_r, C, *)`` may hold a different
    ``N_r`` on each rank, 0 included. With ``n = sum_r N_r * prod(*)`` values per
    channel, ``mu``/``var`` (biased) the global batch statistics:
    ``y = weight * (x - mu) / sqrt(var + eps) + bias``; the running statistics,
    if given, become ``(1 - f) * running + f * batch`` with the unbiased global
    variance ``var * n / (n - 1)``, ``f = momentum`` or, for ``momentum=None``,
    ``1 / num_batches_tracked`` -- the same on every rank. ``num_batches_tracked``
    counts the batch as :func:`normkit.nn.functional.batch_norm` does (an empty
    global batch is counted, its statistics are not folded in).
    """
    spec = _Spec(group, world_size, float(eps), layer, num_features, running_mean, running_var, [])
    y = _SyncBatchNormFunction.apply(input, weight, bias, spec)
    if running_mean is None or running_var is None:
        return y
    if nonfinite != "propagate":
        _checks.check_nonfinite_policy(layer, nonfinite)
    n, mean, var = spec.stats
    updated = True
    if n > 0:
        count = 1
        if momentum is None:
            if num_batches_tracked is None:
                raise ValueError(f"{layer} with momentum=None (cumulative average) needs num_batches_tracked")
            count = int(num_batches_tracked) + 1
        factor = update_factor(momentum, count)
        with torch.no_grad():
            if running_mean.is_cpu and running_var.is_cpu and running_mean.dtype != torch.bfloat16 \
                    and running_var.dtype != torch.bfloat16:
                rm, rv = running_mean.numpy(), running_var.numpy()
                updated = commit_batch_stats(layer, nonfinite, mean, var, n, rm, rv, factor, fold_running_stats)
            else:
                m = torch.from_numpy(mean).to(running_mean.device)
                v = torch.from_numpy(var).to(running_var.device)
                updated = commit_batch_stats(layer, nonfinite, m, v, n, running_mean, running_var, factor)
    if updated and num_batches_tracked is not None:
        with torch.no_grad():
            num_batches_tracked.add_(1)
    return y

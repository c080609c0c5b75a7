"""Multi-process jobs for tests/test_sync_batchnorm.py (a helper, not a test module).

The tests call :func:`launch`, which starts ``world`` processes running this
file as a script (``python syncbn_workers.py --job two --rank r ...``). They
form a gloo process group on 127.0.0.1, run every scenario of the job in
order, and each saves a dict ``{scenario: record}`` with ``torch.save``; the
test process then compares the records with single-process references it
computes itself. Scenario failures are recorded (exception type and message),
not fatal, so that one job serves many tests; a job that hangs is killed.

Everything the worker and the tests must agree on -- the cases, the data, the
initial layer state, the network -- is defined here once, deterministically.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

_T_START = time.monotonic()

import torch  # noqa: E402
from torch import nn  # noqa: E402

CF = torch.contiguous_format
CL = torch.channels_last
CL3 = torch.channels_last_3d

#: the world process group's timeout in the jobs: long enough for a slow
#: machine, short enough that a harness bug fails instead of hanging.
WORLD_TIMEOUT_S = 60
#: the timeout of the group used by the "peer never arrives" scenario.
STRAGGLER_TIMEOUT_S = 3


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One layer scenario: per-rank batch sizes, per-sample shape ``(C, *spatial)``,
    dtypes and layout, layer arguments, and how many training steps."""

    name: str
    sizes: Tuple[int, ...]
    feat: Tuple[int, ...]
    dtype: torch.dtype = torch.float32
    fmt: torch.memory_format = CF
    kwargs: Dict[str, Any] = field(default_factory=dict)
    steps: int = 2
    param_dtype: Optional[torch.dtype] = None  # None: the input's dtype
    torch_path: bool = False  # force the pure-torch implementation (not the kernels)

    @property
    def C(self) -> int:
        return self.feat[0]

    @property
    def dim(self) -> int:
        return {1: 1, 2: 1, 3: 2, 4: 3}[len(self.feat)]

    @property
    def pdtype(self) -> torch.dtype:
        return self.param_dtype or self.dtype

    @property
    def affine(self) -> bool:
        return self.kwargs.get("affine", True)

    @property
    def tracks(self) -> bool:
        return self.kwargs.get("track_running_stats", True)


CASES_TWO = [
    Case("nchw_4_4", (4, 4), (3, 5, 4)),
    Case("nhwc_3_5", (3, 5), (3, 5, 4), fmt=CL),
    Case("nc_1_1", (1, 1), (4,)),
    Case("ncl_f64_cumulative", (2, 6), (3, 20), dtype=torch.float64, kwargs=dict(momentum=None), steps=3),
    Case("ndhwc_no_affine", (2, 3), (2, 3, 4, 2), fmt=CL3, kwargs=dict(affine=False)),
    Case("ncl_no_running_stats", (4, 2), (3, 7), kwargs=dict(track_running_stats=False)),
    Case("nchw_bf16", (3, 3), (3, 4, 4), dtype=torch.bfloat16, param_dtype=torch.float32),
    Case("nhwc_f64_torch_path", (5, 2), (3, 4, 4), dtype=torch.float64, fmt=CL, torch_path=True),
    Case("nchw_no_bias", (3, 4), (3, 6, 2), kwargs=dict(bias=False)),
    Case("nchw_large_parallel", (40, 24), (8, 16, 16)),  # > 32K elements per rank: the parallel kernels
]

CASES_THREE = [
    Case("nchw_5_0_7", (5, 0, 7), (3, 4, 4)),
    Case("nc_1_2_3", (1, 2, 3), (4,)),
    Case("nhwc_f64_0_3_0", (0, 3, 0), (3, 5, 3), dtype=torch.float64, fmt=CL),
    Case("ncl_torch_path_2_0_1", (2, 0, 1), (3, 5), torch_path=True, kwargs=dict(momentum=None)),
    Case("ncdhw_f64_1_2_3", (1, 2, 3), (2, 3, 2, 2), dtype=torch.float64),
    Case("global_empty_0_0_0", (0, 0, 0), (3, 4, 4), steps=1),
]


def offsets(sizes: Sequence[int]) -> List[int]:
    out, acc = [], 0
    for s in sizes:
        out.append(acc)
        acc += s
    return out


def shard(t: torch.Tensor, sizes: Sequence[int], rank: int, fmt: torch.memory_format = CF) -> torch.Tensor:
    """Rank ``rank``'s rows of the full batch ``t``, in layout ``fmt``."""
    start = offsets(sizes)[rank]
    return t[start:start + sizes[rank]].contiguous(memory_format=fmt)


def make_data(case: Case, step: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """The full (concatenated) batch ``x`` and an upstream gradient ``dy`` for one step."""
    seed = sum(map(ord, case.name)) * 100 + (7 if step == "eval" else step)
    gen = torch.Generator().manual_seed(seed)
    n = sum(case.sizes)
    shape = (n,) + case.feat
    offset = torch.arange(case.C, dtype=torch.float64).reshape([1, -1] + [1] * (len(case.feat) - 1))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2.0 + 3.0 + offset
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x.to(case.dtype).contiguous(memory_format=case.fmt), dy.to(case.dtype).contiguous(memory_format=case.fmt)


def init_state(layer: nn.Module, case: Case) -> None:
    """Random weight, bias and running statistics, the same in every process."""
    gen = torch.Generator().manual_seed(sum(map(ord, case.name)))
    C = case.C
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.copy_(torch.rand(C, generator=gen, dtype=torch.float64) + 0.5)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
        if layer.running_mean is not None:
            layer.running_mean.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
            layer.running_var.copy_(torch.rand(C, generator=gen, dtype=torch.float64) + 0.5)
            layer.num_batches_tracked.fill_(3)


def layer_kwargs(case: Case) -> Dict[str, Any]:
    return dict(case.kwargs, dtype=case.pdtype)


DataFn = Callable[[Any], Tuple[torch.Tensor, torch.Tensor]]


def run_layer(
    layer: nn.Module, case: Case, rank: Optional[int], counter: Optional[Callable[[], int]] = None,
    data: Optional[DataFn] = None,
) -> Dict[str, Any]:
    """Train ``layer`` for ``case.steps`` steps, then one eval forward; record everything.

    ``rank=None``: ``layer`` is a single-process reference fed the full batch;
    its eval output is still split per rank (``track_running_stats=False``
    evaluates each rank's shard on its own, as in the distributed run).
    """
    count = counter or (lambda: 0)
    data = data or (lambda step: make_data(case, step))
    rec: Dict[str, Any] = {"steps": []}
    for step in range(case.steps):
        x_full, dy_full = data(step)
        x = x_full if rank is None else shard(x_full, case.sizes, rank, case.fmt)
        dy = dy_full if rank is None else shard(dy_full, case.sizes, rank, case.fmt)
        x.requires_grad_(True)
        c0 = count()
        y = layer(x)
        c1 = count()
        (y * dy).sum().backward()
        c2 = count()
        grad = lambda p: None if p is None or p.grad is None else p.grad.detach().clone()  # noqa: E731
        rec["steps"].append(dict(
            y=y.detach().clone(), dx=x.grad.detach().clone(),
            dw=grad(layer.weight), db=grad(layer.bias),
            rm=None if layer.running_mean is None else layer.running_mean.clone(),
            rv=None if layer.running_var is None else layer.running_var.clone(),
            nbt=None if layer.num_batches_tracked is None else int(layer.num_batches_tracked),
            layout_kept=bool(y.is_contiguous(memory_format=case.fmt)),
            dx_layout_kept=bool(x.grad.is_contiguous(memory_format=case.fmt)),
            fwd_calls=c1 - c0, bwd_calls=c2 - c1,
        ))
        layer.zero_grad(set_to_none=True)
    layer.eval()
    x_full, _ = data("eval")
    ranks = range(len(case.sizes)) if rank is None else [rank]
    outs = []
    c0 = count()
    with torch.no_grad():
        for r in ranks:
            xs = shard(x_full, case.sizes, r, case.fmt)
            local_stats = not case.tracks
            if local_stats and xs.numel() // case.C <= 1:
                outs.append(None)  # a one-value shard has no batch statistics of its own
            else:
                outs.append(layer(xs))
    rec["eval"] = outs
    rec["eval_calls"] = count() - c0
    return rec


def reference(case: Case, impl: str, data: Optional[DataFn] = None) -> Dict[str, Any]:
    """Single-process run of ``case`` on the concatenated batch: ``impl`` "normkit" or "torch"."""
    import normkit.nn as nkn

    kw = layer_kwargs(case)
    bias = kw.pop("bias", True)
    if impl == "torch":
        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[case.dim]
        layer = cls(case.C, bias=bias, **kw)
    else:
        cls = {1: nkn.BatchNorm1d, 2: nkn.BatchNorm2d, 3: nkn.BatchNorm3d}[case.dim]
        layer = cls(case.C, **kw)
        if not bias:
            layer.bias = None
    init_state(layer, case)
    layer.train()
    return run_layer(layer, case, None, data=data)


# --------------------------------------------------------------------------- the DDP scenario


def make_net(seed: int = 1234) -> nn.Module:
    """A small conv net with BatchNorm2d and BatchNorm1d (torch's), the same in every process."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5), nn.BatchNorm1d(5),
    )


DDP_STEPS = 3
DDP_LR = 0.1


def ddp_data(sizes: Sequence[int], step: int) -> Tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(500 + step)
    n = sum(sizes)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def train_reference(sizes: Sequence[int], fmt: torch.memory_format) -> Dict[str, torch.Tensor]:
    """Single-process training of the torch net on the full batch (mean loss)."""
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=DDP_LR, momentum=0.9)
    for step in range(DDP_STEPS):
        x, t = ddp_data(sizes, step)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x.contiguous(memory_format=fmt)), t).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------- worker side

_CALLS = {"n": 0}
_COLLECTIVES = ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "reduce_scatter",
                "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter", "reduce")


def _count_collectives() -> None:
    """Wrap torch.distributed's collectives with a call counter."""
    import torch.distributed as dist

    for name in _COLLECTIVES:
        fn = getattr(dist, name, None)
        if fn is None:
            continue

        def wrapped(*args, __fn=fn, **kwargs):
            _CALLS["n"] += 1
            return __fn(*args, **kwargs)

        setattr(dist, name, wrapped)


def _calls() -> int:
    return _CALLS["n"]


def _err(exc: BaseException) -> Tuple[str, str]:
    return (type(exc).__name__, str(exc))


def _sync_layer(case: Case, group: Any = None) -> nn.Module:
    from normkit.nn.sync_batchnorm import SyncBatchNorm

    layer = SyncBatchNorm(case.C, process_group=group, **layer_kwargs(case))
    init_state(layer, case)
    return layer


def _run_case(case: Case, rank: int, group: Any = None) -> Dict[str, Any]:
    from normkit.nn import _distributed

    original = _distributed._kernel_path
    if case.torch_path:
        _distributed._kernel_path = lambda *a: False
    try:
        return run_layer(_sync_layer(case, group), case, rank, _calls)
    finally:
        _distributed._kernel_path = original


def _state(layer: nn.Module) -> Dict[str, Any]:
    return {k: v.clone() for k, v in layer.state_dict().items()}


def _local_error(rank: int) -> Dict[str, Any]:
    """Rank 1 feeds a wrong channel count; rank 0's input is fine."""
    case = Case("local_error", (4, 4), (3, 5))
    layer = _sync_layer(case)
    before = _state(layer)
    x = torch.randn(4, 3 if rank == 0 else 5, 5)
    rec: Dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        layer(x)
        rec["err"] = None
    except Exception as exc:
        rec["err"] = _err(exc)
    rec["elapsed"] = time.monotonic() - t0
    rec["unchanged"] = all(torch.equal(before[k], v) for k, v in _state(layer).items())
    return rec


def _backward_error(rank: int) -> Dict[str, Any]:
    """Rank 1's backward fails before the synchronisation (an injected kernel failure)."""
    from normkit.nn import _distributed

    case = Case("backward_error", (4, 4), (3, 5))
    layer = _sync_layer(case)
    x_full, dy_full = make_data(case, 0)
    x = shard(x_full, case.sizes, rank).requires_grad_(True)
    y = layer(x)
    original = _distributed.kernels.grad_sums

    def failing(*args):
        raise MemoryError("injected failure on rank 1")

    rec: Dict[str, Any] = {}
    if rank == 1:
        _distributed.kernels.grad_sums = failing
    t0 = time.monotonic()
    try:
        (y * shard(dy_full, case.sizes, rank)).sum().backward()
        rec["err"] = None
    except Exception as exc:
        rec["err"] = _err(exc)
    finally:
        _distributed.kernels.grad_sums = original
    rec["elapsed"] = time.monotonic() - t0
    return rec


def _global_error(case: Case, rank: int) -> Dict[str, Any]:
    """Run one training forward expected to fail on every rank; record the error and the state."""
    layer = _sync_layer(case)
    before = _state(layer)
    x_full, _ = make_data(case, 0)
    x = shard(x_full, case.sizes, rank, case.fmt)
    rec: Dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            layer(x)
            rec["err"] = None
        except Exception as exc:
            rec["err"] = _err(exc)
    rec["warnings"] = [type(w.message).__name__ for w in caught]
    rec["unchanged"] = all(torch.equal(before[k], v) for k, v in _state(layer).items())
    return rec


def _nonfinite(rank: int, policy: str) -> Dict[str, Any]:
    """NaN in rank 0's shard only: the policy is applied on the global statistics, on both ranks."""
    case = Case("nonfinite", (3, 3), (2, 4))
    layer = _sync_layer(case)
    layer.nonfinite = policy
    before = _state(layer)
    x_full, _ = make_data(case, 0)
    x_full[1, 1, 2] = float("nan")
    x = shard(x_full, case.sizes, rank)
    rec: Dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            layer(x)
            rec["err"] = None
        except Exception as exc:
            rec["err"] = _err(exc)
    rec["warnings"] = [type(w.message).__name__ for w in caught]
    rec["unchanged"] = all(torch.equal(before[k], v) for k, v in _state(layer).items())
    return rec


def _double_backward(rank: int) -> Dict[str, Any]:
    case = Case("double_backward", (3, 3), (2, 4))
    layer = _sync_layer(case)
    x_full, _ = make_data(case, 0)
    x = shard(x_full, case.sizes, rank).requires_grad_(True)
    y = layer(x)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)  # first order works, synchronised
    rec: Dict[str, Any] = {"first_order": gx.detach().clone()}
    try:
        gx.square().sum().backward()
        rec["err"] = None
    except Exception as exc:
        rec["err"] = _err(exc)
    return rec


def _ddp(rank: int, world: int, sizes: Sequence[int], fmt: torch.memory_format) -> Dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from normkit.nn.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

    net = convert_sync_batchnorm(make_net())
    n_sync = sum(isinstance(m, SyncBatchNorm) for m in net.modules())
    model = DDP(net)
    opt = torch.optim.SGD(model.parameters(), lr=DDP_LR, momentum=0.9)
    n = sum(sizes)
    for step in range(DDP_STEPS):
        x, t = ddp_data(sizes, step)
        opt.zero_grad()
        out = model(shard(x, sizes, rank, fmt))
        # DDP averages the ranks' gradients: scale each rank's summed loss so the
        # average is the gradient of the full batch's mean loss
        loss = nn.functional.cross_entropy(out, shard(t, sizes, rank), reduction="sum") * (world / n)
        loss.backward()
        opt.step()
    return {"state": {k: v.detach().clone() for k, v in net.state_dict().items()}, "n_sync": n_sync}


def _ddp_refuses_torch_syncbn_on_cpu() -> Dict[str, Any]:
    """DDP's CPU check still refuses torch's own SyncBatchNorm (normkit narrows it to its own layers)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    try:
        DDP(nn.Sequential(nn.Linear(3, 3), nn.SyncBatchNorm(3)))
        return {"err": None}
    except Exception as exc:
        return {"err": _err(exc)}


def _straggler(rank: int) -> Dict[str, Any]:
    """Rank 1 never reaches the layer: rank 0 must fail within the group's timeout."""
    import torch.distributed as dist

    group = dist.new_group([0, 1], timeout=timedelta(seconds=STRAGGLER_TIMEOUT_S))
    rec: Dict[str, Any] = {"err": None, "elapsed": None}
    if rank == 0:
        case = Case("straggler", (4, 4), (3, 5))
        layer = _sync_layer(case, group)
        t0 = time.monotonic()
        try:
            layer(torch.randn(4, 3, 5))
        except Exception as exc:
            rec["err"] = _err(exc)
        rec["elapsed"] = time.monotonic() - t0
    return rec


def _subgroups(rank: int) -> Dict[str, Any]:
    """World of 3: ranks 0 and 2 synchronise over their own group, rank 1 alone over its own."""
    import torch.distributed as dist

    g02 = dist.new_group([0, 2])
    g1 = dist.new_group([1])
    case = SUBGROUP_CASE
    group = g1 if rank == 1 else g02
    rec = _run_case(case, rank, group)
    # a rank outside the layer's group is told so (nobody waits for it)
    if rank == 1:
        layer = _sync_layer(case, g02)
        try:
            layer(torch.randn(3, case.C, 4, 4))
            rec["non_member_err"] = None
        except Exception as exc:
            rec["non_member_err"] = _err(exc)
    return rec


#: The subgroup scenario's per-rank sizes: ranks 0 and 2 hold (3, 4) of a 7-row batch;
#: rank 1 gets rows of its own (the middle 5).
SUBGROUP_CASE = Case("subgroups", (3, 5, 4), (3, 4, 4))


def _job_two(rank: int, world: int) -> Dict[str, Any]:
    import torch.distributed as dist

    results: Dict[str, Any] = {}

    def attempt(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        try:
            results[name] = fn()
        except Exception as exc:  # recorded; the test of that scenario fails with it
            results[name] = {"crash": _err(exc), "trace": traceback.format_exc()}
        dist.barrier()
        results.setdefault("_seconds", {})[name] = time.monotonic() - t0

    for case in CASES_TWO:
        attempt(case.name, lambda case=case: _run_case(case, rank))
    attempt("local_error", lambda: _local_error(rank))
    attempt("backward_error", lambda: _backward_error(rank))
    attempt("nonfinite_raise", lambda: _nonfinite(rank, "raise"))
    attempt("nonfinite_skip", lambda: _nonfinite(rank, "skip"))
    attempt("double_backward", lambda: _double_backward(rank))
    attempt("after_errors", lambda: _run_case(CASES_TWO[0], rank))
    attempt("ddp_4_4", lambda: _ddp(rank, world, (4, 4), CF))
    attempt("ddp_3_5_channels_last", lambda: _ddp(rank, world, (3, 5), CL))
    attempt("ddp_torch_syncbn", _ddp_refuses_torch_syncbn_on_cpu)
    attempt("straggler", lambda: _straggler(rank))

    # last: rank 1 leaves for good; rank 0's next training forward must fail, fast
    if rank == 1:
        return results
    case = Case("dead_peer", (4, 4), (3, 5))
    layer = _sync_layer(case)
    time.sleep(0.5)
    t0 = time.monotonic()
    try:
        layer(torch.randn(4, 3, 5))
        results["dead_peer"] = {"err": None}
    except Exception as exc:
        results["dead_peer"] = {"err": _err(exc)}
    results["dead_peer"]["elapsed"] = time.monotonic() - t0
    return results


def _job_three(rank: int, world: int) -> Dict[str, Any]:
    import torch.distributed as dist

    results: Dict[str, Any] = {}

    def attempt(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        try:
            results[name] = fn()
        except Exception as exc:
            results[name] = {"crash": _err(exc), "trace": traceback.format_exc()}
        dist.barrier()
        results.setdefault("_seconds", {})[name] = time.monotonic() - t0

    for case in CASES_THREE:
        attempt(case.name, lambda case=case: _run_case(case, rank))
    attempt("global_single_value", lambda: _global_error(Case("global_single_value", (1, 0, 0), (4,)), rank))
    single_nchw = Case("global_single_value_nchw", (0, 1, 0), (2, 1, 1))
    attempt("global_single_value_nchw", lambda: _global_error(single_nchw, rank))
    attempt("subgroups", lambda: _subgroups(rank))
    attempt("ddp_5_0_7", lambda: _ddp(rank, world, (5, 0, 7), CF))
    return results


JOBS = {"two": (_job_two, 2), "three": (_job_three, 3)}


def worker_main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job", required=True, choices=sorted(JOBS))
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    job, world = JOBS[args.job]

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=world,
        timeout=timedelta(seconds=WORLD_TIMEOUT_S),
    )
    import normkit.nn.sync_batchnorm  # noqa: F401  (before counting: DDP's check is narrowed on import)

    _count_collectives()
    t0 = time.monotonic()
    results = job(args.rank, world)
    results.setdefault("_seconds", {})["_job"] = time.monotonic() - t0
    results["_seconds"]["_startup"] = t0 - _T_START
    path = Path(args.out) / f"rank{args.rank}.pt"
    torch.save(results, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no process-group teardown: a peer may be gone on purpose


# --------------------------------------------------------------------------- test side


def warm_kernels() -> None:
    """Compile (or load) in this process the kernel specialisations the ranks call
    directly, so that on a cold Numba cache they load them from disk instead of
    each compiling the same code at the same time."""
    import numpy as np

    from normkit import kernels

    for dtype in (np.float32, np.float64):
        for P, C, L in ((2, 3, 4), (4, 8, 2 * kernels.norm.PARALLEL_MIN // 32)):  # serial, parallel
            x = np.linspace(0.0, 1.0, P * C * L).astype(dtype).reshape(P, C, L)
            out = np.empty_like(x)
            w, b = np.ones(C, dtype), np.zeros(C, dtype)
            mean, var = kernels.moments(x)
            rstd = kernels.forward_fixed(x, mean, var, w, b, 1e-5, out)
            s1, s2 = kernels.grad_sums(x, x, mean)
            kernels.grad_input(x, x, mean, rstd, w, np.ascontiguousarray(s1), np.ascontiguousarray(s2), P * L, out)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JobFailed(RuntimeError):
    pass


def launch(job: str, out_dir: Path, timeout: float = 240.0) -> List[Dict[str, Any]]:
    """Run ``job`` in ``world`` fresh processes; return each rank's results (rank order).

    Raises :class:`JobFailed` with every rank's output if a rank exits with an
    error or the job outlives ``timeout`` seconds (then every rank is killed).
    """
    _, world = JOBS[job]
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning")
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    for attempt in range(3):
        out_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        procs, logs = [], []
        for rank in range(world):
            log = open(out_dir / f"rank{rank}.log", "w+")
            cmd = [sys.executable, __file__, "--job", job, "--rank", str(rank), "--port", str(port),
                   "--out", str(out_dir)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
            logs.append(log)
        deadline = time.monotonic() + timeout
        timed_out = False
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
        if timed_out:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
        report = "\n".join(
            f"--- rank {r} (exit {p.returncode}) ---\n{t[-4000:]}" for r, (p, t) in enumerate(zip(procs, texts))
        )
        if not timed_out and all(p.returncode == 0 for p in procs):
            return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
        if "address already in use" in report.lower() and attempt < 2:
            continue  # the free port was taken in between: try another
        raise JobFailed(f"job {job!r} {'timed out' if timed_out else 'failed'}:\n{report}")
    raise AssertionError("unreachable")


if __name__ == "__main__":
    worker_main()

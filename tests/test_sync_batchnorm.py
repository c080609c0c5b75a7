"""Tests of normkit.nn.SyncBatchNorm, convert_sync_batchnorm and revert_sync_batchnorm.

Multi-process tests run real torch.distributed jobs (gloo on 127.0.0.1, 2 and
3 processes, started by tests/syncbn_workers.py: two launches serve every
scenario). Each rank records what it computed; here the records are compared
with single-process references computed in this process on the concatenated
batch -- normkit's BatchNorm and torch.nn's BatchNorm, independently -- and,
for DistributedDataParallel training, with plain torch training on the full
batch. Nothing expected is written down by hand.
"""

from __future__ import annotations

import copy
import inspect
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import normkit.nn as nkn  # noqa: E402
from normkit.nn._distributed import merge_moments  # noqa: E402
from normkit.nn.sync_batchnorm import (  # noqa: E402
    SyncBatchNorm,
    SyncBatchNormError,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import syncbn_workers as W  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

# float32: a few units in the last place of the largest value (measured: within 6e-7 of
# torch.nn, and bit-identical to normkit's BatchNorm on the kernel path)
TOL = {
    torch.float32: dict(rtol=2e-6, atol=2e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.bfloat16: dict(rtol=2e-2, atol=3e-2),
}


def close(actual, expected, dtype, what):
    """Equal to ``dtype`` rounding, relative to the size of ``expected``."""
    tol = TOL[dtype]
    expected = expected.to(actual.dtype)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{what}: {m}"
    )


# --------------------------------------------------------------------------- the jobs


def _launch(name, cases, tmp_path_factory):
    # the references first: on a cold Numba cache this process then compiles the
    # kernels once and the ranks load them, instead of all compiling at once
    W.warm_kernels()
    for case in cases:
        for impl in ("normkit", "torch"):
            reference(case, impl)
    return W.launch(name, tmp_path_factory.mktemp(f"syncbn_{name}"))


@pytest.fixture(scope="module")
def job_two(tmp_path_factory):
    return _launch("two", W.CASES_TWO, tmp_path_factory)


@pytest.fixture(scope="module")
def job_three(tmp_path_factory):
    return _launch("three", W.CASES_THREE, tmp_path_factory)


@pytest.fixture
def job(request):
    return request.getfixturevalue({2: "job_two", 3: "job_three"}[request.param])


def records(results, name):
    recs = [r[name] for r in results]
    for rank, rec in enumerate(recs):
        if isinstance(rec, dict) and "crash" in rec:
            pytest.fail(f"scenario {name!r} crashed on rank {rank}: {rec['crash']}\n{rec['trace']}")
    return recs


_REFERENCES: dict = {}


def reference(case, impl):
    key = (repr(case), impl)
    if key not in _REFERENCES:
        _REFERENCES[key] = W.reference(case, impl)
    return _REFERENCES[key]


def check_against(recs, ref, case, what):
    """Per-rank records ``recs`` of ``case`` against a single-process run ``ref`` on
    the concatenation of those ranks' batches."""
    dtype = case.dtype
    for step, rs in enumerate(ref["steps"]):
        steps = [r["steps"][step] for r in recs]
        tag = f"{what} step {step}"
        close(torch.cat([s["y"] for s in steps]), rs["y"], dtype, f"{tag} output")
        close(torch.cat([s["dx"] for s in steps]), rs["dx"], dtype, f"{tag} input gradient")
        if case.affine:
            pdtype = case.pdtype
            close(sum(s["dw"] for s in steps), rs["dw"], pdtype, f"{tag} weight gradient summed over ranks")
            if rs["db"] is not None:
                close(sum(s["db"] for s in steps), rs["db"], pdtype, f"{tag} bias gradient summed over ranks")
            else:
                assert all(s["db"] is None for s in steps)
        else:
            assert all(s["dw"] is None and s["db"] is None for s in steps)
        for rank, s in enumerate(steps):
            assert s["layout_kept"], f"{tag}: rank {rank}'s output lost the input's memory format"
            assert s["dx_layout_kept"], f"{tag}: rank {rank}'s input gradient lost the input's memory format"
            if case.tracks:
                close(s["rm"], rs["rm"], case.pdtype, f"{tag} running_mean, rank {rank}")
                close(s["rv"], rs["rv"], case.pdtype, f"{tag} running_var, rank {rank}")
                assert s["nbt"] == rs["nbt"], f"{tag} num_batches_tracked, rank {rank}"
            else:
                assert s["rm"] is None and s["rv"] is None
    for rank, (mine, theirs) in enumerate(zip([r["eval"][0] for r in recs], ref["eval"])):
        if theirs is None:
            assert mine is None
        else:
            close(mine, theirs, dtype, f"{what} eval output, rank {rank}")


ALL_CASES = [pytest.param(2, c, id=c.name) for c in W.CASES_TWO] + [
    pytest.param(3, c, id=c.name) for c in W.CASES_THREE
]


# --------------------------------------------------------------------------- layer scenarios


@needs_gloo
@pytest.mark.parametrize("impl", ["normkit", "torch"])
@pytest.mark.parametrize("job, case", ALL_CASES, indirect=["job"])
def test_matches_single_process_on_concatenated_batch(job, case, impl):
    """Outputs, input gradients, summed parameter gradients, running statistics and
    eval outputs of every rank equal one process's on the concatenated batch."""
    check_against(records(job, case.name), reference(case, impl), case, f"{case.name} vs {impl}")


@needs_gloo
@pytest.mark.parametrize("job, case", ALL_CASES, indirect=["job"])
def test_running_stats_bit_identical_and_one_collective_per_direction(job, case):
    recs = records(job, case.name)
    nonempty = sum(case.sizes) > 0
    for step in range(case.steps):
        steps = [r["steps"][step] for r in recs]
        for s in steps:
            assert s["fwd_calls"] == 1, "one collective in the forward"
            # one collective in the backward; none if no rank has data (every rank knows)
            assert s["bwd_calls"] == (1 if nonempty else 0)
            if case.tracks:
                assert torch.equal(s["rm"], steps[0]["rm"]) and torch.equal(s["rv"], steps[0]["rv"])
    assert all(r["eval_calls"] == 0 for r in recs), "eval makes no collective call"


@needs_gloo
def test_ranks_stay_in_step_after_errors(job_two):
    case = W.CASES_TWO[0]
    check_against(records(job_two, "after_errors"), reference(case, "torch"), case, "after the error scenarios")


@needs_gloo
def test_process_group_subsets(job_three):
    """Ranks 0 and 2 synchronise over their group; rank 1, alone in its group, is a BatchNorm."""
    case = W.SUBGROUP_CASE
    recs = records(job_three, "subgroups")
    starts = W.offsets(case.sizes)

    def rows(ranks):
        def data(step):
            x, dy = W.make_data(case, step)
            pick = lambda t: torch.cat([t[starts[r]:starts[r] + case.sizes[r]] for r in ranks])  # noqa: E731
            return pick(x), pick(dy)
        return data

    pair = W.Case(case.name, (case.sizes[0], case.sizes[2]), case.feat)
    check_against([recs[0], recs[2]], W.reference(pair, "torch", data=rows([0, 2])), pair, "group {0, 2}")
    alone = W.Case(case.name, (case.sizes[1],), case.feat)
    check_against([recs[1]], W.reference(alone, "torch", data=rows([1])), alone, "group {1}")
    assert all(s["fwd_calls"] == 0 and s["bwd_calls"] == 0 for s in recs[1]["steps"]), "a one-rank group: no collective"
    err = recs[1]["non_member_err"]
    assert err is not None and err[0] == "ValueError" and "not a member" in err[1]


# --------------------------------------------------------------------------- errors


@needs_gloo
def test_global_single_value_raises_the_same_error_on_every_rank(job_three):
    for name in ("global_single_value", "global_single_value_nchw"):
        recs = records(job_three, name)
        errors = {tuple(r["err"]) if r["err"] else None for r in recs}
        assert len(errors) == 1, f"{name}: the ranks disagree: {errors}"
        (kind, message), = errors
        assert kind == "ValueError" and "more than 1 value per channel" in message and "global batch" in message
        assert all(r["unchanged"] for r in recs), "the failed batch left no trace in the state"


@needs_gloo
def test_error_seen_by_one_rank_is_raised_on_every_rank(job_two):
    rank0, rank1 = records(job_two, "local_error")
    assert rank1["err"][0] == "ValueError" and "expected input with 3 channels" in rank1["err"][1]
    assert rank0["err"][0] == SyncBatchNormError.__name__ and "rank 1" in rank0["err"][1]
    assert rank0["unchanged"] and rank1["unchanged"]
    assert rank0["elapsed"] < 5 and rank1["elapsed"] < 5, "nobody waited for a timeout"


@needs_gloo
def test_backward_error_on_one_rank_is_raised_on_every_rank(job_two):
    rank0, rank1 = records(job_two, "backward_error")
    assert rank1["err"] == ("MemoryError", "injected failure on rank 1")
    assert rank0["err"][0] == SyncBatchNormError.__name__ and "backward" in rank0["err"][1]
    assert rank0["elapsed"] < 5 and rank1["elapsed"] < 5


@needs_gloo
def test_nonfinite_policies_decided_on_global_statistics(job_two):
    """NaN in rank 0's shard only: both ranks raise (or both skip) and keep their state."""
    for rec in records(job_two, "nonfinite_raise"):
        assert rec["err"][0] == "NonFiniteBatchError" and rec["unchanged"]
    for rec in records(job_two, "nonfinite_skip"):
        assert rec["err"] is None and rec["warnings"] == ["NonFiniteBatchWarning"] and rec["unchanged"]


@needs_gloo
def test_double_backward_is_refused_but_first_order_create_graph_works(job_two):
    recs = records(job_two, "double_backward")
    for rec in recs:
        assert rec["err"][0] == "RuntimeError" and "double backward" in rec["err"][1]
    case = W.Case("double_backward", (3, 3), (2, 4))
    layer = nn.BatchNorm1d(case.C)
    W.init_state(layer, case)
    x = W.make_data(case, 0)[0].requires_grad_(True)
    y = layer(x)
    (expected,) = torch.autograd.grad((y * y).sum(), x)
    close(torch.cat([r["first_order"] for r in recs]), expected, torch.float32, "first-order gradient")


@needs_gloo
def test_peer_that_never_arrives_fails_within_the_group_timeout(job_two):
    rec = records(job_two, "straggler")[0]
    assert rec["err"] is not None, "the collective returned although a peer never joined"
    assert rec["err"][0] in ("RuntimeError", "DistBackendError") and "Timed out" in rec["err"][1]
    assert W.STRAGGLER_TIMEOUT_S - 0.5 <= rec["elapsed"] < W.STRAGGLER_TIMEOUT_S + 15


@needs_gloo
def test_peer_that_exits_makes_the_others_fail_fast(job_two):
    rec = job_two[0]["dead_peer"]
    assert rec["err"] is not None and rec["err"][0] in ("RuntimeError", "DistBackendError")
    assert rec["elapsed"] < 20, "well within the process group's timeout"


# --------------------------------------------------------------------------- DistributedDataParallel


@needs_gloo
@pytest.mark.parametrize(
    "job, name, sizes, fmt",
    [
        pytest.param(2, "ddp_4_4", (4, 4), W.CF, id="4_4"),
        pytest.param(2, "ddp_3_5_channels_last", (3, 5), W.CL, id="3_5_channels_last"),
        pytest.param(3, "ddp_5_0_7", (5, 0, 7), W.CF, id="5_0_7"),
    ],
    indirect=["job"],
)
def test_ddp_training_matches_full_batch_training(job, name, sizes, fmt):
    """A few SGD steps of DDP + SyncBatchNorm give the weights and running statistics of
    single-process training with torch's BatchNorm on the full batch."""
    recs = records(job, name)
    expected = W.train_reference(sizes, fmt)
    for rank, rec in enumerate(recs):
        assert rec["n_sync"] == 3
        assert rec["state"].keys() == expected.keys()
        for key, value in expected.items():
            if value.is_floating_point():
                torch.testing.assert_close(
                    rec["state"][key], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"rank {rank} {key}: {m}"
                )
            else:
                assert torch.equal(rec["state"][key], value), f"rank {rank} {key}"


# --------------------------------------------------------------------------- in this process: no process group


@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    C=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    offset=st.sampled_from([0.0, 1e4]),
)
def test_merge_moments_equals_moments_of_the_concatenation(counts, C, seed, offset):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(offset, 2.0, (n, C)) for n in counts]
    means = np.array([p.mean(0) if len(p) else np.zeros(C) for p in parts])
    m2s = np.array([((p - p.mean(0)) ** 2).sum(0) if len(p) else np.zeros(C) for p in parts])
    n, mean, m2 = merge_moments(np.array(counts), means, m2s)
    assert n == sum(counts)
    if n:
        allx = np.concatenate(parts)
        np.testing.assert_allclose(mean, allx.mean(0), rtol=1e-13, atol=1e-13 * (1 + offset))
        np.testing.assert_allclose(m2 / n, allx.var(0), rtol=1e-9, atol=1e-12)
    else:
        assert not mean.any() and not m2.any()


LAYOUTS = [
    ((6, 3), W.CF), ((4, 3, 7), W.CF), ((4, 3, 5, 4), W.CF), ((4, 3, 5, 4), W.CL), ((3, 2, 3, 4, 2), W.CL3),
]


@pytest.mark.parametrize("shape, fmt", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_process_group_it_is_batchnorm(shape, fmt, momentum):
    assert not (dist.is_available() and dist.is_initialized())
    dim = {2: 1, 3: 1, 4: 2, 5: 3}[len(shape)]
    ref = {1: nkn.BatchNorm1d, 2: nkn.BatchNorm2d, 3: nkn.BatchNorm3d}[dim](shape[1], momentum=momentum)
    mine = SyncBatchNorm(shape[1], momentum=momentum)
    case = W.Case("no_group", (shape[0],), tuple(shape[1:]))
    W.init_state(ref, case)
    mine.load_state_dict(ref.state_dict())
    for step in range(2):
        gen = torch.Generator().manual_seed(step)
        x = (torch.randn(shape, generator=gen) * 2 + 1).contiguous(memory_format=fmt)
        dy = torch.randn(shape, generator=gen)
        outs = []
        for layer in (ref, mine):
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            (y * dy).sum().backward()
            outs.append((y, xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
            layer.zero_grad()
        for a, b in zip(*outs):
            assert torch.equal(a, b)
        assert outs[1][0].is_contiguous(memory_format=fmt)
        for key, value in ref.state_dict().items():
            assert torch.equal(mine.state_dict()[key], value)
    ref.eval()
    mine.eval()
    assert torch.equal(mine(x), ref(x))
    assert mine.bn_dim == dim


def test_without_process_group_errors_are_batchnorms():
    layer = SyncBatchNorm(3)
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        layer(torch.randn(1, 3))
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        layer(torch.randn(4, 5))
    with pytest.raises(ValueError, match="at least 2 dims"):
        layer(torch.randn(4))
    assert int(layer.num_batches_tracked) == 0


def test_signature_state_dict_and_class_match_torch():
    ours = inspect.signature(SyncBatchNorm.__init__).parameters
    theirs = inspect.signature(nn.SyncBatchNorm.__init__).parameters
    for name, p in theirs.items():
        assert name in ours and ours[name].default == p.default and ours[name].kind == p.kind, name
    layer = SyncBatchNorm(4, 1e-3, 0.2, True, True, None)
    assert isinstance(layer, nn.SyncBatchNorm)
    torch_layer = nn.SyncBatchNorm(4)
    assert list(layer.state_dict()) == list(torch_layer.state_dict())
    W.init_state(layer, W.Case("sd", (1,), (4,)))
    torch_layer.load_state_dict(layer.state_dict())
    back = SyncBatchNorm(4)
    back.load_state_dict(torch_layer.state_dict())
    for key, value in layer.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    assert SyncBatchNorm(4, bias=False).bias is None
    assert "nonfinite='skip'" in repr(SyncBatchNorm(4, nonfinite="skip"))
    with pytest.raises(ValueError, match="nonfinite"):
        SyncBatchNorm(4, nonfinite="ignore")


def _model():
    inner = nn.Sequential(nkn.BatchNorm1d(5, nonfinite="skip"), nn.BatchNorm3d(2, affine=False))
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=None, eps=1e-3), nn.ReLU(), inner,
                         nn.BatchNorm2d(4, bias=False), nn.SyncBatchNorm(6, track_running_stats=False))


def test_convert_sync_batchnorm_carries_everything():
    model = _model()
    model[3][1].eval()
    group = object()  # any value: no collective happens here
    originals = {name: m for name, m in model.named_modules()}
    keys = list(model.state_dict())
    converted = convert_sync_batchnorm(model, process_group=group)
    assert converted is model
    for name, m in model.named_modules():
        old = originals[name]
        if not isinstance(old, nn.modules.batchnorm._BatchNorm):
            assert m is old
            continue
        assert type(m) is SyncBatchNorm and m.process_group is group, name
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats", "training"):
            assert getattr(m, attr) == getattr(old, attr), (name, attr)
        for attr in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert getattr(m, attr) is getattr(old, attr), (name, attr)
        assert m.nonfinite == getattr(old, "nonfinite", "propagate")
    dims = [m.bn_dim for m in (model[1], model[3][0], model[3][1], model[4], model[5])]
    assert dims == [2, 1, 3, 2, None]
    assert list(model.state_dict()) == keys
    root = nn.BatchNorm1d(3)
    assert type(convert_sync_batchnorm(root)) is SyncBatchNorm
    assert type(SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(2)))[0]) is SyncBatchNorm
    with pytest.raises(ValueError, match="lazy"):
        convert_sync_batchnorm(nn.LazyBatchNorm1d())


def test_converted_model_without_process_group_computes_the_same():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 5), nn.BatchNorm1d(5)
    )
    twin = convert_sync_batchnorm(copy.deepcopy(model))
    x = torch.randn(6, 3, 5, 5)
    torch.testing.assert_close(twin(x), model(x), rtol=1e-5, atol=1e-5)
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)


def test_revert_sync_batchnorm():
    model = _model()
    model[3][1].eval()
    model = convert_sync_batchnorm(model)
    with pytest.raises(ValueError, match=r"pass dim=1, 2 or 3"):
        revert_sync_batchnorm(model)
    assert all(type(m) is SyncBatchNorm for m in (model[1], model[5])), "nothing changed by the refused call"
    weight = model[1].weight
    model[5].train()
    model[5](torch.randn(2, 6, 3, 3, 3))  # 5D input: a BatchNorm3d
    reverted = revert_sync_batchnorm(model)
    kinds = [type(m) for m in (model[1], model[3][0], model[3][1], model[4], model[5])]
    assert kinds == [nkn.BatchNorm2d, nkn.BatchNorm1d, nkn.BatchNorm3d, nkn.BatchNorm2d, nkn.BatchNorm3d]
    assert reverted is model and model[1].weight is weight and model[4].bias is None
    assert model[3][0].nonfinite == "skip" and model[3][1].training is False and model[1].momentum is None
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert type(revert_sync_batchnorm(nn.SyncBatchNorm(3), dim=1)) is nkn.BatchNorm1d
    with pytest.raises(ValueError, match="dim in"):
        revert_sync_batchnorm(nn.SyncBatchNorm(3), dim=4)


# --------------------------------------------------------------------------- the torchrun example


@needs_gloo
def test_torchrun_example_runs(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONWARNINGS="ignore::FutureWarning")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(REPO / "examples" / "ddp_syncbn.py"), "--steps", "3"],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "running statistics identical on all 2 ranks" in proc.stdout, proc.stdout
    assert time.monotonic() - t0 < 180


@needs_gloo
def test_ddp_on_cpu_still_refuses_torchs_own_syncbatchnorm(job_two):
    for rec in records(job_two, "ddp_torch_syncbn"):
        assert rec["err"] is not None and "only work with GPU modules" in rec["err"][1]

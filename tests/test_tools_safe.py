"""normkit.tools.skip_nonfinite_updates / snapshot / restore."""

import copy
import warnings

import pytest
import torch
from torch import nn

import normkit.nn as nkn
from normkit.bench.model import small_resnet
from normkit.running import NonFiniteBatchWarning
from normkit.tools import restore, skip_nonfinite_updates, snapshot


def mixed_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6),
                         nkn.BatchNorm1d(6, nonfinite="raise"), nn.ReLU(), nn.Linear(6, 2))


def _stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_nan_batch_skipped_for_torch_and_normkit_layers_and_policy_restored():
    model = mixed_mlp().train()
    good = torch.randn(16, 4)
    model(good)
    before = _stats(model)
    bad = torch.randn(16, 4)
    bad[3, 1] = float("nan")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with skip_nonfinite_updates(model) as log:
            assert model[4].nonfinite == "skip"
            model(bad)
    assert [n for n, _ in log.events] == ["1", "4"]
    assert sum(issubclass(w.category, NonFiniteBatchWarning) for w in rec) >= 2
    after = _stats(model)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert model[4].nonfinite == "raise"
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks
    # outside the block torch's BN propagates NaN again (torch's behaviour is untouched)
    model[4].nonfinite = "propagate"
    model(bad)
    assert torch.isnan(model[1].running_mean).any()


def test_finite_batches_update_exactly_as_without_the_guard():
    ref, guarded = small_resnet(width=4), small_resnet(width=4)
    guarded = nkn.convert(guarded)  # normkit layers, numerically equal to torch's within rounding
    ref.train(), guarded.train()
    x = torch.randn(4, 3, 8, 8)
    with skip_nonfinite_updates(guarded) as log:
        guarded(x)
    ref(x)
    assert len(log) == 0
    for (k, a), b in zip(ref.state_dict().items(), guarded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_inf_from_overflow_in_torch_layer():
    bn = nn.BatchNorm1d(3).train()
    x = torch.full((4, 3), 3e38)
    x[0] = -3e38  # finite input whose variance overflows to inf
    with pytest.warns(NonFiniteBatchWarning):
        with skip_nonfinite_updates(bn) as log:
            bn(x)
    assert log.events and "non-finite" in log.events[0][1]
    assert torch.equal(bn.running_var, torch.ones(3)) and bn.num_batches_tracked.item() == 0


def test_snapshot_restore_roundtrip_and_validation():
    model = nkn.convert(small_resnet(width=4)).train()
    snap = snapshot(model, parameters=True)
    assert "1.running_mean" in snap and "1.num_batches_tracked" in snap and "1.weight" in snap
    assert "0.weight" not in snap  # only normalization modules
    reference = copy.deepcopy(model.state_dict())
    model(torch.randn(4, 3, 8, 8))
    with torch.no_grad():
        model[1].weight.add_(1.0)
    rm = model[1].running_mean
    restore(model, snap)
    assert model[1].running_mean is rm  # in place
    for k, v in model.state_dict().items():
        if k in snap:
            assert torch.equal(v, reference[k]), k
    bad = dict(snap)
    bad["1.running_mean"] = torch.zeros(5)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="shape"):
        restore(model, bad)
    with pytest.raises(KeyError):
        restore(model, {"nope.running_mean": torch.zeros(1)})
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    only_buffers = snapshot(model)
    assert not any(k.endswith("weight") for k in only_buffers)

"""normkit.tools.recalibrate: population statistics, checked against statistics of the
concatenated inputs captured independently (a plain forward hook, torch.var)."""

import copy

import pytest
import torch
from torch import nn

import normkit.nn as nkn
from normkit.bench.model import small_resnet
from normkit.tools import population_stats, recalibrate


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, 8), nkn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("convert", [False, True])
def test_resnet_first_layer_matches_concatenated_batches(convert):
    model = small_resnet(width=8)
    if convert:
        model = nkn.convert(model)
    model.train()
    g = torch.Generator().manual_seed(0)
    # batches of different sizes and a shifted distribution, so an EMA or a mean of
    # per-batch variances would differ from the pooled statistics
    batches = [torch.randn(n, 3, 12, 12, generator=g) * s + o for n, s, o in [(4, 1.0, 0.0), (7, 2.0, 1.0), (2, 0.5, -3.0)]]
    x = torch.cat(batches).double()
    # the stem conv then BN: inputs of the first BN are conv(x); compute them independently
    conv, bn = model[0], model[1]
    with torch.no_grad():
        z = nn.functional.conv2d(x, conv.weight.double(), None, conv.stride, conv.padding)
    zm = z.mean(dim=(0, 2, 3))
    zv = z.transpose(0, 1).reshape(z.shape[1], -1).var(dim=1, unbiased=True)
    params = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    counts = recalibrate(model, batches, progress_bar=False)
    assert counts["1"] == x.shape[0] * 12 * 12
    torch.testing.assert_close(bn.running_mean, zm.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, zv.float(), rtol=1e-5, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():  # params and num_batches_tracked untouched
        if "running" not in k:
            assert torch.equal(v, params[k]), k


def test_every_layer_equals_captured_inputs_and_modes_restored():
    model = mlp().eval()
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(n, 6, generator=g), torch.zeros(n)) for n in (5, 9, 3, 8)]
    layers = [model[1], model[5]]
    captured = {id(l): [] for l in layers}
    handles = [l.register_forward_pre_hook(lambda m, a: captured[id(m)].append(a[0].detach().double().clone()))
               for l in layers]
    nbt = [l.num_batches_tracked.clone() for l in layers]
    recalibrate(model, batches, num_batches=3, progress_bar=False)
    for h in handles:
        h.remove()
    assert not model.training and not any(m.training for m in model.modules())
    for l, n0 in zip(layers, nbt):
        xs = torch.cat(captured[id(l)])
        assert xs.shape[0] == 5 + 9 + 3  # num_batches=3
        torch.testing.assert_close(l.running_mean, xs.mean(0).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(l.running_var, xs.var(0, unbiased=True).float(), rtol=1e-5, atol=1e-6)
        assert torch.equal(l.num_batches_tracked, n0)


def test_not_an_ema_and_eval_improves():
    """A model whose running stats are stale: after recalibrate, eval output on the
    data equals train-mode normalization by the pooled statistics (one big batch)."""
    model = mlp()
    g = torch.Generator().manual_seed(5)
    data = torch.randn(64, 6, generator=g) * 3 + 2
    batches = list(data.split(16))
    recalibrate(model, batches, progress_bar=False)
    # a single BN fed the whole data in one batch: its batch statistics are the population ones
    bn = model[1]
    z = model[0](data).detach().double()
    torch.testing.assert_close(bn.running_mean.double(), z.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), z.var(0), rtol=1e-5, atol=1e-5)


def test_population_stats_does_not_modify_and_unseen_warns():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    stats = population_stats(model, [torch.randn(4, 6)], progress_bar=False)
    assert set(stats) == {"1", "5"} and stats["1"].count == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.BatchNorm1d(6)
            self.b = nn.BatchNorm1d(6)  # never called

        def forward(self, x):
            return self.a(x)

    m = Skip()
    with pytest.warns(UserWarning, match="received no input"):
        counts = recalibrate(m, [torch.randn(4, 6)], progress_bar=False)
    assert counts == {"a": 4, "b": 0}
    assert torch.equal(m.b.running_var, torch.ones(6))


def test_progress_bar_on_stderr(capsys):
    recalibrate(mlp(), [torch.randn(4, 6)] * 2, progress_bar=True)
    err = capsys.readouterr().err
    assert "recalibrate" in err and "2/2" in err


def test_distributed_two_ranks_pool_exactly(tmp_path):
    import socket
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import tools_dist_worker as w

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = str(Path(__file__).parent / "tools_dist_worker.py")
    procs = [subprocess.Popen([sys.executable, script, str(r), "2", str(port), str(tmp_path)]) for r in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    recs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["calls"] for r in recs] == [1, 1]
    # single-process reference: the layers' inputs over the union of both ranks' data
    ref = w.model()
    data = torch.cat(w.rank_batches(0) + w.rank_batches(1)).double()
    with torch.no_grad():
        z1 = ref[0].double()(data)
        z2 = ref[3].double()(torch.relu(torch.cat([ref[1].double().train()(b) for b in z1.split([5, 9, 3, 2, 7])])))
    for r in recs:
        assert r["counts"] == {"1": 26, "4": 26}
        torch.testing.assert_close(r["state"]["1.running_mean"], z1.mean(0).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["state"]["1.running_var"], z1.var(0).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["state"]["4.running_mean"], z2.mean(0).float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r["state"]["4.running_var"], z2.var(0).float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(recs[0]["state"]["4.running_var"], recs[1]["state"]["4.running_var"])

"""``normkit demo``: a smoke test of --quick (files, finite numbers, the report) and unit tests of its pieces."""

import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import normkit.nn as nkn  # noqa: E402
from normkit.demo import common, experiments  # noqa: E402
from normkit.demo.run import main  # noqa: E402


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--quick", "--out", str(out)]) == 0
    return out


def test_quick_demo_writes_report_plots_and_finite_numbers(quick_run):
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    for name, plots in experiments.PLOTS.items():
        assert f"## {name}" in report
        for p in plots:
            assert (quick_run / p).stat().st_size > 1000
            assert f"]({p})" in report
    assert report.count("*What the data say:* **") == len(experiments.EXPERIMENTS)
    data = json.loads((quick_run / "results.json").read_text())
    assert set(data["results"]) == set(experiments.EXPERIMENTS)
    nums = list(_numbers(data["results"]))
    assert len(nums) > 100 and all(math.isfinite(v) for v in nums)
    assert "nan" not in report.lower().split()


def test_results_are_reproducible(tmp_path):
    data = common.load_data()
    a = experiments.run_train_vs_eval(data, tmp_path, [0], quick=True)
    b = experiments.run_train_vs_eval(data, tmp_path, [0], quick=True)
    assert a == b


def test_main_rejects_unknown_experiment(capsys):
    assert main(["no-such-experiment"]) == 2


def test_load_digits_shapes_and_split():
    d = common.load_data()
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_test.shape[1:] == (1, 8, 8)
    assert len(d.x_train) + len(d.x_test) == 1797 and d.n_classes == 10
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_test.tolist()) == set(range(10))  # stratified
    assert torch.allclose(d.x_train.mean(0), torch.zeros(1, 8, 8), atol=1e-5)  # standardised on train


@pytest.mark.parametrize("shape,image", [((50, 16), (1, 4, 4)), ((50, 7), (1, 1, 7)), ((50, 5, 6), (1, 5, 6)),
                                         ((50, 3, 4, 4), (3, 4, 4))])
def test_load_npz_shapes(tmp_path, shape, image):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=shape), y=np.repeat([3, 7], 25))
    d = common.load_data(str(path))
    assert d.image_shape == image and d.n_classes == 2 and len(d.x_train) + len(d.x_test) == 50


def test_load_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), z=np.zeros(4))
    with pytest.raises(ValueError, match="'x' and 'y'"):
        common.load_data(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(ValueError, match="as many labels"):
        common.load_data(str(tmp_path / "b.npz"))


def _pooled(v: torch.Tensor):
    c = v.transpose(0, 1).reshape(v.shape[1], -1).double()
    return c.mean(1), c.var(1, unbiased=True)


def test_recalibrate_sets_pooled_statistics_of_inputs():
    torch.manual_seed(0)
    bn = nkn.BatchNorm2d(3)
    x = 3.0 + 2.0 * torch.randn(37, 3, 4, 5, dtype=torch.float64)  # 37: a ragged last batch of 5
    bn = bn.double()
    common._recalibrate(bn, x, batch=8)
    mean, var = _pooled(x)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-12, atol=1e-12)
    assert bn.training  # the mode it came in


def test_recalibrate_is_sequential_over_layers():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nkn.BatchNorm1d(6), nn.Sigmoid(), nn.Linear(6, 5), nkn.BatchNorm1d(5))
    model.eval()
    x = torch.randn(50, 4) * 2 + 1
    common._recalibrate(model, x, batch=16)
    with torch.no_grad():  # the second layer's statistics are those of its eval-mode inputs *after* the first
        h1 = model[0](x)
        h2 = model[3](model[2](model[1](h1)))
    for layer, h in ((model[1], h1), (model[4], h2)):
        mean, var = _pooled(h)
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)
    assert not model.training


def test_mlp_same_initialisation_with_and_without_bn():
    a = common.make_mlp(64, 10, False, seed=3)
    b = common.make_mlp(64, 10, True, seed=3)
    la = [m for m in a if isinstance(m, nn.Linear)]
    lb = [m for m in b if isinstance(m, nn.Linear)]
    assert len(la) == len(lb) == 4 and sum(isinstance(m, nkn.BatchNorm1d) for m in b) == 3
    for p, q in zip(la, lb):
        assert torch.equal(p.weight, q.weight) and torch.equal(p.bias, q.bias)
    s = common.make_mlp(64, 10, False, seed=3, init_scale=10.0)
    assert torch.allclose([m for m in s if isinstance(m, nn.Linear)][0].weight, 10 * la[0].weight)


@pytest.mark.parametrize("norm", common.NORMS)
def test_convnet_runs_with_every_norm(norm):
    model = common.make_convnet((1, 8, 8), 10, norm, seed=0, batch=4, steps=10)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_batches_drop_partial_and_count_steps():
    got = list(common.batches(10, 4, 5, seed=0))
    assert len(got) == 5 and all(len(b) == 4 for b in got)
    assert len(set(torch.cat(got[:2]).tolist())) == 8  # no repeats within an epoch


def test_progress_bar_writes_to_its_stream():
    s = io.StringIO()
    bar = common.Progress(3, "x", stream=s)
    for _ in range(3):
        bar.update()
    bar.close()
    assert "3/3" in s.getvalue() and s.getvalue().endswith("\n")

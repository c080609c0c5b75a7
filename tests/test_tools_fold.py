"""normkit.tools.fold: folded model matches the original in eval, no foldable BN left,
everything unfoldable reported."""

import warnings

import pytest
import torch
from torch import nn

import normkit.nn as nkn
from normkit.bench.model import small_resnet
from normkit.tools import FoldWarning, fold
from normkit.tools.fold import fold_pair


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                C = m.num_features
                m.running_mean.copy_(torch.randn(C, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(C, generator=g) * 2 + 0.1)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(C, generator=g))
                    m.bias.copy_(torch.randn(C, generator=g))
    return model


def _bns(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _close(a, b, rtol=1e-5):
    scale = b.abs().max()
    assert (a - b).abs().max() <= rtol * scale + 1e-7, float((a - b).abs().max() / scale)


@pytest.mark.parametrize("convert", [False, True])
def test_resnet_residual_blocks(convert):
    model = _randomize_bn(small_resnet(width=8))
    if convert:
        model = nkn.convert(model)
    model.eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FoldWarning)
        folded, rep = fold(model, return_report=True)
    assert _bns(folded) == [] and rep.skipped == []
    assert len(rep.folded) == len(_bns(model)) == 15
    assert ("3.conv1", "3.bn1") in rep.folded and ("5.short.0", "5.short.1") in rep.folded
    with torch.no_grad():
        _close(folded(x), model(x))
    assert _bns(model), "the original is untouched"


def test_mlp_and_transposed_grouped_convs_in_float64_reference():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 12, bias=False), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 7), nkn.BatchNorm1d(7),
    )
    _randomize_bn(model).eval()
    x = torch.randn(9, 5)
    folded = fold(model)
    assert _bns(folded) == []
    with torch.no_grad():
        _close(folded(x), model(x))
    for layer, bn, shape in [
        (nn.ConvTranspose2d(6, 8, 3, stride=2, groups=2), nn.BatchNorm2d(8), (2, 6, 5, 5)),
        (nn.ConvTranspose1d(4, 6, 3), nkn.BatchNorm1d(6), (2, 4, 7)),
        (nn.ConvTranspose3d(2, 4, 2, bias=False), nn.BatchNorm3d(4), (1, 2, 3, 3, 3)),
        (nn.Conv3d(4, 6, 3, groups=2), nkn.BatchNorm3d(6), (2, 4, 5, 5, 5)),
        (nn.Conv1d(3, 5, 3, bias=False), nn.BatchNorm1d(5, affine=False), (2, 3, 9)),
    ]:
        seq = _randomize_bn(nn.Sequential(layer, bn)).eval().double()
        xin = torch.randn(*shape, dtype=torch.float64)
        with torch.no_grad():
            ref = seq(xin)
            fold_pair(seq[0], seq[1])
            torch.testing.assert_close(seq[0](xin), ref, rtol=1e-10, atol=1e-10)


class Weird(nn.Module):
    """Residual wiring plus cases that must not fold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)        # foldable (fx)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)       # conv2 output used twice -> not foldable
        self.bn3 = nn.BatchNorm2d(4)       # input is an addition -> not foldable
        self.bn4 = nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        a = self.bn(self.conv(x))
        c = self.conv2(x)
        b = self.bn2(c) + c
        return self.bn4(self.bn3(a + b))


def test_reports_what_it_cannot_fold():
    model = _randomize_bn(Weird()).eval()
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(FoldWarning) as rec:
        folded, rep = fold(model, return_report=True)
    msg = str(rec[0].message)
    assert rep.folded == [("conv", "bn")]
    skipped = dict(rep.skipped)
    assert set(skipped) == {"bn2", "bn3", "bn4"}
    assert "also used" in skipped["bn2"] and "not a module" in skipped["bn3"] and "running" in skipped["bn4"]
    for name in ("bn2", "bn3", "bn4"):
        assert name in msg
    assert sorted(_bns(folded)) == ["bn2", "bn3", "bn4"]
    with torch.no_grad():
        _close(folded(x), model(x))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        y = self.body(x)
        if y.sum() > 0:  # data-dependent control flow: fx cannot trace this
            y = y * 2
        return self.bn(self.head(y.mean(dim=(2, 3))))


def test_untraceable_model_falls_back_to_sequential_and_reports():
    model = _randomize_bn(Untraceable()).eval()
    with pytest.warns(FoldWarning, match="not torch.fx-traceable"):
        folded, rep = fold(model, return_report=True)
    assert rep.folded == [("body.0", "body.1")]
    assert [n for n, _ in rep.skipped] == ["bn"]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        _close(folded(x), model(x))


def test_batchnorm_act_with_residual():
    class B(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nkn.BatchNormAct2d(4, act="relu")

        def forward(self, x):
            return self.bn(self.conv(x), x)

    model = _randomize_bn(B()).eval()
    folded = fold(model)
    assert _bns(folded) == []
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        _close(folded(x), model(x))

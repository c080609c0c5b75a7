"""normkit.tools.report and inspect_main."""

import math
import textwrap

import torch
from torch import nn

import normkit.nn as nkn
from normkit.bench.model import small_resnet
from normkit.tools import inspect_main, recalibrate, report


def test_report_rows_gap_dead_constant_nonfinite(tmp_path, capsys):
    model = nkn.convert(small_resnet(width=4)).eval()
    with torch.no_grad():
        model[1].weight[0] = 0.0                    # a dead channel
        model[3].bn1.running_var[1] = float("nan")  # non-finite statistics
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 8, 8, generator=g) * 3 + 1 for _ in range(3)]
    png = tmp_path / "bn.png"
    rows = report(model, batches, png=str(png))
    out = capsys.readouterr().out
    assert "mean_gap" in out and "3.bn1" in out
    assert png.exists() and png.stat().st_size > 1000
    by = {r["layer"]: r for r in rows}
    assert len(rows) == 15
    assert by["1"]["dead"] == 1 and by["3.bn1"]["nonfinite"] == 1
    assert by["1"]["momentum"] == 0.1 and by["1"]["num_batches_tracked"] == 0
    # independent gap for the first layer: running stats are the defaults (0, 1)
    x = torch.cat(batches).double()
    z = nn.functional.conv2d(x, model[0].weight.detach().double(), None, 1, 1)
    pm = z.mean(dim=(0, 2, 3))
    pv = z.transpose(0, 1).reshape(4, -1).var(dim=1)
    gap = float((pm.abs() / torch.sqrt(pv + 1e-5)).max())
    r = (1 + 1e-5) / (pv + 1e-5)
    assert math.isclose(by["1"]["mean_gap"], gap, rel_tol=1e-6)
    assert math.isclose(by["1"]["var_ratio"], float(torch.maximum(r, 1 / r).max()), rel_tol=1e-6)
    # after recalibration the gap of every finite layer is ~0
    recalibrate(model, batches, progress_bar=False)
    rows = report(model, batches, print_table=False)
    for row in rows:
        if row["nonfinite"] == 0:
            assert row["mean_gap"] < 1e-4 and abs(row["var_ratio"] - 1) < 1e-4, row["layer"]


def test_report_constant_channel():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[0].weight[2] = 0.0  # channel 2's input is the constant bias
    rows = report(model, [torch.randn(8, 3)], print_table=False)
    assert rows[0]["constant"] == 1


def test_inspect_checkpoint_and_python_file(tmp_path, capsys):
    model = small_resnet(width=4)
    with torch.no_grad():
        model[1].running_mean[0] = float("inf")
    ckpt = tmp_path / "m.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    assert inspect_main([str(ckpt), "--png", str(tmp_path / "c.png")]) == 1
    out = capsys.readouterr().out
    assert "3.bn1" in out and (tmp_path / "c.png").exists()
    src = tmp_path / "build.py"
    src.write_text(textwrap.dedent("""
        import torch
        from normkit.bench.model import small_resnet
        def build_model():
            return small_resnet(width=4).eval()
        def batches():
            return [torch.randn(2, 3, 8, 8) for _ in range(5)]
    """))
    assert inspect_main([str(src), "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "var_ratio" in out and "5.short.1" in out

"""The command line runs end to end (a smoke test, not the science)."""

import re

from normkit.cli import main


def test_quickstart(capsys):
    assert main(["quickstart", "--epochs", "1", "--batch", "128"]) == 0
    out = capsys.readouterr().out
    assert "converted: 3 BatchNorm2d layers" in out
    losses = re.findall(r"^\s+1\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)
    assert losses, out
    torch_loss, normkit_loss = map(float, losses[0])
    assert abs(torch_loss - normkit_loss) < 1e-3 * max(1.0, torch_loss)


def test_inspect_checkpoint(tmp_path, capsys):
    """`normkit inspect` reads a state_dict and prints one row per BatchNorm layer."""
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 6, 3), torch.nn.BatchNorm2d(6))
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1" in out and "4" in out  # the layer names of the Sequential
    with torch.no_grad():
        model[1].running_var[0] = float("nan")
    torch.save(model.state_dict(), path)
    assert main(["inspect", str(path)]) == 1  # non-finite statistics are an error status

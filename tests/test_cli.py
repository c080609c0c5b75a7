"""The command line runs end to end (a smoke test, not the science)."""

import re

from normkit.cli import main


def test_demo_quickstart(capsys):
    assert main(["demo", "--epochs", "1", "--batch", "128"]) == 0
    out = capsys.readouterr().out
    assert "converted: 3 BatchNorm2d layers" in out
    losses = re.findall(r"^\s+1\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)
    assert losses, out
    torch_loss, normkit_loss = map(float, losses[0])
    assert abs(torch_loss - normkit_loss) < 1e-3 * max(1.0, torch_loss)

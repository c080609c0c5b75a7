"""normkit modules in eval mode under torch.compile, torch.export and ONNX (onnxruntime),
which trace the pure-torch path; outputs must match eager (which runs the Numba kernels)."""

import importlib.util

import pytest
import torch
from torch import nn

import normkit.nn as nkn
from normkit.bench.model import small_resnet


def resnet():
    m = nkn.convert(small_resnet(width=4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, nn.modules.batchnorm._BatchNorm):
                b.running_mean.copy_(torch.randn(b.num_features, generator=g) * 0.3)
                b.running_var.copy_(torch.rand(b.num_features, generator=g) + 0.5)
    return m.eval()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nkn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()


CASES = [(resnet, (2, 3, 16, 16)), (mlp, (4, 5))]


@pytest.mark.parametrize("make,shape", CASES, ids=["resnet", "mlp"])
def test_torch_compile_matches_eager(make, shape):
    torch._dynamo.reset()
    model = make()
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_torch_compile_inductor_single_layer():
    torch._dynamo.reset()
    bn = nkn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 3.0]))
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(bn)(x), bn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,shape", CASES, ids=["resnet", "mlp"])
def test_torch_export_matches_eager(make, shape):
    model = make()
    x = torch.randn(*shape)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)
    # the exported graph runs torch's ops, not the Numba kernels
    assert not any("KernelBatchNorm" in str(n.target) for n in ep.graph.nodes)


_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


@pytest.mark.skipif(not _ONNX, reason="needs the onnx, onnxscript and onnxruntime packages")
@pytest.mark.parametrize("make,shape", CASES, ids=["resnet", "mlp"])
def test_onnx_export_runs_in_onnxruntime(make, shape, tmp_path):
    import onnxruntime as ort

    model = make()
    x = torch.randn(*shape)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-5, atol=1e-5)


TRAINING = {
    "BatchNorm1d": (lambda: nkn.BatchNorm1d(6), (8, 6)),
    "BatchNorm2d": (lambda: nkn.BatchNorm2d(3), (4, 3, 5, 5)),
    "BatchNorm2d cumulative": (lambda: nkn.BatchNorm2d(3, momentum=None), (4, 3, 5, 5)),
    "LayerNorm": (lambda: nkn.LayerNorm(16), (4, 16)),
    "RMSNorm": (lambda: nkn.RMSNorm(16), (4, 16)),
    "GroupNorm": (lambda: nkn.GroupNorm(2, 4), (2, 4, 5, 5)),
    "InstanceNorm2d": (lambda: nkn.InstanceNorm2d(4, affine=True, track_running_stats=True), (2, 4, 5, 5)),
    "BatchRenorm2d": (lambda: nkn.BatchRenorm2d(3), (4, 3, 5, 5)),
    "GhostBatchNorm2d": (lambda: nkn.GhostBatchNorm2d(3, virtual_batch_size=2), (4, 3, 5, 5)),
    "BatchNormAct2d": (lambda: nkn.BatchNormAct2d(3), (4, 3, 5, 5)),
}


@pytest.mark.parametrize("name", list(TRAINING))
def test_training_mode_compiles_as_one_graph(name):
    """torch.compile(fullgraph=True) in training mode: no graph break in normkit's
    validation or bookkeeping; outputs and running statistics match eager."""
    import copy

    torch._dynamo.reset()
    make, shape = TRAINING[name]
    torch.manual_seed(0)
    eager = make().train()
    traced = copy.deepcopy(eager)
    compiled = torch.compile(traced, backend="eager", fullgraph=True)
    for _ in range(2):
        x = torch.randn(*shape) * 2 + 1
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(traced.state_dict()[key], value, rtol=1e-5, atol=1e-5)

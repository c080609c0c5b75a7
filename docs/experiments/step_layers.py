"""Where BatchNorm's time goes inside the small-ResNet training step (normkit bench's
model study): per BN width, forward and backward time per step from module hooks,
torch's BN and normkit's, interleaved; then, for normkit, its autograd backward and
the kernel inside it per call, within the step."""
import collections
import copy
import time

import numpy as np
import torch
from torch import nn

import normkit.nn as nkn
import normkit.nn._autograd as AG
from normkit.bench.model import _step, small_resnet

torch.set_num_threads(2)
base = small_resnet().train()
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 3, 32, 32, generator=g)
y = torch.randint(0, 10, (32,), generator=g)
ours = nkn.convert(copy.deepcopy(base))
acc = collections.defaultdict(float)


def instrument(model, tag):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            key = (tag, m.num_features)
            m.register_forward_pre_hook(lambda mod, inp: setattr(mod, "_t0", time.perf_counter()))
            m.register_forward_hook(
                lambda mod, inp, out, key=key: acc.__setitem__(key + ("fwd",), acc[key + ("fwd",)] + time.perf_counter() - mod._t0))
            m.register_full_backward_pre_hook(lambda mod, gout: setattr(mod, "_b0", time.perf_counter()))
            m.register_full_backward_hook(
                lambda mod, gin, gout, key=key: acc.__setitem__(key + ("bwd",), acc[key + ("bwd",)] + time.perf_counter() - mod._b0))


instrument(base, "torch")
instrument(ours, "normkit")
runs = {"torch": _step(base, x, y), "normkit": _step(ours, x, y)}
for f in runs.values():
    for _ in range(3):
        f()
acc.clear()
R = 10
tot = collections.defaultdict(float)
for r in range(R):
    for k, f in runs.items():
        t0 = time.perf_counter()
        f()
        tot[k] += time.perf_counter() - t0
print("whole step: " + ", ".join("%s %.1f ms" % (k, v / R * 1e3) for k, v in tot.items()))
for k in sorted(acc):
    print("  %-8s C=%-4d %s %.2f ms/step" % (k[0], k[1], k[2], acc[k] / R * 1e3))
per_call = collections.defaultdict(list)
backward, kernel = AG.KernelBatchNorm.backward, AG.kernels.backward


def timed_backward(ctx, dy):
    t0 = time.perf_counter()
    r = backward(ctx, dy)
    per_call[("autograd backward", dy.shape[1])].append(time.perf_counter() - t0)
    return r


def timed_kernel(dy3, *args):
    t0 = time.perf_counter()
    r = kernel(dy3, *args)
    per_call[("kernel", dy3.shape[1])].append(time.perf_counter() - t0)
    return r


AG.KernelBatchNorm.backward = staticmethod(timed_backward)
AG.kernels.backward = timed_kernel
for _ in range(R):
    runs["normkit"]()
for k in sorted(per_call):
    print("  normkit %-17s C=%-4d median %.3f ms per call" % (k[0], k[1], np.median(per_call[k]) * 1e3))

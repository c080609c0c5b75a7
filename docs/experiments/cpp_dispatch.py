"""Would a C++ dispatch win BatchNorm1d's small shapes? A prototype, not the library.

The module's Python path (validation, views, autograd.Function, running update)
costs tens of microseconds a call; torch's BatchNorm module runs its checks in
Python too, but its kernel, running update and autograd node are C++. This
prototype moves normkit's part to C++ the same way: a C++ ``autograd::Function``
(registered as ``torch.ops.nkproto.bn_train`` and bound directly through pybind)
allocates the output, calls normkit's compiled kernels through Numba ``cfunc``
pointers (the same ``_forward_batch``/``_backward`` two-pass kernels the
library runs for ``(N, C)`` inputs), folds the running statistics and saves
for the backward. A thin module calls it as torch's module calls
``F.batch_norm``. Then, per call, float32 ``(N, C)`` training with autograd:
torch.nn.BatchNorm1d, normkit.nn.BatchNorm1d (kernels forced on small inputs
too, ``SMALL_INPUT = 0``) and the two prototype bindings, forward and
forward+backward, interleaved rounds, median of each round.

Needs ninja (``pip install ninja``; not a project dependency) and builds the
extension with torch.utils.cpp_extension.load_inline (about a minute, cached).
Usage: cpp_dispatch.py [N1xC1 N2xC2 ...] (default 4x256 1024x256 4096x256)."""
import sys
import time

import numpy as np
import torch
from numba import carray, cfunc, types

import normkit.nn as nkn
import normkit.nn.functional as F
from normkit.kernels import norm

torch.set_num_threads(2)
F.SMALL_INPUT = 0  # every input through the kernels, as the prototype does

f32p, f64p, i64 = types.CPointer(types.float32), types.CPointer(types.float64), types.int64
CFG = norm._config(np.zeros((1 << 16, 1, 1), np.float32))[2]  # the tuning tuple (no streaming stores)
C0, C1, C2, C3, C4, C5 = CFG
FWD_PAR, FWD_SER = norm._forward_batch
BWD_PAR, BWD_SER = norm._backward
PAR_MIN = norm.PARALLEL_MIN


@cfunc(types.void(f32p, i64, i64, f32p, f32p, types.float64, f32p, f64p, f64p, f64p))
def fwd(xp, P, C, wp, bp, eps, yp, mp, vp, rp):
    x = carray(xp, (P, C, 1))
    y = carray(yp, (P, C, 1))
    w = carray(wp, (C,))
    b = carray(bp, (C,))
    cfg = (C0, C1, C2, C3, C4, C5)
    if P * C >= PAR_MIN:
        mean, var, rstd = FWD_PAR(x, w, b, eps, y, cfg)
    else:
        mean, var, rstd = FWD_SER(x, w, b, eps, y, cfg)
    m, v, r = carray(mp, (C,)), carray(vp, (C,)), carray(rp, (C,))
    m[:] = mean
    v[:] = var
    r[:] = rstd


@cfunc(types.void(f32p, f32p, i64, i64, f64p, f64p, f32p, f32p, f64p, f64p))
def bwd(dyp, xp, P, C, mp, rp, wp, dxp, dwp, dbp):
    dy = carray(dyp, (P, C, 1))
    x = carray(xp, (P, C, 1))
    dx = carray(dxp, (P, C, 1))
    mean, rstd, w = carray(mp, (C,)), carray(rp, (C,)), carray(wp, (C,))
    cfg = (C0, C1, C2, C3, C4, C5)
    if P * C >= PAR_MIN:
        dw, db = BWD_PAR(dy, x, mean, rstd, w, True, dx, True, cfg)
    else:
        dw, db = BWD_SER(dy, x, mean, rstd, w, True, dx, True, cfg)
    carray(dwp, (C,))[:] = dw
    carray(dbp, (C,))[:] = db


CPP = r"""
#include <torch/extension.h>
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;
typedef void (*fwd_t)(const float*, int64_t, int64_t, const float*, const float*, double, float*, double*, double*, double*);
typedef void (*bwd_t)(const float*, const float*, int64_t, int64_t, const double*, const double*, const float*, float*, double*, double*);
static fwd_t g_fwd = nullptr;
static bwd_t g_bwd = nullptr;
void set_kernels(int64_t f, int64_t b) { g_fwd = (fwd_t)f; g_bwd = (bwd_t)b; }

struct BN : public torch::autograd::Function<BN> {
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor w, Tensor b, Tensor rm, Tensor rv, double momentum, double eps) {
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat, "prototype: contiguous float32 (N, C)");
    int64_t P = x.size(0), C = x.size(1);
    TORCH_CHECK(w.numel() == C && b.numel() == C && rm.numel() == C && rv.numel() == C, "prototype: vectors of C");
    TORCH_CHECK(P > 1, "prototype: more than one value per channel");
    Tensor y = at::empty_like(x);
    auto o = x.options().dtype(at::kDouble);
    Tensor stats = at::empty({3, C}, o);
    double* s = stats.data_ptr<double>();
    {
      at::NoGradGuard ng;
      g_fwd(x.data_ptr<float>(), P, C, w.data_ptr<float>(), b.data_ptr<float>(), eps, y.data_ptr<float>(), s, s + C, s + 2 * C);
      float* pm = rm.data_ptr<float>();
      float* pv = rv.data_ptr<float>();
      double unbias = double(P) / double(P - 1);
      for (int64_t c = 0; c < C; ++c) {
        pm[c] = float((1.0 - momentum) * pm[c] + momentum * s[c]);
        pv[c] = float((1.0 - momentum) * pv[c] + momentum * s[C + c] * unbias);
      }
    }
    ctx->save_for_backward({x, w, stats});
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list g) {
    auto v = ctx->get_saved_variables();
    Tensor x = v[0], w = v[1], stats = v[2];
    Tensor dy = g[0].contiguous();
    int64_t P = x.size(0), C = x.size(1);
    Tensor dx = at::empty_like(x);
    Tensor gw = at::empty({2, C}, stats.options());
    double* s = stats.data_ptr<double>();
    double* pg = gw.data_ptr<double>();
    g_bwd(dy.data_ptr<float>(), x.data_ptr<float>(), P, C, s, s + 2 * C, w.data_ptr<float>(), dx.data_ptr<float>(), pg, pg + C);
    Tensor f = gw.to(at::kFloat);
    return {dx, f[0], f[1], Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor bn_train(Tensor x, Tensor w, Tensor b, Tensor rm, Tensor rv, double momentum, double eps) {
  return BN::apply(x, w, b, rm, rv, momentum, eps);
}

TORCH_LIBRARY(nkproto, m) {
  m.def("bn_train(Tensor x, Tensor w, Tensor b, Tensor(a!) rm, Tensor(b!) rv, float momentum, float eps) -> Tensor");
}
TORCH_LIBRARY_IMPL(nkproto, CompositeImplicitAutograd, m) { m.impl("bn_train", bn_train); }
"""


def build():
    from torch.utils.cpp_extension import load_inline
    t0 = time.perf_counter()
    ext = load_inline("nkproto", cpp_sources=CPP, functions=["set_kernels", "bn_train"],
                      extra_cflags=["-O2"], verbose=False)
    ext.set_kernels(fwd.address, bwd.address)
    print(f"extension ready in {time.perf_counter() - t0:.1f} s")
    return ext


class Proto(torch.nn.BatchNorm1d):
    """torch's BatchNorm1d state, the prototype's op in forward (torch's own module does its
    checks and the counter in Python too)."""

    def __init__(self, C, call):
        super().__init__(C)
        self.call = call

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
            return self.call(x, self.weight, self.bias, self.running_mean, self.running_var, self.momentum, self.eps)
        raise NotImplementedError("prototype: training only")


def check(ext, P, C):
    """The prototype agrees with normkit's module (output, running statistics, gradients)."""
    x = torch.randn(P, C) * 3 + 1
    dy = torch.randn(P, C)
    a, b = nkn.BatchNorm1d(C), Proto(C, ext.bn_train)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    ya.backward(dy)
    yb.backward(dy)
    for u, v in ((ya, yb), (a.running_mean, b.running_mean), (a.running_var, b.running_var), (xa.grad, xb.grad),
                 (a.weight.grad, b.weight.grad), (a.bias.grad, b.bias.grad)):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


def main():
    ext = build()
    shapes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[1:]] or [(4, 256), (1024, 256), (4096, 256)]
    for P, C in shapes:
        check(ext, P, C)
        x = torch.randn(P, C).requires_grad_()
        dy = torch.randn(P, C)
        mods = {"torch": torch.nn.BatchNorm1d(C), "normkit": nkn.BatchNorm1d(C),
                "proto torch.ops": Proto(C, torch.ops.nkproto.bn_train), "proto pybind": Proto(C, ext.bn_train)}

        def fwd_only(m):
            return lambda: m(x)

        def fwd_bwd(m):
            return lambda: m(x).backward(dy)

        for label, make in (("forward", fwd_only), ("forward+backward", fwd_bwd)):
            fns = {k: make(m) for k, m in mods.items()}
            rounds = {k: [] for k in fns}
            n = 300 if P * C < 1 << 16 else 100
            for f in fns.values():
                for _ in range(50):
                    f()
            for _ in range(7):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    for _ in range(n):
                        f()
                    rounds[k].append((time.perf_counter() - t0) / n * 1e6)
            med = {k: float(np.median(v)) for k, v in rounds.items()}
            print(f"{P}x{C} {label}: " + "  ".join(
                f"{k} {v:.1f} us ({min(rounds[k]):.1f}-{max(rounds[k]):.1f})" for k, v in med.items()))
            print("   x torch: " + "  ".join(f"{k} {med['torch'] / v:.2f}" for k, v in med.items() if k != "torch"))


if __name__ == "__main__":
    main()

import sys, torch, numpy as np, normkit.kernels as K
from normkit.kernels import norm
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
for shape in [(32,256,784), (8,64,3136), (32,1024,196), (32,512,784), (32,64,12544)]:
    P,C,L = shape
    if sys.argv[1:] == ["numpy"]:  # NumPy's allocations: huge pages (madvise) for arrays of 4 MiB and up
        x3 = np.random.randn(*shape).astype(np.float32); out = np.empty_like(x3)
        dy3 = np.random.randn(*shape).astype(np.float32); dx = np.empty_like(x3)
    else:  # torch's allocations: 4 KiB pages
        x3 = torch.randn(*shape).numpy(); out = torch.empty(shape).numpy(); dy3 = torch.randn(*shape).numpy(); dx = torch.empty(shape).numpy()
    w = np.ones(C, np.float32); b = np.zeros(C, np.float32)
    mean, var, rstd = K.forward_batch(x3, w, b, 1e-5, out)
    def fwd(limit):
        def f():
            norm.FUSE_MAX_CHANNEL_BYTES = limit; K.forward_batch(x3, w, b, 1e-5, out); norm.FUSE_MAX_CHANNEL_BYTES = 1 << 20
        return f
    def bwd(limit, short):
        def f():
            norm.FUSE_MAX_CHANNEL_BYTES = limit; norm.SHORT_BACKWARD_RUN = short
            K.backward(dy3, x3, mean, rstd, w, True, dx)
            norm.FUSE_MAX_CHANNEL_BYTES = 1 << 20; norm.SHORT_BACKWARD_RUN = 256
        return f
    r = measure_interleaved({"fwd_fused": fwd(1 << 30), "fwd_2pass": fwd(0), "bwd_fused": bwd(1 << 30, 0), "bwd_2pass": bwd(0, 0), "bwd_default": bwd(1 << 20, 256)}, budget=0.6)
    print(shape, "  ".join(f"{k} {v.ms:.2f}" for k, v in r.items()))

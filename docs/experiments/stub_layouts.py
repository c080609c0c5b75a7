"""The Python path of a BatchNorm training forward by layout: the module with its kernel
replaced by a stub that returns fixed statistics, on 8x64x56x56 NCHW and channels-last and
on BatchNorm1d 1024x64, with autograd and under no_grad. Median µs of 3000 calls.
Usage: stub_layouts.py"""
import os
import sys

import numpy as np
import torch

import normkit.nn as nkn
import normkit.nn._autograd as autograd_path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median_time import median_time  # noqa: E402

torch.set_num_threads(2)
C = 64
inputs = {"NCHW": torch.randn(8, C, 56, 56),
          "channels-last": torch.randn(8, C, 56, 56).contiguous(memory_format=torch.channels_last),
          "BatchNorm1d": torch.randn(1024, C)}
modules = {"NCHW": nkn.BatchNorm2d(C), "channels-last": nkn.BatchNorm2d(C), "BatchNorm1d": nkn.BatchNorm1d(C)}
stats = (np.zeros(C), np.ones(C), np.ones(C))
autograd_path.kernels.forward_batch = lambda *args: stats
for name, x in inputs.items():
    m = modules[name]
    with_grad = median_time(lambda: m(x), 3000, 200) * 1e6
    with torch.no_grad():
        no_grad = median_time(lambda: m(x), 3000, 200) * 1e6
    print(f"{name}: stub kernel, with autograd {with_grad:.1f} us, under no_grad {no_grad:.1f} us")

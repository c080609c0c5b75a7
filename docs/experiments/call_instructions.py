"""Instructions per BatchNorm module call in the Python path around the kernels, counted by
valgrind (deterministic, unlike timings on these shared machines): the kernels are replaced
by stubs returning fixed results, and the script runs N calls of one direction.
Run it twice under callgrind with two N and difference the totals:

  valgrind --tool=callgrind --callgrind-out-file=/dev/null python call_instructions.py DIR N
  (DIR: forward | eval | forward+backward; with run_at.py TREE for another tree)

Prints nothing of its own but the direction and N; the instruction totals are valgrind's."""
import sys

import numpy as np
import torch

import normkit.nn as nkn
import normkit.nn._autograd as AG

torch.set_num_threads(1)
direction, n = sys.argv[1], int(sys.argv[2])
C = 256
m = nkn.BatchNorm1d(C)
x = torch.randn(1024, C).requires_grad_()
dy = torch.randn(1024, C)
stats = (np.zeros(C), np.ones(C), np.ones(C))
K = AG.kernels
K_stub = type("Stub", (), {})()
K_stub.forward_batch = lambda *a: stats
K_stub.forward_fixed = lambda *a: stats[2]
K_stub.backward = lambda *a: (stats[0], stats[1])
AG.kernels = K_stub
m.train(direction != "eval")
for _ in range(n):
    y = m(x)
    if direction == "forward+backward":
        y.backward(dy)
print(direction, n)

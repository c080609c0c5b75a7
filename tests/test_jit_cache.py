"""Numba's on-disk cache: a second process loads the compiled kernels and runs them."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, torch
import normkit.nn as nkn
torch.manual_seed(0)
m = nkn.BatchNorm2d(4)
x = torch.randn(3, 4, 5, 5, requires_grad=True)   # small: the serial entry points
big = torch.randn(8, 4, 64, 64, requires_grad=True)  # large: the parallel kernels
out = []
for inp in (x, big):
    y = m(inp)
    y.square().sum().backward()
    out.append([y.sum().item(), inp.grad.abs().sum().item()])
m.eval()
with torch.no_grad():
    out.append(m(x).sum().item())
print(json.dumps(out))
"""


NUMPY_SCRIPT = r"""
import numpy as np
from normkit.numpy import batch_norm
x = np.random.default_rng(0).normal(size=(3, 4, 25)).astype(np.float32)
batch_norm(x, np.ones(4), np.zeros(4))   # float64 parameters: another specialization
print("[]")
"""


def run(env, script=SCRIPT):
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_entry_point_compiled_against_cached_kernels_loads(tmp_path):
    """A process that compiles a new entry-point specialization while loading the
    kernels it calls from the cache writes an entry that a third process must be
    able to load and run (it crashed when Numba's thread pool was not started)."""
    pytest.importorskip("torch")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    run(env, NUMPY_SCRIPT)  # kernels for float32 inputs compiled and cached
    assert list(tmp_path.rglob("*.nbi")), "the first process wrote no cache index"
    first = run(env)  # torch parameters (float32): new entry points, cached kernels
    assert run(env) == first  # everything loaded from the cache


READ_ONLY_SCRIPT = r"""
from numba.core import caching

def refuse(self):  # what numba meets when the package directory is read-only
    raise PermissionError("read-only package directory")

caching.InTreeCacheLocator.ensure_cache_path = refuse
import numpy as np
from normkit.numpy import batch_norm
x = np.random.default_rng(0).normal(size=(3, 4, 25)).astype(np.float32)
batch_norm(x)
print("[]")
"""


def test_cache_works_when_the_package_directory_is_read_only(tmp_path):
    """Numba then caches in the per-user directory; a second process loads from there."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path), HOME=str(tmp_path), NUMBA_DEBUG_CACHE="1")
    first = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT], capture_output=True, text=True, env=env,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert list(tmp_path.rglob("*.nbi")), "nothing was cached in the per-user directory"
    second = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"data loaded from '{tmp_path}" in second.stdout + second.stderr

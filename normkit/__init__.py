"""normkit: batch normalization and its family -- exact, fast on the CPU, drop-in for PyTorch.

Layers of the package (each depends only on the ones before it):

* :mod:`normkit.reference` -- readable NumPy float64 oracle;
* :mod:`normkit.kernels` -- fused Numba CPU kernels with the same contracts;
* :mod:`normkit.numpy` -- NumPy functional API and stateful layer (no torch needed);
* :mod:`normkit.nn` -- PyTorch modules and autograd functions (``pip install normkit[torch]``).

Conventions: ``momentum`` is the weight of the new batch (PyTorch's, default
0.1); normalization uses the biased variance and ``running_var`` stores the
unbiased one; statistics accumulate in float64; ``eps`` defaults to 1e-5.
"""

from .running import decay_from_momentum, momentum_from_decay

__version__ = "0.1.0"

__all__ = ["__version__", "decay_from_momentum", "momentum_from_decay"]

import os

from hypothesis import HealthCheck, settings

# JIT compilation makes first examples slow; CI runs fewer examples.
settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _kernels_for_every_size(monkeypatch, request):
    """The suite's inputs are small; send them to normkit's kernels, not to the
    small-input path (PyTorch's own kernel), unless a test asks for the defaults
    with ``@pytest.mark.small_input_path``."""
    if request.node.get_closest_marker("small_input_path") is None:
        import normkit.nn.functional as F

        monkeypatch.setattr(F, "SMALL_INPUT", 0)
        monkeypatch.setattr(F, "SMALL_ROWS_INPUT", 0)

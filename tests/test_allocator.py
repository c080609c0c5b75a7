"""normkit.allocator: the opt-in glibc setting and the huge-page advice for normkit's outputs."""

import sys

import pytest
import torch

import normkit.allocator as alloc
import normkit.nn as nkn
from normkit.kernels.layout import channel_view
from normkit.nn._bridge import new_empty, new_like_view

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and madvise are Linux/glibc's")


@linux
def test_allocator_setting_is_accepted_and_reverts():
    assert alloc.keep_freed_memory(True) is True  # glibc accepted both settings
    assert alloc.keep_freed_memory(False) is True


@linux
def test_large_fresh_output_is_advised_small_one_is_not(monkeypatch):
    advised = []
    real = alloc.advise_huge_pages

    def spy(address, nbytes):
        ok = real(address, nbytes)
        advised.append((nbytes, ok))
        return ok

    monkeypatch.setattr("normkit.nn._bridge.advise_huge_pages", spy)
    big = new_empty((alloc.HUGE_PAGE_MIN // 4 + 1024,), torch.float32)
    assert advised and advised[-1] == (big.numel() * 4, True)  # the kernel accepted the advice
    advised.clear()
    new_empty((1000,), torch.float32)
    assert advised == []  # below HUGE_PAGE_MIN nothing is asked


@linux
def test_advice_can_be_turned_off_and_on():
    t = torch.empty(alloc.HUGE_PAGE_MIN // 4 * 2)
    try:
        assert alloc.huge_pages(False) is True  # available here
        assert alloc.advise_huge_pages(t.data_ptr(), t.numel() * 4) is False
    finally:
        alloc.huge_pages(True)
    assert alloc.advise_huge_pages(t.data_ptr(), t.numel() * 4) is True
    assert alloc.advise_huge_pages(t.data_ptr(), 1 << 20) is False  # too small to ask


def test_outputs_in_both_layouts_are_ordinary_tensors():
    """The advised outputs behave as torch's: layout kept, writable, resizable, right values."""
    x = torch.randn(8, 64, 48, 48)  # 4.7 MB: above HUGE_PAGE_MIN
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        view = channel_view(t.shape, t.stride(), 1)
        out, out3 = new_like_view(t.shape, view, t.dtype)
        assert out.stride() == t.stride() and out3.shape == view.shape
        out3[...] = 1.0
        assert bool((out == 1).all())
        bn, ref = nkn.BatchNorm2d(64), torch.nn.BatchNorm2d(64)
        torch.testing.assert_close(bn(t), ref(t), rtol=1e-5, atol=1e-5)
    y = new_empty((alloc.HUGE_PAGE_MIN,), torch.float32)
    y.resize_(10)
    assert y.shape == (10,)

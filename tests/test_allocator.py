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

    monkeypatch.setattr(alloc, "advise_huge_pages", spy)
    for pooled in (True, False):  # a new pool block, or a fresh tensor with the pool off
        alloc.output_pool(pooled)
        try:
            big = new_empty((alloc.HUGE_PAGE_MIN // 4 + 1024 + pooled,), torch.float32)  # a size not pooled yet
        finally:
            alloc.output_pool(False)
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


# --------------------------------------------------------------------------- the output pool

POOLED = alloc.POOL_MIN // 4 + 16  # float32 elements: just above the pool's smallest block


@pytest.fixture
def pool():
    """The output pool on (it is opt-in) for one test, off and forgotten after."""
    assert alloc.output_pool(True) is True
    yield
    alloc.output_pool(False)


def test_pool_is_off_by_default():
    assert alloc.output_pool() is False
    a = new_empty((POOLED,), torch.float32)
    a.resize_(POOLED * 4)  # an ordinary torch.empty tensor: it can grow
    assert alloc.pool_bytes() == 0


def test_pool_reuses_a_block_only_when_nothing_refers_to_it(pool):
    a = new_empty((POOLED,), torch.float32)
    ptr = a.data_ptr()
    b = new_empty((POOLED,), torch.float32)
    assert b.data_ptr() != ptr  # a is alive: another block
    keep_view, keep_array = a[3:], a.numpy()
    del a
    c = new_empty((POOLED,), torch.float32)
    assert c.data_ptr() != ptr  # a torch view and a NumPy view still refer to it
    del keep_view
    d = new_empty((POOLED,), torch.float32)
    assert d.data_ptr() != ptr  # the NumPy view still does
    del keep_array
    e = new_empty((POOLED,), torch.float32)
    assert e.data_ptr() == ptr  # now it is idle and handed out again
    assert len({t.data_ptr() for t in (b, c, d, e)}) == 4


def test_pool_matches_exact_sizes_and_dtypes(pool):
    a = new_empty((POOLED,), torch.float64)
    ptr = a.data_ptr()
    del a
    b = new_empty((POOLED * 2,), torch.float32)  # the same bytes: the block fits
    assert b.data_ptr() == ptr and b.dtype == torch.float32 and b.shape == (POOLED * 2,)
    c = new_empty((POOLED * 2 + 1,), torch.float32)  # other sizes get other blocks
    assert c.data_ptr() != ptr


def test_pool_hands_distinct_blocks_to_concurrent_threads(pool):
    import threading

    got, errors = [], []

    def work():
        try:
            for _ in range(200):
                t = new_empty((POOLED + 8,), torch.float32)
                t.fill_(threading.get_ident() % 1000)
                got.append(t)
                if len(got) > 8:
                    got.pop(0)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    live = list(got)
    assert len({t.data_ptr() for t in live}) == len(live)


def test_pool_keeps_to_its_bound(monkeypatch, pool):
    alloc.release_pool()
    monkeypatch.setattr(alloc, "POOL_MAX", alloc.pool_bytes() + 3 * (POOLED + 32) * 4)
    live = [new_empty((POOLED + 32,), torch.float32) for _ in range(3)]
    assert alloc.pool_bytes() <= alloc.POOL_MAX
    extra = new_empty((POOLED + 32,), torch.float32)  # the pool is full: a fresh tensor
    extra.resize_(POOLED + 64)  # ordinary storage: it can grow
    del live[0]
    other = new_empty((POOLED + 16,), torch.float32)  # room made by dropping the idle block
    with pytest.raises(RuntimeError, match="not resizable"):
        other.resize_(POOLED * 4)  # pooled storage cannot grow (documented)
    assert alloc.pool_bytes() <= alloc.POOL_MAX


def test_pool_off_and_release(pool):
    a = new_empty((POOLED + 96,), torch.float32)
    del a
    assert alloc.release_pool() >= (POOLED + 96) * 4
    kept = new_empty((POOLED + 96,), torch.float32).fill_(3.0)
    try:
        assert alloc.output_pool(False) is False
        assert alloc.pool_bytes() == 0  # every block forgotten, the one in use too
        t = new_empty((POOLED + 96,), torch.float32)
        t.resize_(POOLED * 4)  # not pooled
        assert alloc.pool_bytes() == 0
        assert bool((kept == 3.0).all())  # an output from before lives on, untouched
    finally:
        assert alloc.output_pool(True) is True
    assert alloc.pool_bytes() == 0
    again = new_empty((POOLED + 96,), torch.float32)
    assert again.data_ptr() != kept.data_ptr()  # the forgotten block is never handed out again


def test_pooled_outputs_through_autograd_and_in_place_ops(pool):
    """Outputs and gradients served by the pool, reused across steps, behave as torch's:
    the same values, in-place ops on the output under autograd (a residual ``+=``)."""
    torch.manual_seed(0)
    x = torch.randn(8, 32, 20, 20, requires_grad=True)  # 400 KB: pooled
    bn, ref = nkn.BatchNorm2d(32), torch.nn.BatchNorm2d(32)
    for _ in range(3):
        outs = []
        for m in (bn, ref):
            y = m(x)
            y += 1.0
            (y * y).sum().backward()
            outs.append((y.detach().clone(), x.grad.clone(), m.weight.grad.clone()))
            x.grad = None
            m.weight.grad = m.bias.grad = None
        for got, want in zip(*outs):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    before = alloc.pool_bytes()
    for _ in range(5):  # steady state: the blocks are reused, the pool does not grow
        bn(x).sum().backward()
    assert alloc.pool_bytes() == before

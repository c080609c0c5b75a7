"""Worker for tests/test_tools_recalibrate.py's distributed test (a helper, not a test module):
``python tools_dist_worker.py RANK WORLD PORT OUTDIR``; each rank recalibrates the same MLP on
its own (uneven) batches over gloo and saves its running statistics and all_reduce count."""

import sys

import torch
import torch.distributed as dist


def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))


def rank_batches(rank):
    g = torch.Generator().manual_seed(100 + rank)
    sizes = [(5, 9), (3, 2, 7)][rank % 2]
    return [torch.randn(n, 6, generator=g) * (1 + rank) + 3 * rank for n in sizes]


if __name__ == "__main__":
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from normkit.tools import recalibrate

    calls = []
    real = dist.all_reduce
    dist.all_reduce = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    m = model()
    counts = recalibrate(m, rank_batches(rank), progress_bar=False)
    torch.save({"state": m.state_dict(), "calls": len(calls), "counts": counts}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()

"""Data-parallel training with normkit's SyncBatchNorm, on CPU (gloo) or GPU (NCCL).

Run with torchrun, one process per rank::

    torchrun --standalone --nproc_per_node=2 examples/ddp_syncbn.py              # CPU, gloo
    torchrun --standalone --nproc_per_node=2 examples/ddp_syncbn.py --steps 50   # longer
    torchrun --standalone --nproc_per_node=4 examples/ddp_syncbn.py --backend nccl  # one GPU per rank

(NCCL shares normkit's code path but is not tested in normkit's CI, which has no GPU.)

Every global batch of ``--batch`` samples is split *unevenly* between the ranks
(rank r gets a share proportional to r + 1): SyncBatchNorm normalizes with the
statistics of the whole global batch anyway, so the run computes what one
process would compute on the full batch. Each rank's loss is its *sum* of
per-sample losses times ``world_size / global_batch``: DistributedDataParallel
averages the ranks' gradients, and that average is then the gradient of the
mean loss over the global batch.

A peer that dies makes the others fail at their next collective; a peer that
hangs makes them fail after ``--timeout`` seconds (``init_process_group(timeout=...)``),
never a silent hang.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from normkit.nn.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm


def shares(total: int, world: int) -> list:
    """Uneven split of ``total`` samples: rank r gets about (r + 1) / sum parts."""
    weights = [r + 1 for r in range(world)]
    sizes = [total * w // sum(weights) for w in weights]
    sizes[-1] += total - sum(sizes)
    return sizes


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="nccl" if torch.cuda.is_available() else "gloo")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=48, help="global batch size, split unevenly between ranks")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a missing peer is an error")
    args = parser.parse_args()

    # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT
    dist.init_process_group(args.backend, timeout=timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    model = convert_sync_batchnorm(make_model()).to(device)  # every BatchNorm*d -> normkit SyncBatchNorm
    model = model.to(memory_format=torch.channels_last)       # any layout works; channels_last is kept
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)

    sizes = shares(args.batch, world)
    start = sum(sizes[:rank])
    gen = torch.Generator().manual_seed(1234)  # every rank draws the same global batch, keeps its share
    for step in range(args.steps):
        labels = torch.randint(0, 10, (args.batch,), generator=gen)
        images = torch.randn(args.batch, 3, 16, 16, generator=gen) + labels.view(-1, 1, 1, 1) * 0.1
        x = images[start:start + sizes[rank]].to(device).contiguous(memory_format=torch.channels_last)
        t = labels[start:start + sizes[rank]].to(device)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), t, reduction="sum") * (world / args.batch)
        loss.backward()
        opt.step()
        total = loss.detach() / world
        dist.all_reduce(total)  # for printing only: the global mean loss
        if rank == 0 and (step % 5 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  global batch {args.batch} split {sizes}  loss {total.item():.4f}", flush=True)

    # the running statistics are bit-identical on every rank
    bns = [m for m in model.modules() if isinstance(m, SyncBatchNorm)]
    mine = torch.cat([torch.cat([m.running_mean, m.running_var]) for m in bns]).double()
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    if rank == 0:
        same = all(torch.equal(every[0], other) for other in every)
        print(f"running statistics {'identical' if same else 'DIFFERENT'} on all {world} ranks", flush=True)

    # eval makes no collective call; for single-process inference go back to BatchNorm2d
    single = revert_sync_batchnorm(model).eval()
    if rank == 0:
        print(f"reverted for inference: {type(single[1]).__name__}", flush=True)
    # Tear down in order: DDP's reducer (it holds the process group and its threads)
    # before the group, and every rank past the last collective before destroying it.
    del opt, ddp
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

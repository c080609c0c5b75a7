import sys, torch
torch.set_num_threads(2)
import normkit.nn as nkn
from normkit.bench.model import small_resnet
from torch.profiler import profile, ProfilerActivity
for which in ("torch", "normkit"):
    model = small_resnet().train()
    if which == "normkit": model = nkn.convert(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 32, 32, generator=g); y = torch.randint(0, 10, (32,), generator=g)
    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y); model.zero_grad(set_to_none=True); loss.backward()
    for _ in range(2): step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # walk memory events in order to get the peak of live bytes
    evs = []
    for e in prof.profiler.kineto_results.events():
        if e.name() == "[memory]":
            evs.append((e.start_ns(), e.nbytes()))
    evs.sort()
    live = peak = 0
    for _, nb in evs:
        live += nb; peak = max(peak, live)
    print(which, "allocation events", len(evs), "peak live MB", round(peak / 2**20, 2), "end live MB", round(live / 2**20, 2))

import sys, os, threading, time, torch
torch.set_num_threads(2)
which = sys.argv[1]
import normkit.nn as nkn, normkit.allocator as A
from normkit.bench.model import small_resnet
if len(sys.argv) > 2 and sys.argv[2] == "nohuge": A.huge_pages(False)
model = small_resnet().train()
if which == "normkit": model = nkn.convert(model)
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 3, 32, 32, generator=g); y = torch.randint(0, 10, (32,), generator=g)
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y); model.zero_grad(set_to_none=True); loss.backward()
for _ in range(3): step()
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * page
peak = [0]; done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.0002)
base = rss(); th = threading.Thread(target=sample); th.start(); step(); done.set(); th.join()
print(which, sys.argv[2:] , "base MB", round(base / 2**20, 1), "peak delta MB", round((peak[0] - base) / 2**20, 1))

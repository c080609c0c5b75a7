import copy, torch, sys
import normkit.allocator as A
import normkit.nn as nkn
from normkit.bench.model import small_resnet, _step
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
base = small_resnet().train()
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 3, 32, 32, generator=g); y = torch.randint(0, 10, (32,), generator=g)
ours = nkn.convert(copy.deepcopy(base))
def ours_nohuge():
    A.huge_pages(False); f = _step(ours, x, y)(); A.huge_pages(True)
import normkit.nn.functional as FF
def ours_torchbn():
    FF.SMALL_INPUT = 1 << 40; _step(ours, x, y)(); FF.SMALL_INPUT = 1 << 16
r = measure_interleaved({"torch": _step(base, x, y), "normkit": _step(ours, x, y), "normkit_nohuge": ours_nohuge, "normkit_via_aten": ours_torchbn}, budget=2.0, min_reps=5, max_reps=50)
for k, t in r.items(): print(f"{k:18s} {t.ms:.2f} {t.min*1e3:.2f}")

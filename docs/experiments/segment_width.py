"""segment_map and segment_sums compiled with 32-byte vectors (the default,
stream.SEGMENT_VECTOR) and with 64-byte ones, in one process (the width is read at
code generation), interleaved: elements per ns, one thread, runs of 64 channels x 49
values in cache."""
import numpy as np, time, numba
from numba import njit
import normkit.kernels.stream as S
from normkit.kernels.stream import segment_map, segment_sums
FM={"nsz","arcp","contract","afn","reassoc"}
numba.set_num_threads(1)
M=3136; T=2
x=np.random.randn(T,M).astype(np.float32); dy=np.random.randn(T,M).astype(np.float32); dx=np.empty_like(x)
a=np.random.rand(T,64).astype(np.float32)
AF="0 5 * 1 3 - 2 * + 4 +"
def make():
    @njit(fastmath=FM)
    def seg(dy,x,dx,a,L,reps):
        for r in range(reps):
            for t in range(dy.shape[0]):
                segment_map(AF, dx[t], (dy[t], x[t], np.float32(0.1), np.float32(0.2), np.float32(0.3)), (a[t],), L, False)
    @njit(fastmath=FM)
    def sums(dy,x,s1,s2,L,reps):
        for r in range(reps):
            for t in range(dy.shape[0]):
                segment_sums(dy[t],x[t],0.0,0.5,L,s1[t],s2[t])
    return seg, sums
s1=np.zeros((T,64)); s2=np.zeros((T,64))
fns={}
for w in (32,64):
    S.SEGMENT_VECTOR=w
    seg,sums=make(); seg(dy,x,dx,a,49,1); sums(dy,x,s1,s2,49,1)
    fns[w]=(seg,sums)
def tm(f):
    t0=time.perf_counter(); f(); return time.perf_counter()-t0
R=1000; n=R*T*M
res={}
for rep in range(5):
    for w,(seg,sums) in fns.items():
        res.setdefault((w,"map"),[]).append(n/tm(lambda: seg(dy,x,dx,a,49,R))/1e9)
        res.setdefault((w,"sums"),[]).append(n/tm(lambda: sums(dy,x,s1,s2,49,R))/1e9)
for k,v in sorted(res.items()): print(k, "median %.2f elem/ns" % np.median(v), ["%.2f"%q for q in v])

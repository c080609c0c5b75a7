"""``normkit bench``: normkit and its peers timed side by side, in one run."""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys
from typing import Any, Dict, List, Optional

import numba
import numpy as np
import torch

import normkit

from ..kernels.machine import cpuinfo_field
from . import report
from .allocation import allocation_study
from .cases import TRAFFIC, Case, default_cases
from .floor import PRIMITIVES, floor, outputs_allocated, primitive_callables
from .model import fresh_process_costs, training_step
from .peers import PEERS, make_callables
from .timing import measure_interleaved


def machine() -> Dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(), "cores": _cores(), "python": platform.python_version(),
        "normkit": normkit.__version__, "torch": torch.__version__, "numba": numba.__version__,
        "numpy": np.__version__, "threads": torch.get_num_threads(),
        "numba_threading_layer": _threading_layer(),
    }


def _cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:
        return "not yet initialised"


def run_case(case: Case, peers, budget: float) -> Dict[str, Any]:
    fns = make_callables(case, peers)
    fns.update(primitive_callables(case))
    times = measure_interleaved(fns, budget=budget)
    nk = times["normkit"]
    fl = floor(case, {name: times[name].median for name in PRIMITIVES})
    k = outputs_allocated(case)
    row: Dict[str, Any] = {
        "case": case.label, "dir": case.direction, "group": case.group, "shape": list(case.shape),
        "layout": case.layout, "dtype": case.dtype,
        "normkit_ms": nk.ms, "min_ms": nk.min * 1e3, "max_ms": nk.max * 1e3, "reps": nk.reps,
        "gbps": TRAFFIC[case.direction] * case.nbytes / nk.median / 1e9,
        "floor_ms": fl.seconds * 1e3, "alloc_ms": fl.alloc * k * 1e3,
        "of_floor": fl.seconds / nk.median, "of_floor_alloc": (fl.seconds + k * fl.alloc) / nk.median,
    }
    for name, key in (("torch", "torch"), ("torch.compile", "compile"), ("numpy-ref", "ref"), ("kernel", "kernel")):
        if name in times:
            row[f"{key}_ms"] = times[name].ms
            if name not in ("numpy-ref", "kernel"):
                row[f"x_{key}"] = times[name].median / nk.median
    if "kernel" in times:  # allocation aside: the kernels into existing memory, against the floor
        row["kernel_of_floor"] = fl.seconds / times["kernel"].median
    return row


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="normkit bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a few tiny cases (a smoke test, not a measurement)")
    p.add_argument("--out", type=pathlib.Path, help="write bench.md, bench.json and bench.png here")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and numba alike (default: all cores)")
    p.add_argument("--filter", default="", help="only cases whose label contains this text")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles each shape)")
    p.add_argument("--budget", type=float, default=0.3, help="seconds of timed calls per peer and case")
    p.add_argument("--skip-model", action="store_true", help="leave out the whole-model measurements")
    p.add_argument("--skip-alloc", action="store_true", help="leave out the allocation study")
    p.add_argument("--distributed", action="store_true",
                   help="only the SyncBatchNorm study: 2 gloo ranks, sync vs local vs gathering the activations")
    args = p.parse_args(argv)

    if args.distributed:
        from .distributed import run_distributed, table

        rows = run_distributed(quick=args.quick)
        text = table(rows)
        print("SyncBatchNorm, 2 gloo ranks on this machine, 1 thread each, training step (fwd+bwd), "
              "slower rank's median:\n" + text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench-distributed.md").write_text(text + "\n")
            (args.out / "bench-distributed.json").write_text(json.dumps(rows, indent=2))
        return 0
    threads = args.threads or _cores()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    peers = [q for q in PEERS if not (args.no_compile and q == "torch.compile")]
    cases = [c for c in default_cases(args.quick) if args.filter in c.label]
    budget = 0.02 if args.quick else args.budget

    info = machine()
    print(f"normkit bench -- {info['cpu']}, {threads} threads for every peer; torch {info['torch']}, "
          f"numba {info['numba']}; times in ms (median of repetitions), ratios from this run", flush=True)
    rows = []
    for i, case in enumerate(cases, 1):
        print(f"  [{i}/{len(cases)}] {case.label} {case.direction}", file=sys.stderr, flush=True)
        # --quick: torch.compile (seconds of compilation per shape) on the first case only
        rows.append(run_case(case, peers if not (args.quick and i > 1) else [q for q in peers if q != "torch.compile"],
                             budget))
    info["numba_threading_layer"] = _threading_layer()
    print(report.text_table(rows))

    result: Dict[str, Any] = {"machine": info, "rows": rows}
    md = [f"Machine: {info['cpu']}, {info['cores']} cores; {threads} threads for every peer; "
          f"Python {info['python']}, torch {info['torch']}, numba {info['numba']} "
          f"({info['numba_threading_layer']} threading layer), numpy {info['numpy']}; {info['date']}.", "",
          report.markdown_table(rows)]
    if not args.skip_model:
        step = training_step(batch=8 if args.quick else 32, budget=0.2 if args.quick else 1.5)
        result["training_step"] = {k: v.ms for k, v in step.items()}
        ratio = step["torch"].median / step["normkit"].median
        line = (f"small ResNet training step (fwd+bwd, batch {8 if args.quick else 32}, 3x32x32): "
                f"torch BN {step['torch'].ms:.2f} ms, normkit BN {step['normkit'].ms:.2f} ms ({ratio:.2f}x)")
        print(line)
        costs = fresh_process_costs(batch=8 if args.quick else 32, threads=threads)
        result["fresh_process"] = costs
        md += ["", line, "", "| fresh process | first BatchNorm2d training step s | first small-ResNet step s | "
               "import to end of that step s | small-ResNet step peak RSS growth MB | "
               "small-ResNet step peak live tensors MB |", "|---|---|---|---|---|---|"]
        for name, c in costs.items():
            tensors = "-" if c.get("peak_tensor_bytes") is None else f"{c['peak_tensor_bytes'] / 2**20:.2f}"
            md.append(f"| {name} | {c['first_bn_step_s']:.2f} | {c['first_step_s']:.2f} | "
                      f"{c['import_to_step_s']:.2f} | {c['peak_step_bytes'] / 2**20:.1f} | {tensors} |")
            print(f"{name}: first BatchNorm2d step {c['first_bn_step_s']:.2f} s, first ResNet step "
                  f"{c['first_step_s']:.2f} s, ResNet step peak RSS growth {c['peak_step_bytes'] / 2**20:.1f} MB, "
                  f"peak live tensors {tensors} MB")
    if not args.skip_alloc:
        shape = (4, 8, 32, 32) if args.quick else (32, 64, 112, 112)
        study = allocation_study(shape, threads)
        result["allocation"] = study
        md += ["", f"Allocation study, BatchNorm2d training forward on {'x'.join(map(str, shape))} (ms):", "",
               "| allocator | normkit | torch | fresh output (alloc + copy) | copy into existing |", "|---|---|---|---|---|"]
        for setting, t in study.items():
            md.append(f"| {setting} | {t['normkit']:.2f} | {t['torch']:.2f} | {t['fresh output']:.2f} | "
                      f"{t['existing output']:.2f} |")
            print(f"allocator {setting}: normkit {t['normkit']:.2f} ms, torch {t['torch']:.2f} ms, fresh output "
                  f"{t['fresh output']:.2f} ms vs existing {t['existing output']:.2f} ms")
    if args.out:
        for path in report.write(args.out, result, "\n".join(md) + "\n"):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

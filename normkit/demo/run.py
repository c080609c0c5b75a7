"""``normkit demo [NAME] [--quick] [--out DIR] [--seeds K] [--data FILE]``.

Runs the experiments of :mod:`normkit.demo.experiments` (all of them when NAME
is absent), prints a table per experiment, and writes the PNG plots and
``report.md`` into ``--out`` (default ``./demo-out``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .common import load_data
from .experiments import EXPERIMENTS, PLOTS

# At most 2 cores. torch gets ONE intra-op thread: these tensors are tiny, and with 2 threads on a
# 2-core machine whose other core is busy, torch's OpenMP regions wait on a descheduled thread --
# measured 300 MLP steps (no BN) in 10-23 s with 2 threads vs 2.2 s with 1. normkit's Numba
# kernels keep their own pool (set NUMBA_NUM_THREADS to cap it).
TORCH_THREADS = 1


def _table(header: List[str], rows: List[List[str]]) -> str:
    w = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(k) for c, k in zip(r, w))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * k for k in w)] + [line(r) for r in rows])


def _md_table(header: List[str], rows: List[List[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return "\n".join(["| " + " | ".join(esc(c) for c in header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows])


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(out: Path, results: Dict[str, Dict[str, Any]], meta: Dict[str, Any]) -> Path:
    lines = ["# normkit demo: batch normalization's claims on real data", "",
             f"Data: {meta['data']} — {meta['n_train']} training and {meta['n_test']} test samples "
             f"(stratified split, pixels standardised with the training split's statistics). "
             f"Seeds {meta['seeds']} for every setting; spreads are mean ± std over seeds "
             f"(plots: mean with min–max). Mode: {'quick' if meta['quick'] else 'full'}; "
             f"{meta['threads']} torch threads; wall time {meta['wall_s']:.0f} s; "
             f"torch {meta['torch']}, Python {meta['python']}. Every number below was computed in this run "
             f"(raw numbers: `results.json`).", "", "## Summary", ""]
    described = {name: EXPERIMENTS[name][1](res) for name, res in results.items()}
    for name, (claim, _, _, verdict) in described.items():
        lines.append(f"* **{name}** — {verdict}")
    for name, (claim, header, rows, verdict) in described.items():
        lines += ["", f"## {name}", "", f"*Claim:* {claim}", "", _md_table(header, rows), "",
                  f"*What the data say:* {verdict}", ""]
        lines += [f"![{name}]({p})" for p in PLOTS[name]]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="normkit demo", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=list(EXPERIMENTS), help="one experiment (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and seeds (under a minute)")
    parser.add_argument("--out", default="demo-out", help="folder for the plots and report.md")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3, --quick 2)")
    parser.add_argument("--data", default=None, help=".npz with arrays x (N, ...) and y (N,)")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0)
    k = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if k < 1:
        print("normkit demo: expected --seeds >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(TORCH_THREADS)
    start = time.perf_counter()
    data = load_data(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [args.name] if args.name else list(EXPERIMENTS)
    seeds = list(range(k))
    print(f"normkit demo: {', '.join(names)} on {data.name} ({len(data.x_train)} train / {len(data.x_test)} test), "
          f"seeds {seeds}{', quick' if args.quick else ''}")
    results: Dict[str, Dict[str, Any]] = {}
    for name in names:
        run, describe = EXPERIMENTS[name]
        t0 = time.perf_counter()
        results[name] = run(data, out, seeds, args.quick)
        claim, header, rows, verdict = describe(results[name])
        print(f"\n== {name} ({time.perf_counter() - t0:.1f} s) ==\nclaim: {claim}\n{_table(header, rows)}\n"
              f"{verdict.replace('**', '')}\n")
    meta = {"data": data.name, "n_train": len(data.x_train), "n_test": len(data.x_test), "seeds": seeds,
            "quick": args.quick, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "wall_s": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(_json_safe({"meta": meta, "results": results}), indent=1))
    report = write_report(out, results, meta)
    print(f"report: {report} ({meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

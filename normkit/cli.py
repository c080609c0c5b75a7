"""The ``normkit`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="normkit", description="Batch normalization and its family.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="batch normalization's claims tested on real data (normkit demo --help)",
                   add_help=False)
    quick = sub.add_parser("quickstart", help="train a small model with normkit's BatchNorm next to torch's")
    quick.add_argument("--epochs", type=int, default=4)
    quick.add_argument("--batch", type=int, default=64)
    sub.add_parser("bench", help="time normkit against torch eager, torch.compile and the memory floor",
                   add_help=False)
    sub.add_parser("inspect", help="BatchNorm diagnostics of a checkpoint or a build_model() file", add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["bench"]:  # the benchmark has its own options
        from .bench.run import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["demo"]:  # the demo has its own options
        from .demo.run import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["inspect"]:
        from .tools.report import inspect_main

        return inspect_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "quickstart":
        from .demo import quickstart

        return quickstart.run(epochs=args.epochs, batch=args.batch)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())

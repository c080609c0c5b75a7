"""Tables (terminal, Markdown), JSON and a PNG plot of a benchmark run."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, List

COLUMNS = [
    "case", "dir", "normkit ms", "spread ms", "torch ms", "x torch", "compile ms", "x compile",
    "ref ms", "GB/s", "floor ms", "of floor", "of floor+alloc", "kernel ms", "kernel of floor",
]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def row_cells(r: Dict[str, Any]) -> List[str]:
    return [
        r["case"], r["dir"], _fmt(r["normkit_ms"]), f"{_fmt(r['min_ms'])}-{_fmt(r['max_ms'])}",
        _fmt(r.get("torch_ms")), _fmt(r.get("x_torch"), 2), _fmt(r.get("compile_ms")),
        _fmt(r.get("x_compile"), 2), _fmt(r.get("ref_ms")), _fmt(r["gbps"], 1), _fmt(r["floor_ms"]),
        _fmt(r["of_floor"], 2), _fmt(r["of_floor_alloc"], 2), _fmt(r.get("kernel_ms")),
        _fmt(r.get("kernel_of_floor"), 2),
    ]


def text_table(rows: List[Dict[str, Any]]) -> str:
    cells = [COLUMNS] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i > 1 else c[i].ljust(widths[i]) for i in range(len(c))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(out)


def write(out_dir: pathlib.Path, result: Dict[str, Any], markdown: str) -> List[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "bench.json", out_dir / "bench.md"]
    paths[0].write_text(json.dumps(result, indent=2))
    paths[1].write_text(markdown)
    png = out_dir / "bench.png"
    plot(result["rows"], png)
    paths.append(png)
    return paths


def plot(rows: List[Dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("x_torch")]
    labels = [f"{r['case']} {r['dir']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, max(3, 0.22 * len(rows) + 1)))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["x_torch"] for r in rows], height=0.4, label="speedup over torch eager")
    ax.barh([i - 0.2 for i in y], [r["of_floor"] for r in rows], height=0.4, label="fraction of the memory floor")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (same run)")
    ax.set_title("normkit: speedup over torch eager, and share of the memory-traffic floor")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

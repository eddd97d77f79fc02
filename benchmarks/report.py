"""``python -m benchmarks.report results.json``: the results as Markdown tables, the form
benchmarks/README.md shows them in."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def results_table(report: dict[str, Any]) -> str:
    lines = [
        "| measurement | system | mode | entries | p50 ms | p95 ms | throughput |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in report["measurements"]:
        if row["unit"] == "recall":
            throughput = f"{row['throughput']:.4f} recall"
            if row["name"] == "ef_search_sweep":
                throughput += f" (ef_search {row['extra']['ef_search']})"
        else:
            throughput = f"{row['throughput']:,.0f} {row['unit']}"
        lines.append(
            f"| {row['name']} | {row['system']} | {row['mode']} | {row['size']:,} | "
            f"{_number(row['p50_ms'])} | {_number(row['p95_ms'])} | {throughput} |"
        )
    return "\n".join(lines)


def targets_table(report: dict[str, Any]) -> str:
    lines = ["| target | measured | goal | met |", "|---|---:|---:|---|"]
    for target in report["targets"]:
        met = "yes" if target["met"] else "**no**"
        lines.append(
            f"| {target['target']} | {target['measured']:,.3f} | {target['goal']:,} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    report = json.loads(Path(args[0] if args else "results.json").read_text())
    print(results_table(report))
    print()
    print(targets_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long a fresh ``pepperpy-memory search "…" --json`` takes, per embedding backend.

``python -m benchmarks.fresh_cli [--rounds 5] [--out FILE]``: stores a few memories in an
embedded database of its own, then runs the same search as a new process again and again,
alternating the ``onnx`` and ``torch`` backends (``PEPPERPY_PG_EMBEDDING_BACKEND``), and reports
the median wall time of each and their ratio — a command people run often should answer fast.
The ONNX export is made (and timed) before the rounds, as a first use would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .measure import save_json


def _cli(data_dir: Path, backend: str, *args: str) -> float:
    env = {
        **os.environ,
        "PEPPERPY_PG_EMBEDDING_BACKEND": backend,
        # A cache of its own (on Linux), so that the first use really exports.
        "XDG_CACHE_HOME": str(data_dir.parent / "cache"),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pepperpy_pg_memory", *args, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return elapsed


def run(rounds: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="pepperpy-fresh-cli-"))
    try:
        data = folder / "data"
        first_use = _cli(data, "onnx", "store", "ana-tea", "Ana drinks green tea every morning")
        _cli(data, "onnx", "store", "bruno-job", "Bruno is a database administrator")
        search = ("search", "what does Ana drink?", "--json", "-k", "2")
        times: dict[str, list[float]] = {"onnx": [], "torch": []}
        for _ in range(rounds):
            for backend in times:
                times[backend].append(_cli(data, backend, *search))
        medians = {backend: statistics.median(values) for backend, values in times.items()}
        return {
            "date": time.strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(),
            "first_use_store_seconds": first_use,
            "search_seconds": times,
            "median_seconds": medians,
            "onnx_over_torch": medians["onnx"] / medians["torch"],
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args()
    result = run(args.rounds)
    save_json(result, args.out)
    medians = result["median_seconds"]
    print(
        f"fresh CLI search, median of {args.rounds}: onnx {medians['onnx']:.2f} s, torch "
        f"{medians['torch']:.2f} s, ratio {result['onnx_over_torch']:.2f} "
        f"(first use, with the export: {result['first_use_store_seconds']:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's second command: the demo runs end to end on the embedded database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.model
def test_demo_stores_and_recalls(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pepperpy_pg_memory", "demo", "--data-dir", str(tmp_path / "pg")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Stored 12 memories" in out
    lines = out.splitlines()

    def first_hit(title_start: str) -> str:
        at = next(i for i, line in enumerate(lines) if line.startswith(title_start))
        return lines[at + 1]

    assert "allergic to peanuts" in first_hit("Semantic: what should I avoid")
    assert "router" in first_hit("Semantic: the user's internet")
    assert "refunds" in first_hit("Contextual: 'refund receipt'")
    assert "Patagonia" in first_hit("Contextual with a typo")
    assert "database administrator" in first_hit("Hybrid: 'Lisbon database")
    assert "Loading weights" not in result.stderr


def test_cli_help_and_errors(tmp_path: Path) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "pepperpy_pg_memory", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "demo" in helped.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "pepperpy_pg_memory", "demo", "--table", "Bad Name"],
        capture_output=True,
        text=True,
    )
    # A usage error naming the option, before anything starts.
    assert failed.returncode == 2
    assert "argument --table: 'Bad Name' is not a plain lower-case identifier" in failed.stderr
    assert "Traceback" not in failed.stderr

"""Both notebooks run top to bottom (synchronous API inside Jupyter's running event loop)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.model
@pytest.mark.parametrize("name", ["quickstart.ipynb", "agent_memory.ipynb"])
def test_notebook_runs(
    name: str, pg_dsn: str, test_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits the environment: point the notebook's PostgresConfig() at the test
    # server (in the test schema) instead of the user's embedded data folder.
    monkeypatch.setenv("PEPPERPY_PG_DSN", pg_dsn)
    monkeypatch.setenv("PEPPERPY_PG_SCHEMA", test_schema)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    if name == "quickstart.ipynb":
        assert "ana-allergy" in text and "exists after 1.5 s: False" in text
        assert "as of:  Bruno works as a database administrator" in text
        assert "supersede" in text and "importance 1.00" in text
        assert any("image/png" in o.get("data", {}) for o in outputs)
    else:
        assert "peanut" in text and "I remember:" in text

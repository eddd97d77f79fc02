"""Adapters without their extras: a clear ImportError naming the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "adapter, blocked, extra",
    [
        ("langchain_pepperpy", "langchain_core", "pepperpy-pg-memory[langchain]"),
        ("langgraph_pepperpy", "langgraph", "pepperpy-pg-memory[langgraph]"),
        ("mcp_pepperpy", "mcp", "pepperpy-pg-memory[mcp]"),
        ("llama_index_pepperpy", "llama_index", "pepperpy-pg-memory[llamaindex]"),
        ("pepperpy_browser", "jinja2", "pepperpy-pg-memory[ui]"),
    ],
)
def test_missing_extra_names_what_to_install(adapter: str, blocked: str, extra: str) -> None:
    # sys.modules[name] = None makes `import name` fail as if it were not installed.
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "try:\n"
        f"    import {adapter}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without its extra')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert extra in result.stdout


def test_core_imports_without_the_frameworks() -> None:
    code = (
        "import sys\n"
        "for name in ('langchain_core', 'langgraph', 'langchain_postgres', 'mcp', 'llama_index'):\n"
        "    sys.modules[name] = None\n"
        "import pepperpy_pg_memory, pepperpy_pg_memory.runner, pepperpy_pg_memory.cli\n"
        "print(pepperpy_pg_memory.PostgresStorage.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "PostgresStorage"


def test_the_mcp_command_without_its_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['mcp'] = None\n"
        "from pepperpy_pg_memory.cli import main\n"
        "sys.exit(main(['mcp', '--dsn', 'postgresql://nobody@127.0.0.1:1/none']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "pepperpy-pg-memory[mcp]" in result.stderr and "Traceback" not in result.stderr

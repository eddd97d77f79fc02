"""The README and the documentation run: every ```python and ```bash block of README.md and
of docs/*.md, as written, on a fresh embedded server, twice, printing the same both times;
and the documentation site builds with ``mkdocs build --strict``.

A block may be skipped only by a marker on the line before it, with its reason:
``<!-- readme-test: skip (why) -->``. An unmarked block that fails fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SKIP = re.compile(r"<!-- readme-test: skip \((?P<reason>[^)]+)\) -->\s*$")


def _blocks() -> list[tuple[str, str, str, str | None]]:
    """(where, language, code, skip reason) of every python and bash block."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in _FENCE.finditer(text):
            language = match.group(1)
            if language not in ("python", "bash"):
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = _SKIP.search(before)
            line = text.count("\n", 0, match.start()) + 1
            where = f"{page.relative_to(ROOT)}:{line}"
            found.append((where, language, match.group(2), skip.group("reason") if skip else None))
    return found


def test_the_readme_and_the_docs_have_runnable_blocks() -> None:
    blocks = _blocks()
    assert sum(1 for *_, skip in blocks if skip is None) >= 6
    readme = [b for b in blocks if b[0].startswith("README.md:")]
    assert any(skip is None and language == "python" for _, language, _, skip in readme)
    assert all(reason.strip() for *_, reason in blocks if reason is not None)


def test_the_documentation_site_builds_strictly(tmp_path: Path) -> None:
    """Every page in the navigation, every link resolved, every docstring the API reference
    renders well-formed: mkdocs refuses any warning."""
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    assert (tmp_path / "reference" / "index.html").is_file()
    assert "store_conversation" in (tmp_path / "reference" / "index.html").read_text()


@pytest.mark.model
@pytest.mark.parametrize(
    "where, language, code, skip",
    _blocks(),
    ids=[f"{where}-{language}" for where, language, _, _ in _blocks()],
)
def test_readme_block_runs(
    tmp_path: Path, where: str, language: str, code: str, skip: str | None
) -> None:
    if skip is not None:
        pytest.skip(f"marked in the README: {skip}")
    env = {
        **os.environ,
        # A fresh embedded server of its own, as on a new machine.
        "PEPPERPY_PG_DATA_DIR": str(tmp_path / "data"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-e", "-c", code]
    # Twice on the same server, as a reader trying an example again would: the second run
    # must work, and a Python example print what it printed the first time. (The command
    # line's block is a session: its second run shows the first one's versions and times.)
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        if language == "python":
            assert done.stderr == "", done.stderr
        outputs.append(done.stdout)
    if language == "python":
        assert outputs[1] == outputs[0]

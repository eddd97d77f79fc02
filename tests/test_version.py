"""One version story: the package's metadata, ``__version__`` and the changelog agree."""

from __future__ import annotations

import re
from pathlib import Path

import pepperpy_pg_memory

ROOT = Path(__file__).parents[1]


def test_pyproject_version_and_changelog_agree() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'^version = "([^"]+)"', pyproject, flags=re.MULTILINE)
    assert found is not None
    declared = found.group(1)
    assert declared == "0.2.0"
    assert pepperpy_pg_memory.__version__ == declared
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert releases and releases[0] == declared  # the newest entry is this version

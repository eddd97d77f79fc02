"""The one shape every statement takes before it runs: :class:`Query`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["Query"]


class Query(NamedTuple):
    """One statement and its bind parameters (``$1`` is ``args[0]``)."""

    sql: str
    args: Sequence[Any] = ()

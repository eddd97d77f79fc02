"""The rules a write is checked against before anything reaches the database (no server
needed: these are pure functions; the storage tests check that a rejected write leaves
nothing behind)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pepperpy_pg_memory import MemoryIndex, MemoryScope, MemoryType, MemoryValidationError
from pepperpy_pg_memory.items import as_enum, index_set, item_fields, resolve_expiry

HOUR = timedelta(hours=1)


def test_expiry_defaults_to_the_type_ttl_and_never_overrides_it() -> None:
    assert resolve_expiry(None, None, HOUR) == (HOUR, None)
    assert resolve_expiry("never", None, HOUR) == (None, None)
    assert resolve_expiry(90, None, HOUR) == (timedelta(seconds=90), None)
    assert resolve_expiry(0.5, None, None) == (timedelta(seconds=0.5), None)


def test_an_absolute_expiry_replaces_the_ttl() -> None:
    when = datetime.now(timezone.utc) + HOUR
    assert resolve_expiry(None, when, HOUR) == (None, when)


@pytest.mark.parametrize(
    ("ttl", "expires_at", "message"),
    [
        (60, datetime.now(timezone.utc) + HOUR, "either ttl or expires_at"),
        (None, datetime(2999, 1, 1), "timezone-aware"),
        (None, datetime(2000, 1, 1, tzinfo=timezone.utc), "in the past"),
        (0, None, "positive"),
        (-5, None, "positive"),
        (float("inf"), None, "finite"),
        (float("nan"), None, "finite"),
        (1e300, None, "finite"),
        (True, None, "ttl must be"),
        ("forever", None, "ttl must be"),
    ],
)
def test_bad_expiries_are_rejected(ttl: object, expires_at: object, message: str) -> None:
    with pytest.raises(MemoryValidationError, match=message):
        resolve_expiry(ttl, expires_at, HOUR)  # type: ignore[arg-type]


def test_index_sets_store_only_real_indices() -> None:
    both = frozenset({MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL})
    assert index_set(None) == both
    assert index_set(MemoryIndex.HYBRID) == both
    assert index_set("contextual") == {MemoryIndex.CONTEXTUAL}
    # TEMPORAL is a way of querying (newest first), not an index a memory is written into.
    assert index_set([MemoryIndex.TEMPORAL]) == frozenset()
    with pytest.raises(MemoryValidationError, match="invalid index 'vector'"):
        index_set(["vector"])


def test_enums_accept_members_and_values_and_name_the_choices() -> None:
    assert as_enum(MemoryScope, "user", "scope") is MemoryScope.USER
    assert as_enum(MemoryType, MemoryType.MEDIUM_TERM, "type") is MemoryType.MEDIUM_TERM
    with pytest.raises(MemoryValidationError, match="short_term, medium_term"):
        as_enum(MemoryType, "forever", "type")


def test_item_fields() -> None:
    assert item_fields(("k", {"a": 1}), 0) == {"key": "k", "value": {"a": 1}}
    assert item_fields({"key": "k", "value": 1, "ttl": 5}, 0)["ttl"] == 5
    with pytest.raises(MemoryValidationError, match="item 3: unknown fields \\['colour'\\]"):
        item_fields({"key": "k", "value": 1, "colour": "red"}, 3)
    with pytest.raises(MemoryValidationError, match="item 1: needs both"):
        item_fields({"key": "k"}, 1)
    with pytest.raises(MemoryValidationError, match="item 2: expected a mapping"):
        item_fields(["k", 1], 2)


def test_trusted_builds_what_model_construct_builds() -> None:
    from datetime import datetime, timezone

    from pepperpy_pg_memory.models import MemoryEntry, MemorySearchResult, trusted
    from pepperpy_pg_memory.types import MemoryIndex, MemoryScope, MemoryType

    now = datetime.now(timezone.utc)
    fields: dict[str, Any] = {
        "key": "k",
        "value": {"a": [1, 2]},
        "text": "t",
        "type": MemoryType.LONG_TERM,
        "scope": MemoryScope.USER,
        "scope_id": "ana",
        "indices": frozenset({MemoryIndex.SEMANTIC}),
        "metadata": {"m": 1},
        "created_at": now,
        "updated_at": now,
        "expires_at": None,
        "embedding": None,
    }
    fast = trusted(MemoryEntry, **fields)
    slow = MemoryEntry.model_construct(**fields)
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_copy(update={"key": "j"}).key == "j"
    result = trusted(
        MemorySearchResult,
        entry=fast,
        score=0.5,
        index_type=MemoryIndex.SEMANTIC,
        semantic_score=0.5,
        contextual_score=None,
    )
    assert result.entry.key == "k" and result.model_dump()["score"] == 0.5
    # Missing fields: model_construct's defaults apply.
    partial_result = trusted(
        MemorySearchResult, entry=fast, score=0.1, index_type=MemoryIndex.CONTEXTUAL
    )
    assert partial_result.semantic_score is None

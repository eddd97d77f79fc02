"""The metadata filter language: SQL built with bound values only, and its semantics on
real rows (numbers compared as numbers, not text)."""

from __future__ import annotations

from typing import Any

import pytest

from pepperpy_pg_memory import MemoryIndex, MemoryQuery, MemoryValidationError, PostgresStorage
from pepperpy_pg_memory.filters import MAX_FILTER_DEPTH, Params, compile_filter


def test_values_and_keys_never_reach_the_sql_text() -> None:
    params = Params()
    sql = compile_filter(
        {"topic": "it's; DROP TABLE x", "n": {"$gt": 5}, "tags": {"$in": ["a", "b"]}}, params
    )
    assert "DROP" not in sql and "topic" not in sql and "tags" not in sql
    assert "$1" in sql and len(params.values) == 4
    assert params.values[0] == {"topic": "it's; DROP TABLE x"}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"a'); DROP TABLE x;--": 1}, "invalid filter key"),
        ({"a->>b": 1}, "invalid filter key"),
        ({"a b": 1}, "invalid filter key"),
        ({"": 1}, "invalid filter key"),
        ({"a..b": 1}, "invalid filter key"),
        ({1: "x"}, "keys must be strings"),
        ({"n": {"$regex": ".*"}}, "unknown filter operator"),
        ({"$where": "1=1"}, "unknown filter operator"),
        ({"n": {"$gt": True}}, "takes a number or a string"),
        ({"n": {"$gt": None}}, "takes a number or a string"),
        ({"n": {"$gt": "nul\x00"}}, "NUL"),
        ({"n": {"$lt": float("inf")}}, "finite"),
        ({"n": {"$in": "abc"}}, "non-empty list"),
        ({"n": {"$in": []}}, "non-empty list"),
        ({"n": {"$in": [[1]]}}, "scalar"),
        ({"n": {"$exists": "yes"}}, "true or false"),
        ({"n": {"$empty": 1}}, "true or false"),
        ({"n": {"$text": ""}}, "non-empty string"),
        ({"n": {"$itext": 3}}, "non-empty string"),
        ({"$and": {}}, "non-empty list"),
        ({"$or": []}, "non-empty list"),
        ({"n": object()}, "not a JSON value"),
        ({"n": "nul\x00"}, "NUL"),
        ([("a", 1)], "must be a mapping"),
    ],
)
def test_invalid_filters_are_rejected(spec: Any, message: str) -> None:
    with pytest.raises(MemoryValidationError, match=message):
        compile_filter(spec, Params())


def test_nesting_is_bounded() -> None:
    spec: dict[str, Any] = {"a": 1}
    for _ in range(MAX_FILTER_DEPTH):
        spec = {"$and": [spec]}
    with pytest.raises(MemoryValidationError, match="deeper"):
        compile_filter(spec, Params())


ROWS = [
    ("r1", {"priority": 9, "topic": "billing", "tags": ["urgent", "vip"], "user": {"plan": "pro"}}),
    ("r2", {"priority": 10, "topic": "billing", "tags": ["vip"], "user": {"plan": "free"}}),
    ("r3", {"priority": 2.5, "topic": "shipping", "tags": [], "reviewed": True}),
    ("r4", {"priority": "11", "topic": "shipping", "reviewed": None}),
    ("r5", {"topic": "other"}),
]


@pytest.fixture
async def rows(storage: PostgresStorage[str, Any]) -> PostgresStorage[str, Any]:
    await storage.store_many(
        {"key": key, "value": "same text for all", "metadata": metadata} for key, metadata in ROWS
    )
    return storage


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"topic": "billing"}, {"r1", "r2"}),
        ({"topic": {"$eq": "billing"}}, {"r1", "r2"}),
        ({"topic": {"$ne": "billing"}}, {"r3", "r4", "r5"}),
        # numbers compare as numbers: 9 < 10, and the string "11" is not a number
        ({"priority": {"$gte": 9}}, {"r1", "r2"}),
        ({"priority": {"$gt": 2, "$lt": 10}}, {"r1", "r3"}),
        ({"priority": {"$lte": 2.5}}, {"r3"}),
        ({"priority": 10}, {"r2"}),
        ({"priority": 10.0}, {"r2"}),
        ({"priority": "11"}, {"r4"}),
        # a string bound compares strings only, by code point: "11" > "1", numbers never match
        ({"priority": {"$gt": "1"}}, {"r4"}),
        ({"priority": {"$lt": "1"}}, set()),
        ({"topic": {"$gte": "other"}}, {"r3", "r4", "r5"}),
        ({"topic": {"$lt": "other"}}, {"r1", "r2"}),
        ({"topic": {"$in": ["shipping", "other"]}}, {"r3", "r4", "r5"}),
        ({"topic": {"$nin": ["shipping", "other"]}}, {"r1", "r2"}),
        ({"tags": {"$contains": "urgent"}}, {"r1"}),
        ({"tags": ["vip"]}, {"r2"}),
        ({"user.plan": "pro"}, {"r1"}),
        ({"reviewed": {"$exists": True}}, {"r3", "r4"}),
        ({"reviewed": {"$exists": False}}, {"r1", "r2", "r5"}),
        ({"reviewed": None}, {"r4"}),
        ({"$or": [{"topic": "other"}, {"priority": {"$lt": 3}}]}, {"r3", "r5"}),
        ({"$and": [{"topic": "billing"}, {"$not": {"tags": {"$contains": "urgent"}}}]}, {"r2"}),
        ({}, {"r1", "r2", "r3", "r4", "r5"}),
        # substrings of string values: % and _ are plain characters, not patterns
        ({"topic": {"$text": "ill"}}, {"r1", "r2"}),
        ({"topic": {"$text": "ILL"}}, set()),
        ({"topic": {"$itext": "ILL"}}, {"r1", "r2"}),
        ({"topic": {"$text": "%"}}, set()),
        ({"priority": {"$text": "1"}}, {"r4"}),  # only strings: 10 is a number
        ({"user.plan": {"$itext": "PR"}}, {"r1"}),
        # absent, null or empty
        ({"tags": {"$empty": True}}, {"r3", "r4", "r5"}),
        ({"tags": {"$empty": False}}, {"r1", "r2"}),
        ({"reviewed": {"$empty": True}}, {"r1", "r2", "r4", "r5"}),
    ],
)
async def test_filter_semantics(
    rows: PostgresStorage[str, Any], spec: dict[str, Any], expected: set[str]
) -> None:
    assert {e.key for e in await rows.list(filter=spec)} == expected
    for index in (MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID):
        hits = await rows.search(
            MemoryQuery(query="same text", index_type=index, filter=spec, limit=50)
        )
        assert {h.entry.key for h in hits} == expected, index

"""Property-based tests: whatever unicode goes in comes back identical, and no filter built
from the grammar's pieces ever reaches the server as anything but our own validation error."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import FixedEmbedder
from pepperpy_pg_memory import (
    DimensionMismatchError,
    MemoryError,
    MemoryValidationError,
    PostgresStorage,
)
from pepperpy_pg_memory.types import DOCUMENT_FIELD, MANAGED_FIELD
from pepperpy_pg_memory.values import decode_json, encode_checked_json, encode_json, to_json_value
from pepperpy_pg_memory.vectors import check_vectors, one_vector

# PostgreSQL text cannot hold NUL, and lone surrogates are not Unicode: both are rejected by
# design (tested elsewhere); everything else must round-trip.
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
# Format characters (Cf) are left out: a new key may not hold invisible ones.
key_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cf")), min_size=1, max_size=60
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
values = json_values.filter(lambda v: v is not None)
# The adapters' markers are refused in a caller's metadata (test_security.py,
# test_langchain_adapters.py), and Hypothesis draws the code's own string literals: left out.
metadata = st.dictionaries(
    text.filter(lambda name: name not in (MANAGED_FIELD, DOCUMENT_FIELD)), json_values, max_size=5
)

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# Digits everywhere: integers of any size, numbers and digit runs inside strings, so that
# documents with and without 19 digits in a row (the json module's path) are both drawn.
digit_heavy = st.recursive(
    st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, 2**64 + 1, 10**19, 2**70])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.from_regex(r"[0-9 .-]*"),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.from_regex(r"[0-9a-z]*"), children, max_size=4)
    ),
    max_leaves=16,
)


@settings(max_examples=300, deadline=None)
@given(document=digit_heavy)
def test_json_is_decoded_exactly_whatever_its_digits(document: Any) -> None:
    data = json.dumps(document).encode()
    decoded, expected = decode_json(data), json.loads(data)
    assert decoded == expected
    assert repr(decoded) == repr(expected)  # an int stays an int, a float a float


@settings(max_examples=300, deadline=None)
@given(document=digit_heavy | json_values)
def test_the_fast_encoding_writes_the_same_data(document: Any) -> None:
    """orjson's text for a write, and the json module's, read back as the same data (to the
    type: an int stays an int, a float a float), integers beyond 64 bits included."""
    try:
        checked = to_json_value(document)
    except MemoryValidationError:
        assume(False)  # NUL characters: refused before any encoding (tested elsewhere)
    fast, plain = json.loads(encode_checked_json(checked)), json.loads(encode_json(checked))
    assert fast == plain
    assert repr(fast) == repr(plain)


def _checked_or_refused(check: Any) -> Any:
    try:
        return check().tolist()
    except MemoryError as exc:
        return type(exc), str(exc)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.lists(
        st.sampled_from([0.0, -0.0, 1.0, -2.5, 3.4e38, 1e39, float("nan"), float("inf")])
        | st.floats(width=32),
        min_size=3,
        max_size=5,
    )
)
def test_a_given_vector_is_checked_as_the_embedders_are(raw: list[float]) -> None:
    """The quick check of one caller's vector accepts and refuses exactly what the check of
    an embedder's batch does, with the same error (NaN, infinity, beyond float32, zeros,
    another dimension)."""
    with np.errstate(over="ignore"):
        quick = _checked_or_refused(lambda: one_vector(raw, 4))
        batch = _checked_or_refused(
            lambda: check_vectors(np.asarray([raw], dtype=np.float32), 1, 4)[0]
        )
    assert repr(quick) == repr(batch)


@SETTINGS
@given(key=key_text, value=values, meta=metadata)
async def test_unicode_round_trips_exactly(
    storage: PostgresStorage[str, Any], key: str, value: Any, meta: dict[str, Any]
) -> None:
    await storage.store(key, value, metadata=meta)
    entry = await storage.retrieve(key)
    assert entry.value == value
    assert entry.metadata == meta
    assert entry.key == key


filter_keys = st.sampled_from(["n", "tag", "user.plan", "a'b", "x;y", "n.m.o", "", "$or"]) | text
operators = st.sampled_from(
    [
        "$eq",
        "$ne",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$in",
        "$nin",
        "$contains",
        "$exists",
        "$regex",
        "$and",
        "$or",
        "$not",
    ]
)
operands = json_values | st.lists(json_values, max_size=3)
filters = st.recursive(
    st.dictionaries(
        filter_keys, operands | st.dictionaries(operators, operands, max_size=2), max_size=3
    ),
    lambda children: st.dictionaries(
        st.sampled_from(["$and", "$or", "$not"]),
        st.lists(children, max_size=3) | children,
        max_size=2,
    ),
    max_leaves=8,
)


@SETTINGS
@given(spec=filters)
async def test_filter_language_never_reaches_the_server_as_an_error(
    storage: PostgresStorage[str, Any], spec: Any
) -> None:
    try:
        await storage.count(filter=spec)
    except MemoryValidationError:
        pass  # our own, precise rejection
    except MemoryError as exc:  # pragma: no cover - this is the failure the test looks for
        pytest.fail(f"filter {spec!r} reached the server as {exc!r}")


@pytest.mark.parametrize(
    "vector, error",
    [
        ([1.0, 0.0], DimensionMismatchError),
        ([float("nan")] * 64, MemoryValidationError),
        ([float("inf")] * 64, MemoryValidationError),
        ([0.0] * 64, MemoryValidationError),
    ],
)
async def test_bad_embeddings_are_rejected_and_nothing_is_written(
    storage: PostgresStorage[str, Any], vector: list[float], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await storage.store("k", "text", embedding=vector)
    with pytest.raises(error):
        await storage.store_many([{"key": "a", "value": "x", "embedding": vector}])
    assert await storage.count() == 0


@pytest.mark.parametrize("vector", [[0.0] * 8, [float("nan")] * 8, [1.0] * 4])
async def test_an_embedder_returning_bad_vectors_is_caught(
    make_config: Any, vector: list[float]
) -> None:
    embedder = FixedEmbedder([1.0] * 8)
    async with PostgresStorage[str, Any](make_config(), embedder) as store:
        embedder.vector = np.asarray(vector, dtype=np.float32)  # the model starts misbehaving
        with pytest.raises(MemoryValidationError):
            await store.store("k", "some text")
        assert await store.count() == 0

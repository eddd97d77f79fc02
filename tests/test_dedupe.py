"""Deduplication on write: a store that repeats what its owner already holds reinforces that
memory instead of adding another, race-safe, and leaves a trace in its history."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryScope,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
)

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
BRUNO = {"scope": MemoryScope.USER, "scope_id": "bruno"}


@pytest.fixture
async def storage(config: PostgresConfig) -> Any:
    async with PostgresStorage[str, Any](config, HashingEmbedder(256)) as store:
        yield store


async def test_the_same_text_reinforces_the_memory_it_repeats(
    storage: PostgresStorage[str, Any],
) -> None:
    first = await storage.store("k1", "Ana likes green tea", **ANA, metadata={"a": 1, "b": 1})
    again = await storage.store(
        "k2",
        "  ana LIKES   green tea ",
        **ANA,
        dedupe=True,
        importance=0.9,
        metadata={"b": 2, "c": 3},
        reason="said twice",
    )
    assert (again.key, again.deduplicated, again.version) == ("k1", True, 2)
    assert again.value == "Ana likes green tea"  # the memory kept its own text
    assert again.importance == pytest.approx(0.9)
    assert again.metadata == {"a": 1, "b": 2, "c": 3}
    # The repeat counts as a read of the memory (a plain write's entry on a Citus cluster
    # carries no read counts: None, documented).
    assert first.access_count == (None if storage.config.distribution else 0)
    assert again.access_count == 1
    assert (await storage.retrieve("k1", **ANA)).access_count == 1
    assert await storage.count(**ANA) == 1
    assert not await storage.exists("k2", **ANA)
    reinforced = (await storage.history("k1", **ANA))[0]
    assert reinforced.operation == "reinforce"
    assert reinforced.reason is not None
    assert "said twice" in reinforced.reason and "'k2'" in reinforced.reason
    assert "ana LIKES   green tea" in reinforced.reason  # the write's text, not lost
    # The larger importance wins: a less important repeat lowers nothing.
    low = await storage.store("k3", "Ana likes green tea", **ANA, dedupe=True, importance=0.1)
    assert low.importance == pytest.approx(0.9)


async def test_without_dedupe_or_across_owners_nothing_is_merged(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("k1", "Ana likes green tea", **ANA)
    assert not (await storage.store("k2", "Ana likes green tea", **ANA)).deduplicated
    other = await storage.store("k3", "Ana likes green tea", **BRUNO, dedupe=True)
    assert (other.key, other.deduplicated) == ("k3", False)
    # A write to a key its owner holds updates that memory, duplicate or not (here to what
    # it already holds: no new version).
    own = await storage.store("k1", "Ana likes green tea", **ANA, dedupe=True)
    assert (own.key, own.deduplicated, own.version) == ("k1", False, 1)
    changed = await storage.store("k1", "Ana likes green tea a lot", **ANA, dedupe=True)
    assert (changed.key, changed.deduplicated, changed.version) == ("k1", False, 2)
    assert await storage.count(**ANA) == 2
    with pytest.raises(MemoryValidationError, match="dedupe"):
        await storage.store("k4", "x", **ANA, dedupe=1.5)


async def test_a_threshold_accepts_close_vectors_but_never_other_identifiers(
    storage: PostgresStorage[str, Any],
) -> None:
    # The hashing embedder gives texts of the same words the same vector.
    await storage.store("order", "order A-77812 shipped on Monday", **ANA)
    twin = await storage.store(
        "near", "shipped on Monday: order A-77813", **ANA, dedupe=0.5
    )  # close words, another order
    assert not twin.deduplicated
    same = await storage.store("same", "on Monday order A-77812 shipped", **ANA, dedupe=0.9)
    assert (same.key, same.deduplicated) == ("order", True)
    number = await storage.store("five", "Ana has 5 cats", **ANA)
    other_number = await storage.store("six", "Ana has 6 cats", **ANA, dedupe=0.5)
    assert number.key == "five" and not other_number.deduplicated
    # Exact text alone (True) does not take close vectors.
    words = await storage.store("reordered", "Monday on shipped A-77812 order", **ANA, dedupe=True)
    assert not words.deduplicated


async def test_the_configured_threshold_applies_unless_a_store_says_otherwise(
    make_config: Any,
) -> None:
    config = make_config(dedupe_threshold=0.95)
    async with PostgresStorage[str, Any](config, HashingEmbedder(256)) as store:
        await store.store("a", "Ana drinks green tea", **ANA)
        assert (await store.store("b", "green tea Ana drinks", **ANA)).deduplicated
        assert not (
            await store.store("c", "green tea Ana drinks", **ANA, dedupe=False)
        ).deduplicated


async def test_concurrent_duplicates_find_each_other(make_config: Any) -> None:
    # Twenty writers queue on one owner's lock with ten connections: on a slow machine (the
    # suite on a Citus cluster, two cores) the wait for a connection is long, never wrong.
    config = make_config(pool_timeout=120)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as storage:
        results = await asyncio.gather(
            *(
                storage.store(f"k{i}", "Ana's flight leaves at 9", **ANA, dedupe=True)
                for i in range(20)
            )
        )
        assert await storage.count(**ANA) == 1
        assert sum(entry.deduplicated for entry in results) == 19
        kept = {entry.key for entry in results}
        assert len(kept) == 1
        versions = await storage.history(kept.pop(), **ANA)
        assert [v.operation for v in versions].count("reinforce") == 19


@pytest.mark.model
async def test_with_the_model_a_paraphrase_is_a_duplicate_and_a_near_miss_is_not(
    make_config: Any, minilm: Any
) -> None:
    """all-MiniLM-L6-v2: the paraphrase is at cosine 0.94; the other allergy at 0.72; yet
    'A-77812' beside 'A-77813' is at 0.98 and '9' beside '10' at 0.96 — above any useful
    threshold, which is why differing identifiers and numbers always keep memories apart."""
    async with PostgresStorage[str, Any](make_config(), minilm) as store:
        await store.store("allergy", "Ana is allergic to peanuts", **ANA)
        await store.store("order", "Order A-77812 shipped on Monday", **ANA)
        await store.store("flight", "Ana's flight leaves at 9", **ANA)
        said = await store.store("again", "Ana has a peanut allergy", **ANA, dedupe=0.92)
        assert (said.key, said.deduplicated) == ("allergy", True)
        for key, text in (
            ("shellfish", "Ana is allergic to shellfish"),
            ("other-order", "Order A-77813 shipped on Monday"),
            ("later-flight", "Ana's flight leaves at 10"),
        ):
            written = await store.store(key, text, **ANA, dedupe=0.92)
            assert (written.key, written.deduplicated) == (key, False), text
        assert await store.count(**ANA) == 6


async def test_store_many_folds_repeats_of_held_memories_and_of_earlier_items(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("held", "Ana likes green tea", **ANA, importance=0.2)
    await storage.store("bruno-tea", "Ana likes green tea", **BRUNO)
    written = await storage.store_many(
        [
            {"key": "again", "value": "ana likes GREEN tea", "importance": 0.7},
            {"key": "new", "value": "Ana plays chess"},
            {"key": "new-again", "value": "Ana  plays chess", "metadata": {"source": "chat"}},
            {"key": "other", "value": "Ana plays go"},
            {"key": "bruno", "value": "Ana likes green tea", **BRUNO},
        ],
        **ANA,
        dedupe=True,
        reason="import",
    )
    assert (int(written), written.deduplicated) == (2, 3)
    assert repr(written) == "StoredCount(2, deduplicated=3)"
    assert (str(written), f"{written}", f"{written:>3}") == ("2", "2", "  2")
    assert sorted(e.key for e in await storage.list(**ANA)) == ["held", "new", "other"]
    assert [e.key for e in await storage.list(**BRUNO)] == ["bruno-tea"]
    held = await storage.retrieve("held", **ANA)
    assert held is not None
    assert (held.importance, held.version, held.access_count) == (pytest.approx(0.7), 2, 1)
    chess = await storage.retrieve("new", **ANA)
    assert chess is not None and chess.metadata == {"source": "chat"}
    reinforced = (await storage.history("new", **ANA))[0]
    assert reinforced.operation == "reinforce"
    assert reinforced.reason is not None and "'new-again'" in reinforced.reason
    assert "import" in reinforced.reason
    # Without dedupe, the same batch adds every item.
    plain = await storage.store_many([("p1", "Ana plays go"), ("p2", "Ana plays go")], **ANA)
    assert (int(plain), plain.deduplicated) == (2, 0)


@pytest.mark.parametrize("pairwise", [1_000, 1])
async def test_store_many_with_a_threshold_keeps_different_identifiers_apart(
    storage: PostgresStorage[str, Any], monkeypatch: pytest.MonkeyPatch, pairwise: int
) -> None:
    """Whether the batch's vectors are compared first (identifiers read only for the close
    ones) or every write's identifiers are read (an owner's writes past PAIRWISE_WRITES)."""
    monkeypatch.setattr("pepperpy_pg_memory.dedupe.PAIRWISE_WRITES", pairwise)
    written = await storage.store_many(
        [
            ("a", "shipped on Monday: order A-77812"),
            ("b", "on Monday order A-77812 shipped"),
            ("c", "on Monday order A-77813 shipped"),
            ("d", "Monday shipped order A-77812 on"),
        ],
        **ANA,
        dedupe=0.5,
    )
    assert (int(written), written.deduplicated) == (2, 2)
    assert sorted(e.key for e in await storage.list(**ANA)) == ["a", "c"]


async def test_a_batch_rewriting_a_memory_is_judged_by_its_new_text(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("tea", "Ana likes green tea", **ANA)
    written = await storage.store_many(
        [("tea", "Ana likes black coffee"), ("tea-2", "Ana likes green tea")],
        **ANA,
        dedupe=True,
    )
    # "tea" now says coffee: the second item repeats nothing the owner will hold.
    assert (int(written), written.deduplicated) == (2, 0)
    assert await storage.count(**ANA) == 2


async def test_adapter_records_are_never_folded_into_or_folded(
    storage: PostgresStorage[str, Any],
) -> None:
    managed = "test-adapter"
    await storage.store_many([{"key": "msg-1", "value": "yes", "managed_by": managed}], **ANA)
    mine = await storage.store("fact", "yes", **ANA, dedupe=True)
    assert (mine.key, mine.deduplicated) == ("fact", False)
    written = await storage.store_many(
        [
            {"key": "msg-2", "value": "yes", "managed_by": managed},
            {"key": "msg-3", "value": "yes", "managed_by": managed},
        ],
        **ANA,
        dedupe=True,
    )
    assert (int(written), written.deduplicated) == (2, 0)
    assert await storage.count(**ANA) == 4


async def test_concurrent_batches_of_one_text_leave_one_memory(
    storage: PostgresStorage[str, Any],
) -> None:
    counts = await asyncio.gather(
        *(
            storage.store_many(
                [(f"b{batch}-{i}", "Ana's flight leaves at 9") for i in range(3)],
                **ANA,
                dedupe=True,
            )
            for batch in range(5)
        )
    )
    assert sum(int(count) for count in counts) == 1
    assert sum(count.deduplicated for count in counts) == 14
    assert await storage.count(**ANA) == 1


@pytest.mark.parametrize(
    ("held", "written"),
    [
        ("Ana flies to Oslo in May", "Ana flies to Oslo in June"),
        ("the review is on Monday", "the review is on Tuesday"),
        ("Ana likes spicy food", "Ana doesn't like spicy food"),
        ("Ana likes spicy food", "Ana does not like spicy food"),
        ("Ana eats fish", "Ana never eats fish"),
    ],
)
async def test_dates_and_negations_keep_close_texts_apart(
    storage: PostgresStorage[str, Any], held: str, written: str
) -> None:
    """Embeddings blur months, weekdays and negations as they blur numbers."""
    await storage.store("held", held, **ANA)
    entry = await storage.store("written", written, **ANA, dedupe=0.1)
    assert not entry.deduplicated
    same = await storage.store("again", held.upper(), **ANA, dedupe=0.1)
    assert (same.key, same.deduplicated) == ("held", True)


def test_only_writes_with_a_close_one_of_their_owner_are_compared() -> None:
    from pepperpy_pg_memory import MemoryType
    from pepperpy_pg_memory.dedupe import close_in_batch
    from pepperpy_pg_memory.items import PendingWrite
    from pepperpy_pg_memory.types import MANAGED_FIELD

    def write(key: str, owner: str, vector: list[float], **metadata: Any) -> PendingWrite:
        return PendingWrite(
            key=key,
            value="{}",
            text=key,
            content_hash=b"",
            type=MemoryType.LONG_TERM,
            scope=MemoryScope.USER,
            scope_id=owner,
            indices=frozenset(),
            metadata=metadata,
            embedding=np.array(vector, dtype=np.float32),
            ttl=None,
            expires_at=None,
        )

    writes = [
        write("a", "ana", [1.0, 0.0, 0.0]),
        write("far", "ana", [0.0, 1.0, 0.0]),
        write("b", "ana", [0.99, 0.1, 0.0]),  # cosine 0.995 with a
        write("bruno", "bruno", [1.0, 0.0, 0.0]),  # as close to a, another owner's
        write("record", "ana", [1.0, 0.0, 0.0], **{MANAGED_FIELD: "adapter"}),
        write("zero", "ana", [0.0, 0.0, 0.0]),
    ]
    assert [w.key for w in close_in_batch(writes, 0.99)] == ["a", "b"]
    assert [w.key for w in close_in_batch(writes, 0.999)] == []
    assert [w.key for w in close_in_batch(writes, -1.0)] == ["a", "far", "b"]


def test_a_batch_compares_against_every_kept_vector_as_it_grows() -> None:
    from pepperpy_pg_memory.dedupe import _UnitRows
    from pepperpy_pg_memory.types import Identity

    rows = _UnitRows(np.zeros(3))
    for i in range(10):  # past the first capacities (4, 8)
        rows.add(Identity("user", "ana", f"k{i}"), np.eye(3)[i % 3])
    similarity, closest = rows.closest(np.array([0.0, 1.0, 0.0]))
    assert (similarity, closest.key) == (1.0, "k1")  # the earliest of equals
    assert len(rows.identities) == 10 and rows.rows.shape[0] >= 10


async def test_near_duplicates_are_found_for_small_and_large_owners_alike(
    storage: PostgresStorage[str, Any],
) -> None:
    """A small owner's memories are all compared with a write, a large owner's nearest come
    through the HNSW index (past EXACT_NEAR_DUPLICATE_OWNER): both find the near duplicate,
    store() and store_many() alike, and neither takes one with other identifiers."""
    from pepperpy_pg_memory.queries import EXACT_NEAR_DUPLICATE_OWNER

    large = {"scope": MemoryScope.USER, "scope_id": "large"}
    filler = [
        (f"f{i}", f"note {i}: the weather on day {i} was {'sunny' if i % 2 else 'grey'}")
        for i in range(EXACT_NEAR_DUPLICATE_OWNER + 10)
    ]
    await storage.store_many(filler, **large)
    for owner in (ANA, large):
        await storage.store("order", "order A-77812 shipped on Monday", **owner)
        same = await storage.store("same", "on Monday order A-77812 shipped", **owner, dedupe=0.9)
        assert (same.key, same.deduplicated) == ("order", True), owner
        other_order = "shipped on Monday: order A-77813"
        other = await storage.store("other", other_order, **owner, dedupe=0.5)
        assert not other.deduplicated, owner
        written = await storage.store_many(
            [("batch-same", "Monday shipped order A-77812 on"), ("batch-new", "order A-1 lost")],
            **owner,
            dedupe=0.9,
        )
        assert (int(written), written.deduplicated) == (1, 1), owner
        order = await storage.retrieve("order", **owner)
        assert order is not None and order.version == 3, owner  # reinforced twice
    assert await storage.count(**large) == EXACT_NEAR_DUPLICATE_OWNER + 10 + 3

"""Consolidation: promotion of memories read often, merging of near-duplicates into the best
of them, summaries of sessions — per owner, restorable, idempotent, and a dry run that
changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryEntry,
    MemoryScope,
    MemoryType,
    MemoryValidationError,
    PostgresStorage,
)

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
BRUNO = {"scope": MemoryScope.USER, "scope_id": "bruno"}
SESSION = {"scope": MemoryScope.SESSION, "scope_id": "s-1"}
SHORT = {"type": MemoryType.SHORT_TERM}


@pytest.fixture
async def storage(make_config: Any) -> Any:
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(256)) as store:
        yield store


async def _read(storage: PostgresStorage[str, Any], key: str, times: int, **owner: Any) -> None:
    for _ in range(times):
        await storage.retrieve(key, **owner)


async def test_memories_read_often_become_long_term(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("trip", "Ana flies to Oslo in May", **ANA, **SHORT)
    await storage.store("mood", "Ana was tired today", **ANA, **SHORT)
    await storage.store("task", "Ana drafts the report", **ANA, type=MemoryType.WORKING)
    await storage.store("bruno", "Bruno flies to Rome", **BRUNO, **SHORT)
    await _read(storage, "trip", 3, **ANA)
    await _read(storage, "task", 5, **ANA)
    await _read(storage, "mood", 2, **ANA)
    await _read(storage, "bruno", 3, **BRUNO)

    report = await storage.consolidate(scope=MemoryScope.USER, scope_id="ana")
    assert sorted(report.promoted) == ["task", "trip"]
    assert report.owners == 1 and not report.dry_run
    trip = await storage.retrieve("trip", **ANA)
    assert trip is not None
    assert (trip.type, trip.expires_at) == (MemoryType.LONG_TERM, None)
    promoted = (await storage.history("trip", **ANA))[0]
    assert promoted.operation == "promote" and promoted.reason == "read at least 3 times"
    # (list() counts no reads, unlike retrieve.)
    types = {entry.key: entry.type for entry in await storage.list()}
    assert types["mood"] == MemoryType.SHORT_TERM
    assert types["bruno"] == MemoryType.SHORT_TERM  # another owner
    # Once more: nothing left to do.
    again = await storage.consolidate(scope=MemoryScope.USER, scope_id="ana")
    assert again.promoted == [] and again.merged == []


async def test_the_report_says_whose_keys_two_owners_merged_under_the_same_key(
    storage: PostgresStorage[str, Any],
) -> None:
    for owner, name in ((ANA, "Ana"), (BRUNO, "Bruno")):
        await storage.store("tea", f"{name} likes green tea", **owner, importance=0.2)
        await storage.store("tea-again", f"{name.lower()} likes GREEN tea", **owner)
        await storage.store("trip", f"{name} flies to Oslo", **owner, **SHORT)
        await _read(storage, "trip", 3, **owner)

    report = await storage.consolidate()
    assert report.owners == 2
    assert report.merged == ["tea", "tea"] and report.promoted == ["trip", "trip"]
    # Keyed by key alone, the flat map holds one pair; per owner, both are there.
    assert report.merged_into == {"tea": "tea-again"}
    assert [
        (o.scope, o.scope_id, o.merged_into, o.promoted, o.summaries) for o in report.by_owner
    ] == [
        (MemoryScope.USER, "ana", {"tea": "tea-again"}, ["trip"], []),
        (MemoryScope.USER, "bruno", {"tea": "tea-again"}, ["trip"], []),
    ]
    for owner in (ANA, BRUNO):  # each owner's own memory was merged, into its own keeper
        closed = (await storage.history("tea", **owner))[0]
        assert (closed.reason, closed.superseded_by) == ("merged", "tea-again")
    assert (await storage.consolidate()).by_owner == []


async def test_near_duplicates_merge_into_the_most_important_and_can_be_restored(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("tea-1", "Ana likes green tea", **ANA, importance=0.4)
    await storage.store("tea-2", "ana likes  GREEN tea", **ANA, importance=0.8)
    await storage.store("tea-3", "Ana likes green tea a lot", **ANA, importance=0.2)
    await storage.store("order-1", "order A-77812 shipped on Monday", **ANA)
    await storage.store("order-2", "order A-77813 shipped on Monday", **ANA)
    await storage.store("chess", "Ana plays chess on Sundays", **ANA)
    await storage.store("tea-bruno", "Ana likes green tea", **BRUNO)

    report = await storage.consolidate(merge_threshold=0.8)
    assert report.merged_into == {"tea-1": "tea-2", "tea-3": "tea-2"}
    assert report.owners == 2
    live = sorted(entry.key for entry in await storage.list(**ANA))
    assert live == ["chess", "order-1", "order-2", "tea-2"]  # other identifiers stay apart
    assert [entry.key for entry in await storage.list(**BRUNO)] == ["tea-bruno"]
    merged = await storage.retrieve("tea-1", **ANA, include_invalid=True)
    assert merged is not None
    assert (merged.superseded_by, merged.valid_to is not None) == ("tea-2", True)
    closing = (await storage.history("tea-1", **ANA))[0]
    assert (closing.operation, closing.reason) == ("supersede", "merged")
    # A second run changes nothing; a merge is undone by restoring the memory.
    assert (await storage.consolidate(merge_threshold=0.8)).merged == []
    restored = await storage.restore("tea-1", **ANA, version=closing.version - 1)
    assert restored.valid_to is None
    assert await storage.count(**ANA) == 5


async def test_a_dry_run_reports_and_changes_nothing(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("a", "Ana likes green tea", **ANA, **SHORT)
    await storage.store("b", "Ana likes green tea!", **ANA, **SHORT)
    await _read(storage, "a", 3, **ANA)
    before = [(e.key, e.version, e.type) for e in await storage.list(**ANA, order_by="key")]

    dry = await storage.consolidate(dry_run=True, merge_threshold=0.8)
    assert dry.dry_run and dry.promoted == ["a"] and dry.merged_into == {"b": "a"}
    after = [(e.key, e.version, e.type) for e in await storage.list(**ANA, order_by="key")]
    assert after == before
    real = await storage.consolidate(merge_threshold=0.8)
    assert (real.promoted, real.merged_into) == (dry.promoted, dry.merged_into)


async def test_adapter_records_are_left_alone_unless_included(
    storage: PostgresStorage[str, Any],
) -> None:
    # Adapters mark their records through managed_by (callers' metadata may not).
    records = [{"key": f"msg-{n}", "value": "yes", "managed_by": "test"} for n in (1, 2)]
    for record in records:
        await storage.store_many([record], **SESSION, **SHORT)
    await _read(storage, "msg-1", 3, **SESSION)
    report = await storage.consolidate()
    assert (report.promoted, report.merged, report.owners) == ([], [], 0)
    included = await storage.consolidate(include_managed=True, dry_run=True)
    assert included.promoted == ["msg-1"] and included.merged_into == {"msg-2": "msg-1"}


async def test_a_session_becomes_one_episodic_summary(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("t1", "Ana asked for a table for two", **SESSION, **SHORT)
    await storage.store("t2", "Ana prefers the terrace", **SESSION, **SHORT, importance=0.7)
    await storage.store("fact", "Ana lives in Lisbon", **SESSION)  # long-term: not a source
    seen: list[list[str]] = []

    async def summarize(entries: list[MemoryEntry[Any]]) -> str:
        seen.append([entry.key for entry in entries])
        return "Ana booked a table for two on the terrace."

    dry = await storage.consolidate(summarize=summarize, dry_run=True)
    assert seen == [] and dry.summarized == ["t1", "t2"] and len(dry.summaries) == 1
    report = await storage.consolidate(summarize=summarize)
    assert seen == [["t1", "t2"]]
    assert report.summaries == dry.summaries
    summary = await storage.retrieve(report.summaries[0], **SESSION)
    assert summary is not None
    assert summary.value == "Ana booked a table for two on the terrace."
    assert (summary.type, summary.metadata["sources"]) == (MemoryType.EPISODIC, ["t1", "t2"])
    assert summary.importance == pytest.approx(0.7)
    assert await storage.exists("t1", **SESSION)  # sources stay until they expire
    # Idempotent: nothing new, nothing summarised; a new turn gets a summary of its own.
    assert (await storage.consolidate(summarize=summarize)).summaries == []
    await storage.store("t3", "Ana will bring a dog", **SESSION, **SHORT)
    third = await storage.consolidate(summarize=summarize)
    assert third.summarized == ["t3"] and seen[-1] == ["t3"]


class FakeChatModel:
    """What a LangChain chat model looks like to consolidate(): ``ainvoke`` → a message."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def ainvoke(self, prompt: str) -> Any:
        self.prompts.append(prompt)
        return type("AIMessage", (), {"content": [{"type": "text", "text": "A short summary."}]})()


async def test_a_chat_model_summarises_through_ainvoke(storage: PostgresStorage[str, Any]) -> None:
    await storage.store("t1", "Ana asked about trains to Porto", **SESSION, **SHORT)
    await storage.store("u1", "Ana's account was created", **ANA, **SHORT)  # not a session
    model = FakeChatModel()
    report = await storage.consolidate(summarize=model)
    assert len(model.prompts) == 1 and "- Ana asked about trains to Porto" in model.prompts[0]
    summary = await storage.retrieve(report.summaries[0], **SESSION)
    assert summary is not None and summary.value == "A short summary."


async def test_bad_arguments_are_refused(storage: PostgresStorage[str, Any]) -> None:
    with pytest.raises(MemoryValidationError, match="promote_after"):
        await storage.consolidate(promote_after=0)
    with pytest.raises(MemoryValidationError, match="merge_threshold"):
        await storage.consolidate(merge_threshold=1.5)
    await storage.store("t1", "x", **SESSION, **SHORT)

    async def silent(entries: list[Any]) -> str:
        return "  "

    with pytest.raises(MemoryValidationError, match="no text"):
        await storage.consolidate(summarize=silent)
    assert await storage.count(**SESSION) == 1


@pytest.mark.model
async def test_with_the_model_paraphrases_merge_and_near_misses_stay(
    make_config: Any, minilm: Any
) -> None:
    """all-MiniLM-L6-v2 at the default threshold 0.92: a paraphrase (0.94) merges; another
    allergy (0.72) does not; orders A-77812 and A-77813 (0.98) never do."""
    async with PostgresStorage[str, Any](make_config(), minilm) as store:
        await store.store("allergy", "Ana is allergic to peanuts", **ANA, importance=0.9)
        await store.store("again", "Ana has a peanut allergy", **ANA)
        await store.store("shellfish", "Ana is allergic to shellfish", **ANA)
        await store.store("order", "Order A-77812 shipped on Monday", **ANA)
        await store.store("other-order", "Order A-77813 shipped on Monday", **ANA)
        report = await store.consolidate()
        assert report.merged_into == {"again": "allergy"}
        assert await store.count(**ANA) == 4


async def test_a_summary_never_merges_with_what_it_sums_up(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store("t1", "Ana booked the terrace", **SESSION, **SHORT)

    async def echo(entries: list[MemoryEntry[Any]]) -> str:
        return entries[0].text  # a summary saying just what its one source says

    first = await storage.consolidate(summarize=echo)
    assert first.summarized == ["t1"]
    again = await storage.consolidate(summarize=echo)
    assert (again.merged, again.summaries) == ([], [])
    assert await storage.count(**SESSION) == 2

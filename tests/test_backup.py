"""Backups: export then import restores every field of every memory, exactly."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import CountingEmbedder
from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryIndex,
    MemoryScope,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
)


async def _rows(conn: asyncpg.Connection, config: PostgresConfig) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT tenant, scope, scope_id, key, value::text AS value, content, memory_type, "
        "indices, metadata::text AS metadata, created_at, updated_at, expires_at, "
        f'embedding::text AS embedding FROM "{config.schema_name}"."{config.table}" '
        "ORDER BY scope, scope_id, key"
    )
    return [dict(row) for row in rows]


async def _the_issues_memories(store: PostgresStorage[str, Any]) -> None:
    await store.store(
        "trip",
        {"content": "The user plans a trip to Lisbon"},
        type=MemoryType.SHORT_TERM,
        scope=MemoryScope.SESSION,
        scope_id="s-1",
    )
    await store.store(
        "pinned",
        "Keep this session note",
        type=MemoryType.SHORT_TERM,
        scope=MemoryScope.SESSION,
        scope_id="s-1",
        ttl="never",
    )
    await store.store(
        "procedure",
        {"content": "Confirm the order number before refunds", "steps": [1, 2.5, None]},
        scope=MemoryScope.AGENT,
        scope_id="support-bot",
        metadata={"priority": 10, "nested": {"tags": ["refund"]}},
    )
    await store.store("reminder", "call the bank", ttl=timedelta(days=3))
    await store.store("plain", {"n": 1}, indices=[], scope="user", scope_id="ana")
    await store.store(
        "words", "only words", indices=[MemoryIndex.CONTEXTUAL], text="custom indexed text"
    )


@pytest.mark.parametrize("with_embeddings", [False, True])
async def test_export_then_import_restores_every_field(
    make_config: Any, raw_conn: asyncpg.Connection, tmp_path: Path, with_embeddings: bool
) -> None:
    source, target = make_config(), make_config()
    backup = tmp_path / "backup.jsonl"
    async with PostgresStorage[str, Any](source, HashingEmbedder(32)) as store:
        await _the_issues_memories(store)
        assert await store.export_jsonl(backup, with_embeddings=with_embeddings) == 6
    embedder = CountingEmbedder(32)
    async with PostgresStorage[str, Any](target, embedder) as store:
        report = await store.import_jsonl(backup)
        assert (report.stored, report.skipped, report.failed) == (6, 0, 0)
        # Vectors in the file are used as they are; without them each text is embedded once.
        assert len(embedder.embedded_texts) == (0 if with_embeddings else 4)
        assert report.unchanged == 0
        again = await store.import_jsonl(backup)  # idempotent
        assert (again.stored, again.unchanged) == (6, 6)
    restored = await _rows(raw_conn, target)
    assert restored == await _rows(raw_conn, source)
    never = next(row for row in restored if row["key"] == "pinned")
    assert never["expires_at"] is None  # not the short-term default of one day


async def test_importing_lines_without_moments_again_changes_nothing(
    make_config: Any, tmp_path: Path
) -> None:
    source = tmp_path / "plain.jsonl"
    lines = [{"key": f"k{i}", "value": f"plain memory {i}"} for i in range(3)]
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(32)) as store:
        first = await store.import_jsonl(source)
        assert (first.stored, first.unchanged) == (3, 0)
        before = await store.retrieve("k1")
        again = await store.import_jsonl(source)
        assert (again.stored, again.unchanged) == (3, 3)
        after = await store.retrieve("k1")
        assert (after.version, after.created_at, after.updated_at) == (
            before.version,
            before.created_at,
            before.updated_at,
        )
        lines[1]["value"] = "plain memory one, changed"
        source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        changed = await store.import_jsonl(source)
        assert (changed.stored, changed.unchanged) == (3, 2)
        now = await store.retrieve("k1")
        assert now.version == before.version + 1 and now.created_at == before.created_at


async def test_an_imports_progress_counts_memories(make_config: Any, tmp_path: Path) -> None:
    backup = tmp_path / "backup.jsonl"
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(32)) as store:
        await _the_issues_memories(store)
        await store.export_jsonl(backup, with_history=True)  # version lines are not counted
    calls: list[tuple[int, int]] = []
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(32)) as store:
        await store.import_jsonl(
            backup, batch_size=4, progress=lambda done, total: calls.append((done, total))
        )
    assert calls == [(4, 6), (6, 6)]


async def test_a_release_0_1_export_imports(make_config: Any, tmp_path: Path) -> None:
    # What 0.1's export wrote: no header, no text or moments, expires_at as an ISO string.
    later = (datetime.now(timezone.utc) + timedelta(days=3)).isoformat()
    lines = [
        {"key": "a", "value": "x", "type": "short_term", "scope": "session", "scope_id": "s",
         "metadata": {}, "expires_at": later},
        {"key": "b", "value": {"content": "y"}, "type": "long_term", "scope": "global",
         "scope_id": None, "metadata": {"m": 1}, "expires_at": None},
    ]  # fmt: skip
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps(line) + "\n" for line in lines))
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(16)) as store:
        report = await store.import_jsonl(old)
        assert (report.stored, report.failed) == (2, 0)
        assert (await store.retrieve("a")).expires_at == datetime.fromisoformat(later)
        assert (await store.retrieve("b")).expires_at is None


async def test_bad_lines_are_named_and_nothing_of_them_is_written(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    past = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    config = make_config()
    text = "\n".join(
        [
            '{"format": "pepperpy-memory-export", "version": 1, "dimension": 16}',
            json.dumps({"key": "good", "value": "kept"}),
            "not json at all",
            json.dumps({"value": "no key"}),
            json.dumps({"key": "nul", "value": "a\u0000b"}),
            json.dumps({"key": "gone", "value": "x", "expires_at": past}),
            json.dumps({"key": "theirs", "value": "x", "tenant": "acme"}),
            json.dumps({"key": "odd", "value": "x", "colour": "blue"}),
            json.dumps({"key": "when", "value": "x", "created_at": "yesterday"}),
            json.dumps({"key": "whose", "value": "x", "scope": "user", "scope_id": ""}),
        ]
    )
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        report = await store.import_jsonl(io.StringIO(text))
    # One bad line is enough for nothing of the file to be written; every one is named.
    assert (report.stored, report.skipped, report.failed) == (0, 4, 4)
    lines = dict(report.errors)
    assert sorted(lines) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert "not JSON" in lines[3] and "key and value" in lines[4] and "NUL" in lines[5]
    assert "in the past" in lines[6] and "tenant 'acme'" in lines[7]
    assert "colour" in lines[8] and "ISO 8601" in lines[9]
    assert "scope_id must be a non-empty string" in lines[10]  # not moved to a default owner
    assert await _rows(raw_conn, config) == []


async def test_memories_expired_since_the_export_do_not_hold_the_rest_back(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    past = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    config = make_config()
    text = "\n".join(
        [
            json.dumps({"key": "good", "value": "kept"}),
            json.dumps({"key": "gone", "value": "x", "expires_at": past}),
        ]
    )
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        report = await store.import_jsonl(io.StringIO(text))
    assert (report.stored, report.failed) == (1, 1)
    assert "in the past" in dict(report.errors)[2]
    assert [row["key"] for row in await _rows(raw_conn, config)] == ["good"]


async def test_a_newer_format_version_is_refused(make_config: Any) -> None:
    from pepperpy_pg_memory import MemoryValidationError

    newer = '{"format": "pepperpy-memory-export", "version": 99}\n{"key": "k", "value": 1}\n'
    async with PostgresStorage[str, Any](make_config(), HashingEmbedder(16)) as store:
        with pytest.raises(MemoryValidationError, match="version 99"):
            await store.import_jsonl(io.StringIO(newer))
        assert await store.count() == 0


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
# Names leave out format characters too: a new name may not hold invisible ones.
_name = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf")), min_size=1, max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=6,
)
_memory = st.fixed_dictionaries(
    {
        "key": _name,
        "value": _json.filter(lambda v: v is not None),
        "type": st.sampled_from(list(MemoryType)),
        "scope": st.sampled_from(["user", "agent", "session"]),
        "scope_id": _name,
        "metadata": st.dictionaries(_text, _json, max_size=3),
        "indices": st.sampled_from([[], ["semantic"], ["contextual"], None]),
        "ttl": st.sampled_from(["never", 3600, None]),
    }
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(memories=st.lists(_memory, min_size=1, max_size=8))
async def test_random_memories_round_trip(
    make_config: Any, raw_conn: asyncpg.Connection, memories: list[dict[str, Any]]
) -> None:
    source, target = make_config(), make_config()
    out = io.StringIO()
    async with PostgresStorage[str, Any](source, HashingEmbedder(16)) as store:
        await store.store_many(memories)
        await store.export_jsonl(out, with_embeddings=True)
    async with PostgresStorage[str, Any](target, HashingEmbedder(16)) as store:
        report = await store.import_jsonl(io.StringIO(out.getvalue()))
        assert report.failed == report.skipped == 0
    assert await _rows(raw_conn, target) == await _rows(raw_conn, source)

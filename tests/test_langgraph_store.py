"""PepperpyStore as LangGraph's long-term memory: the BaseStore operations, namespaces mapped
onto scopes, TTLs, and a compiled graph sharing memories across two threads of one user."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from langgraph.store.base import GetOp, PutOp, SearchOp

from helpers import expiry_of, until
from langgraph_pepperpy import PepperpyStore, namespace_scope
from langgraph_pepperpy.store import memory_key
from pepperpy_pg_memory import HashingEmbedder, MemoryConfigurationError, MemoryScope
from pepperpy_pg_memory.runner import run_on_async


@pytest.fixture
def store(make_config: Any) -> Iterator[PepperpyStore]:
    memory_store = PepperpyStore.create(make_config(), HashingEmbedder(64))
    yield memory_store
    memory_store.close()


def test_namespaces_map_onto_scopes() -> None:
    assert namespace_scope(("users", "ana", "prefs")) == (MemoryScope.USER, "ana")
    assert namespace_scope(("threads", "t1")) == (MemoryScope.SESSION, "t1")
    assert namespace_scope(("assistant", "helper")) == (MemoryScope.AGENT, "helper")
    assert namespace_scope(("docs",)) == (MemoryScope.GLOBAL, None)


def test_put_get_update_delete(store: PepperpyStore) -> None:
    namespace = ("users", "ana", "prefs")
    store.put(namespace, "drink", {"text": "oat milk latte", "rank": 1})
    item = store.get(namespace, "drink")
    assert item is not None
    assert (item.namespace, item.key, item.value) == (
        namespace,
        "drink",
        {"text": "oat milk latte", "rank": 1},
    )
    store.put(namespace, "drink", {"text": "green tea", "rank": 2})
    updated = store.get(namespace, "drink")
    assert updated is not None and updated.value["text"] == "green tea"
    assert updated.created_at == item.created_at and updated.updated_at >= item.updated_at
    assert store.get(("users", "bruno", "prefs"), "drink") is None
    store.delete(namespace, "drink")
    assert store.get(namespace, "drink") is None


def test_keys_and_labels_with_separators_stay_apart(store: PepperpyStore) -> None:
    store.put(("a/b", "c"), "k#1", {"v": 1})
    store.put(("a", "b/c"), "k#1", {"v": 2})
    first = store.get(("a/b", "c"), "k#1")
    second = store.get(("a", "b/c"), "k#1")
    assert first is not None and second is not None
    assert (first.value, second.value) == ({"v": 1}, {"v": 2})
    assert [i.value for i in store.search(("a/b",))] == [{"v": 1}]


@pytest.mark.parametrize(
    "key",
    [
        "日本語のキー" * 10,
        "Ключ на русском языке из шестидесяти символов работает без проблем!",
        "مفتاح باللغة العربية من ستين حرفا يجب أن يعمل دون أي مشكلة هنا",
        "🙂" * 60,
    ],
)
def test_a_sixty_character_key_in_any_script(store: PepperpyStore, key: str) -> None:
    assert len(key) >= 60
    namespace = ("users", "ана", "notes")
    store.put(namespace, key, {"text": "a note"})
    item = store.get(namespace, key)
    assert item is not None and item.key == key
    assert [i.key for i in store.search(("users", "ана"))] == [key]


def test_long_namespaces_and_keys_up_to_the_documented_limit(store: PepperpyStore) -> None:
    # Ten labels and a key: 1,100 characters, 2,000 UTF-8 bytes in all (the documented limit).
    labels = ["users", "o" * 200] + [f"{n}" + "é" * 80 for n in range(8)]
    key = "k" * (2_000 - sum(len(label.encode()) for label in labels))
    namespace = tuple(labels)
    assert sum(len(part.encode()) for part in (*labels, key)) == 2_000
    assert sum(len(part) for part in (*labels, key)) >= 1_000
    store.put(namespace, key, {"text": "deep"})
    item = store.get(namespace, key)
    assert item is not None and item.namespace == namespace and item.key == key
    assert [i.key for i in store.search(namespace[:3])] == [key]
    assert store.list_namespaces(prefix=namespace[:2]) == [namespace]
    store.delete(namespace, key)
    assert store.get(namespace, key) is None


def test_one_users_items_never_touch_anothers(store: PepperpyStore) -> None:
    store.put(("users", "ana"), "theme", {"v": "dark"})
    store.put(("users", "bruno"), "theme", {"v": "light"})
    store.delete(("users", "bruno"), "theme")
    item = store.get(("users", "ana"), "theme")
    assert item is not None and item.value == {"v": "dark"}


def test_search_semantic_filter_limit_offset(store: PepperpyStore) -> None:
    for i, text in enumerate(["green tea in the morning", "chess on sundays", "black coffee"]):
        store.put(("users", "ana", "memories"), f"m{i}", {"text": text, "n": i})
    store.put(("users", "bruno", "memories"), "b0", {"text": "green tea too", "n": 0})
    hits = store.search(("users", "ana"), query="green tea", limit=2)
    assert hits[0].key == "m0" and hits[0].score is not None
    assert all(h.namespace[:2] == ("users", "ana") for h in hits)
    filtered = store.search(("users",), filter={"n": {"$gte": 1}})
    assert sorted(h.key for h in filtered) == ["m1", "m2"]
    everything = store.search(("users",), limit=10)
    assert len(everything) == 4
    paged = store.search(("users",), limit=2, offset=2)
    assert [h.key for h in paged] == [h.key for h in everything[2:4]]


def test_index_false_and_chosen_fields(store: PepperpyStore) -> None:
    namespace = ("docs",)
    store.put(
        namespace, "indexed", {"title": "router manual", "body": "unrelated"}, index=["title"]
    )
    store.put(namespace, "hidden", {"title": "router manual"}, index=False)
    hits = store.search(namespace, query="router manual")
    assert [h.key for h in hits] == ["indexed"]
    assert store.get(namespace, "hidden") is not None


def test_list_namespaces_prefix_suffix_depth(store: PepperpyStore) -> None:
    for namespace in [
        ("users", "ana", "prefs"),
        ("users", "ana", "facts"),
        ("users", "bruno", "prefs"),
        ("docs", "v1"),
    ]:
        store.put(namespace, "k", {"x": 1})
    assert store.list_namespaces() == [
        ("docs", "v1"),
        ("users", "ana", "facts"),
        ("users", "ana", "prefs"),
        ("users", "bruno", "prefs"),
    ]
    assert store.list_namespaces(prefix=("users", "ana")) == [
        ("users", "ana", "facts"),
        ("users", "ana", "prefs"),
    ]
    assert store.list_namespaces(suffix=("prefs",)) == [
        ("users", "ana", "prefs"),
        ("users", "bruno", "prefs"),
    ]
    assert store.list_namespaces(prefix=("users", "*", "prefs")) == [
        ("users", "ana", "prefs"),
        ("users", "bruno", "prefs"),
    ]
    assert store.list_namespaces(max_depth=2) == [
        ("docs", "v1"),
        ("users", "ana"),
        ("users", "bruno"),
    ]
    assert store.list_namespaces(limit=1, offset=1) == [("users", "ana", "facts")]


async def test_ttl_is_honoured(make_config: Any, raw_conn: Any) -> None:
    config = make_config()
    store = PepperpyStore.create(config, HashingEmbedder(64))
    namespace = ("sessions", "s1")
    table = f'"{config.schema_name}"."{config.table}"'
    try:
        await store.aput(namespace, "brief", {"text": "gone soon"}, ttl=0.02)  # minutes: 1.2 s
        await store.aput(namespace, "lasting", {"text": "stays"})
        assert await store.aget(namespace, "brief", refresh_ttl=False) is not None
        lifetime = await raw_conn.fetchval(
            f"SELECT expires_at - updated_at FROM {table} WHERE key = $1",
            memory_key(namespace, "brief"),
        )
        assert lifetime == timedelta(seconds=1.2)
        # Time passes for the items (their clocks moved back two seconds, nobody sleeps).
        # (Each moment computed here: Citus, which the suite may run on, refuses a moment
        # computed from a column in an UPDATE.)
        for key, expires_at in await raw_conn.fetch(
            f"SELECT key, expires_at FROM {table} WHERE expires_at IS NOT NULL"
        ):
            await raw_conn.execute(
                f"UPDATE {table} SET expires_at = $2 WHERE key = $1",
                key,
                expires_at - timedelta(seconds=2),
            )
        assert await store.aget(namespace, "brief") is None
        assert [i.key for i in await store.asearch(namespace)] == ["lasting"]
    finally:
        await store.aclose()


async def test_ttl_none_means_never_even_with_a_default(make_config: Any, raw_conn: Any) -> None:
    config = make_config()
    store = PepperpyStore.create(config, HashingEmbedder(64), ttl={"default_ttl": 10})
    namespace = ("users", "ana")
    try:
        await store.aput(namespace, "defaulted", {"text": "gets the default"})
        await store.aput(namespace, "forever", {"text": "never expires"}, ttl=None)
        await store.abatch([PutOp(namespace, "batched", {"text": "no ttl in the op"})])
        lifetimes = {
            row["key"].rsplit("#", 1)[1]: row["lifetime"]
            for row in await raw_conn.fetch(
                f'SELECT key, expires_at - updated_at AS lifetime FROM "{config.schema_name}".'
                f'"{config.table}"'
            )
        }
        assert lifetimes == {
            "defaulted": timedelta(minutes=10),
            "forever": None,
            "batched": None,
        }
    finally:
        await store.aclose()


async def test_async_batch_mixes_operations_in_order(store: PepperpyStore) -> None:
    namespace = ("agents", "helper")
    results = await store.abatch(
        [
            PutOp(namespace, "a", {"text": "alpha"}),
            PutOp(namespace, "b", {"text": "beta"}),
            GetOp(namespace, "a"),
            PutOp(namespace, "a", None),
            GetOp(namespace, "a"),
            SearchOp(namespace, limit=10),
        ]
    )
    assert results[0] is None and results[1] is None
    assert results[2] is not None and results[2].value == {"text": "alpha"}
    assert results[4] is None
    assert [i.key for i in results[5]] == ["b"]
    core = store.storage
    assert core.loop is not None
    entry = await run_on_async(core.loop, core.retrieve("lg:agents/helper/#b"))
    assert (entry.scope, entry.scope_id) == (MemoryScope.AGENT, "helper")


def test_a_graph_reads_memories_across_two_threads_of_one_user(make_config: Any) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.runtime import Runtime

    store = PepperpyStore.create(make_config(), HashingEmbedder(64))

    def remember_or_recall(
        state: MessagesState, runtime: Runtime[dict[str, str]]
    ) -> dict[str, Any]:
        user = runtime.context["user_id"]
        assert runtime.store is not None
        namespace = ("users", user, "memories")
        text = str(state["messages"][-1].content)
        if text.startswith("remember "):
            runtime.store.put(
                namespace, str(len(runtime.store.search(namespace))), {"text": text[9:]}
            )
            return {"messages": [("ai", "noted")]}
        found = runtime.store.search(namespace, query=text, limit=1)
        return {"messages": [("ai", found[0].value["text"] if found else "nothing")]}

    builder = StateGraph(MessagesState, context_schema=dict)
    builder.add_node("memory", remember_or_recall)
    builder.add_edge(START, "memory")
    graph = builder.compile(checkpointer=InMemorySaver(), store=store)
    try:
        graph.invoke(
            {"messages": [("user", "remember my favourite drink is green tea")]},
            {"configurable": {"thread_id": "thread-1"}},
            context={"user_id": "ana"},
        )
        answer = graph.invoke(
            {"messages": [("user", "what is my favourite drink")]},
            {"configurable": {"thread_id": "thread-2"}},
            context={"user_id": "ana"},
        )
        assert answer["messages"][-1].content == "my favourite drink is green tea"
        other = graph.invoke(
            {"messages": [("user", "what is my favourite drink")]},
            {"configurable": {"thread_id": "thread-3"}},
            context={"user_id": "bruno"},
        )
        assert other["messages"][-1].content == "nothing"
    finally:
        store.close()


async def test_reads_refresh_the_ttl_unless_told_not_to(make_config: Any, raw_conn: Any) -> None:
    # Judged on the stored expiry, not on sleeps racing a short TTL (flaky on a busy machine);
    # every refresh rewrites (no slack), so that each read moves the expiry.
    config = make_config(ttl_refresh_slack=0)
    store = PepperpyStore.create(config, HashingEmbedder(64))
    namespace = ("sessions", "s2")
    key = memory_key(namespace, "note")

    async def expiry() -> Any:
        return await expiry_of(raw_conn, config, key)

    try:
        await store.aput(namespace, "note", {"text": "kept alive by reads"}, ttl=1.0)
        written = await expiry()
        assert written is not None
        assert await store.aget(namespace, "note", refresh_ttl=False) is not None
        assert await expiry() == written
        assert await store.aget(namespace, "note") is not None
        refreshed = await expiry()
        assert refreshed > written
        assert [i.key for i in await store.asearch(namespace, refresh_ttl=False)] == ["note"]
        assert await expiry() == refreshed
        await store.asearch(namespace)
        assert await expiry() > refreshed
    finally:
        store.close()


def _refreshes_sent(storage: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The keys of every refresh statement the store sends after its reads (each call of
    ``touch_by_owner``), as the calls are made."""
    touched: list[list[str]] = []
    touch = storage.touch_by_owner

    async def counted_touch(names: Any, *args: Any, **kwargs: Any) -> int:
        names = list(names)
        touched.append([key for _, _, key in names])
        return await touch(names, *args, **kwargs)

    monkeypatch.setattr(storage, "touch_by_owner", counted_touch)
    return touched


async def test_reads_of_items_refreshed_a_moment_ago_send_no_refresh(
    make_config: Any, raw_conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the default slack the refresh statement would leave such items; the store does not
    # send it (a read of a fresh item costs one statement, not two).
    config = make_config()
    store = PepperpyStore.create(config, HashingEmbedder(64), ttl={"refresh_on_read": True})
    storage = store.storage
    touched = _refreshes_sent(storage, monkeypatch)
    namespace = ("sessions", "s3")
    key = memory_key(namespace, "note")
    table = f'"{config.schema_name}"."{config.table}"'
    try:
        await store.aput(namespace, "note", {"text": "read every turn"}, ttl=60.0)
        written = await raw_conn.fetchval(f"SELECT expires_at FROM {table} WHERE key = $1", key)
        assert await store.aget(namespace, "note") is not None
        assert [i.key for i in await store.asearch(namespace)] == ["note"]
        assert [i.key for i in await store.asearch(namespace, query="turn")] == ["note"]
        assert touched == []
        # Half its TTL gone: the next read refreshes it.
        await raw_conn.execute(
            f"UPDATE {table} SET expires_at = now() + interval '30 minutes' WHERE key = $1", key
        )
        assert await store.aget(namespace, "note") is not None
        assert touched == [[key]]
        refreshed = await expiry_of(raw_conn, config, key)
        assert refreshed >= written
    finally:
        store.close()


async def test_gets_refresh_items_of_the_default_ttl_as_they_read_them(
    make_config: Any, raw_conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a TTL config that refreshes on read, an item of the default TTL is refreshed by
    # the read itself; an item with a TTL of its own by a refresh after it, with its own TTL.
    config = make_config()
    store = PepperpyStore.create(
        config, HashingEmbedder(64), ttl={"default_ttl": 60, "refresh_on_read": True}
    )
    storage = store.storage
    touched = _refreshes_sent(storage, monkeypatch)
    table = f'"{config.schema_name}"."{config.table}"'
    namespace = ("users", "ana")
    try:
        await store.aput(namespace, "usual", {"text": "default TTL"})
        await store.aput(namespace, "longer", {"text": "a TTL of its own"}, ttl=120)
        await raw_conn.execute(f"UPDATE {table} SET expires_at = now() + interval '10 minutes'")
        found = await store.abatch([GetOp(namespace, "usual"), GetOp(namespace, "longer")])
        assert all(item is not None for item in found)
        assert touched == [[memory_key(namespace, "longer")]]
        left = await raw_conn.fetchval("SELECT now()")
        usual = await expiry_of(raw_conn, config, memory_key(namespace, "usual"))
        longer = await expiry_of(raw_conn, config, memory_key(namespace, "longer"))
        assert timedelta(minutes=59) < usual - left <= timedelta(minutes=60, seconds=5)
        assert timedelta(minutes=119) < longer - left <= timedelta(minutes=120, seconds=5)
        # A get that does not refresh leaves them.
        await raw_conn.execute(f"UPDATE {table} SET expires_at = now() + interval '10 minutes'")
        await raw_conn.execute(f'DELETE FROM "{config.schema_name}"."{config.table}_refreshes"')
        assert await store.aget(namespace, "usual", refresh_ttl=False) is not None
        usual = await expiry_of(raw_conn, config, memory_key(namespace, "usual"))
        assert usual - await raw_conn.fetchval("SELECT now()") < timedelta(minutes=11)
    finally:
        store.close()


def test_a_large_batch_of_gets_is_read_in_parts_of_whole_namespaces() -> None:
    from langgraph_pepperpy.store import GETS_PER_PART, READ_PARTS, _owner_parts

    few = [GetOp(("users", "a"), f"k{i}") for i in range(2 * GETS_PER_PART - 1)]
    assert _owner_parts(few) == [list(range(len(few)))]
    gets = [GetOp(("users", f"u{i % 40}"), f"k{i}") for i in range(20 * GETS_PER_PART)]
    parts = _owner_parts(gets)
    assert 1 < len(parts) <= READ_PARTS
    assert sorted(i for part in parts for i in part) == list(range(len(gets)))
    owners = [{gets[i].namespace for i in part} for part in parts]
    assert all(not a & b for n, a in enumerate(owners) for b in owners[n + 1 :])
    # One namespace is one part, however many gets it has.
    single = [GetOp(("users", "a"), f"k{i}") for i in range(4 * GETS_PER_PART)]
    assert len(_owner_parts(single)) == 1


async def test_a_burst_of_reads_refreshes_every_item_it_found_in_every_namespace(
    make_config: Any, raw_conn: asyncpg.Connection
) -> None:
    # Enough gets in one batch to be read in parts (of whole namespaces), each part
    # refreshing what it found: every item found is refreshed, items of other owners
    # under the same keys and items not read are not.
    config = make_config()
    store = PepperpyStore.create(config, HashingEmbedder(64), ttl={"refresh_on_read": True})
    table = f'"{config.schema_name}"."{config.table}"'
    # ("notes",) is a global namespace: its items belong to no owner.
    namespaces = [("users", f"u{i}") for i in range(30)] + [("notes",)]
    try:
        await store.abatch(
            [
                PutOp(namespace, f"k{i}", {"text": f"note {i}"}, ttl=60.0)
                for namespace in [*namespaces, ("users", "other")]
                for i in range(50)
            ]
        )
        await raw_conn.execute(f"UPDATE {table} SET expires_at = now() + interval '30 minutes'")
        gets = [GetOp(namespace, f"k{i}") for namespace in namespaces for i in range(45)]
        gets.append(GetOp(namespaces[0], "k0"))  # read twice in one batch
        found = await store.abatch(gets)
        assert all(item is not None for item in found)
        late = await raw_conn.fetchval("SELECT now() + interval '55 minutes'")
        for namespace in [*namespaces, ("users", "other")]:
            for i in (0, 44, 45):
                expiry = await expiry_of(raw_conn, config, memory_key(namespace, f"k{i}"))
                read = namespace != ("users", "other") and i < 45
                assert (expiry > late) == read, (namespace, i)
        # A search refreshes what it found too, a global namespace's included.
        await raw_conn.execute(f"UPDATE {table} SET expires_at = now() + interval '30 minutes'")
        assert len(await store.asearch(("notes",), limit=50)) == 50
        for i in (0, 49):
            assert await expiry_of(raw_conn, config, memory_key(("notes",), f"k{i}")) > late
        assert await expiry_of(raw_conn, config, memory_key(("users", "u0"), "k0")) < late
    finally:
        store.close()


async def test_the_ttl_sweeper_deletes_expired_items(make_config: Any, raw_conn: Any) -> None:
    # AsyncPostgresStore's sweeper calls: sweep_ttl, start_ttl_sweeper, stop_ttl_sweeper.
    config = make_config()
    table = f'"{config.schema_name}"."{config.table}"'
    store = PepperpyStore.create(
        config, HashingEmbedder(64), ttl={"default_ttl": 60, "sweep_interval_minutes": 0.005}
    )
    namespace = ("sessions", "s4")

    async def expire(key: str) -> None:
        await raw_conn.execute(
            f"UPDATE {table} SET expires_at = now() - interval '1 second' WHERE key = $1",
            memory_key(namespace, key),
        )

    async def stored(key: str) -> bool:
        found = await raw_conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE key = $1", memory_key(namespace, key)
        )
        return bool(found)

    try:
        await store.aput(namespace, "gone", {"text": "expired"})
        await store.aput(namespace, "kept", {"text": "alive"})
        await expire("gone")
        assert await store.sweep_ttl() == 1
        assert not await stored("gone") and await stored("kept")

        await store.aput(namespace, "later", {"text": "expires while the sweeper runs"})
        sweeper = await store.start_ttl_sweeper()
        assert await store.start_ttl_sweeper() is sweeper  # one sweeper at a time
        await expire("later")

        async def swept() -> bool:
            return not await stored("later")

        await until(swept, 60, "the sweeper deleting an expired item")
        assert await stored("kept")
        assert await store.stop_ttl_sweeper(timeout=30)
        assert sweeper.done() and sweeper.exception() is None
        assert await store.stop_ttl_sweeper()  # not running: nothing to stop
    finally:
        await store.aclose()


async def test_without_a_ttl_config_the_sweeper_has_nothing_to_do(make_config: Any) -> None:
    store = PepperpyStore.create(make_config(), HashingEmbedder(64))
    try:
        task = await store.start_ttl_sweeper()
        await task
        assert await store.stop_ttl_sweeper()
    finally:
        await store.aclose()


def test_code_written_for_postgres_store_opens_this_one(make_config: Any) -> None:
    # LangGraph's sync pattern: with PostgresStore.from_conn_string(url) as store: store.setup()
    base = make_config()
    with PepperpyStore.from_conn_string(
        base.dsn,
        pool_config={"min_size": 1, "max_size": 4},
        ttl={"default_ttl": 60},
        embedding=HashingEmbedder(64),
        schema=base.schema_name,
        table=base.table,
        distribution=base.distribution,
    ) as store:
        store.setup()
        assert store.storage.config.max_size == 4
        store.put(("users", "ana"), "drink", {"text": "oat milk latte"})
        item = store.get(("users", "ana"), "drink")
        assert item is not None and item.value == {"text": "oat milk latte"}
    assert not store.storage.started  # closed on leaving the block


async def test_code_written_for_async_postgres_store_opens_this_one(make_config: Any) -> None:
    # LangGraph's async pattern, with the embedder named in the index config.
    base = make_config()

    def embed(texts: list[str]) -> list[list[float]]:
        return [[1.0 + text.count(letter) for letter in "abcdefgh"] for text in texts]

    async with PepperpyStore.from_conn_string(
        base.dsn,
        index={"dims": 8, "embed": embed, "fields": ["text"]},
        schema=base.schema_name,
        table=base.table,
        distribution=base.distribution,
    ) as store:
        await store.setup()
        await store.aput(("users", "ana"), "drink", {"text": "oat milk latte"})
        found = await store.asearch(("users", "ana"), query="oat milk latte")
        assert [item.key for item in found] == ["drink"]
    assert not store.storage.started


def test_a_pool_setting_it_cannot_honour_is_refused(make_config: Any) -> None:
    with pytest.raises(MemoryConfigurationError, match="pool_config"):
        PepperpyStore.from_conn_string(make_config().dsn, pool_config={"max_idle": 30})


def test_the_ttl_sweeper_calls_work_from_synchronous_code(make_config: Any, pg_dsn: str) -> None:
    # LangGraph's PostgresStore has the sweeper calls as plain methods: sweep_ttl() returns
    # how many it deleted, start_ttl_sweeper() a concurrent Future, stop_ttl_sweeper() a bool.
    config = make_config()
    store = PepperpyStore.create(
        config, HashingEmbedder(64), ttl={"default_ttl": 60, "sweep_interval_minutes": 0.005}
    )
    namespace = ("sessions", "s5")
    try:
        assert store.sweep_ttl() == 0
        store.put(namespace, "brief", {"text": "gone soon"}, ttl=0.01)  # 0.6 s
        store.put(namespace, "kept", {"text": "alive"})
        sweeper = store.start_ttl_sweeper()
        assert isinstance(sweeper, concurrent.futures.Future)
        assert store.start_ttl_sweeper() is sweeper  # one sweeper at a time
        deadline = time.monotonic() + 60

        table = f'"{config.schema_name}"."{config.table}"'

        async def rows(key: str) -> int:  # expired or not: what the sweeper deletes
            connection = await asyncpg.connect(pg_dsn)
            try:
                sql = f"SELECT count(*) FROM {table} WHERE key = $1"
                return int(await connection.fetchval(sql, memory_key(namespace, key)))
            finally:
                await connection.close()

        def stored(key: str) -> bool:
            return asyncio.run(rows(key)) > 0

        while stored("brief"):
            assert time.monotonic() < deadline, "the sweeper did not delete the expired item"
            time.sleep(0.1)
        assert stored("kept")
        assert store.stop_ttl_sweeper(timeout=30) is True
        assert sweeper.done() and sweeper.exception() is None
        assert store.stop_ttl_sweeper() is True  # not running: nothing to stop
    finally:
        store.close()


@pytest.mark.parametrize(
    ("ttl", "fillfactor", "expected"),
    [
        # refresh_on_read is LangGraph's default; refreshes are kept beside the rows, which
        # need no room for them: pages are filled (None: PostgreSQL's own 100). On a
        # cluster, where they rewrite rows, 50, and the table's 70 otherwise.
        ({"default_ttl": 5}, None, None),
        ({"default_ttl": 5, "refresh_on_read": False}, None, None),
        (None, None, None),
        ({"default_ttl": 5}, 80, "fillfactor=80"),  # a configuration's own choice stands
    ],
)
async def test_a_store_that_refreshes_on_read_fills_its_pages_as_configured(
    make_config: Any, raw_conn: Any, ttl: Any, fillfactor: int | None, expected: str | None
) -> None:
    config = make_config(fillfactor=fillfactor)
    if config.distribution is not None and expected is None:
        # On a cluster a refresh rewrites the row: pages keep room for it.
        refreshing = ttl is not None and ttl.get("refresh_on_read", True)
        expected = "fillfactor=50" if refreshing else "fillfactor=70"
    store = PepperpyStore.create(config, HashingEmbedder(16), ttl=ttl)
    try:
        await store.aput(("users", "ana"), "k", {"text": "tea"})
        options = await raw_conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = $1::regclass",
            f'"{config.schema_name}"."{config.table}"',
        )
        set_here = [option for option in options or [] if option.startswith("fillfactor=")]
        assert set_here == ([] if expected is None else [expected])
    finally:
        await store.aclose()


def test_closing_a_store_ends_its_sweeper_first(make_config: Any) -> None:
    store = PepperpyStore.create(make_config(), HashingEmbedder(16), ttl={"default_ttl": 60})
    sweeper = store.start_ttl_sweeper()
    assert not sweeper.done()
    store.close()
    assert sweeper.done() and sweeper.exception() is None

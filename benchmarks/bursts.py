"""``python -m benchmarks.bursts``: many concurrent calls at once, ours against LangGraph's
``AsyncPostgresStore`` in the same run, on the same server, with the same embedder.

An agent host serving many conversations issues store calls concurrently. Each row times one
burst: N calls started together with ``asyncio.gather`` and awaited, on one store object with
its default pool (10 connections) and default ``pool_timeout``:

* ``burst_put``: N concurrent ``aput`` of distinct items (every value embedded);
* ``burst_get``: N concurrent ``aget`` of those items;
* ``burst_search``: N/10 concurrent ``asearch`` with a query;
* ``burst_core_store``: N concurrent core ``PostgresStorage.store()`` calls (ours only);
* ``burst_get_ttl``: N concurrent ``aget`` of N distinct items on stores configured with
  LangGraph's TTL (``refresh_on_read``), right after the items were put;
* ``burst_get_ttl_aged``: the same reads of items whose expiry was moved half a TTL back
  first (on both stores, by SQL, then ``VACUUM``): every read must write its item's new
  expiry, as it must for items written more than ``ttl_refresh_slack`` of their TTL ago;
* ``burst_get_ttl_long``, ``burst_get_ttl_aged_long``: both again with items whose text runs
  to about 400 characters (a row too wide to share its page with its next version, when a
  refresh rewrote the row);
* ``burst_mixed_ttl``: N concurrent calls on 20 keys of one namespace — puts, deletes, gets
  and searches that refresh TTLs — on stores configured as LangGraph deployments are
  (``ttl={"default_ttl": 60, "refresh_on_read": True}``): LangGraph's burst tests' load.
  Run eleven times per store (the median counts); the row keeps ``failures`` (calls that
  raised, over all runs), whose target is 0.

Both stores embed with the same cheap hashing embedder, so that the rows measure the stores,
not the model. The JSON has a ``ratios`` list: our seconds over theirs per burst (target ≤ 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from pepperpy_pg_memory import HashingEmbedder, MemoryScope, PostgresConfig, PostgresStorage
from pepperpy_pg_memory.runner import BackgroundStorage

from .anchors import langgraph_store
from .measure import Measurement, cpu_count, rate_row, save_json
from .run import _log, _prepare_database, _start_server, _versions

OURS = "pepperpy-pg-memory PepperpyStore"
CORE = "pepperpy-pg-memory PostgresStorage"
LANGGRAPH = "langgraph AsyncPostgresStore"
DIMENSION = 384


def _texts(count: int) -> list[str]:
    return [
        f"memory {i}: user {i % 97} prefers tea number {i * 7919 % 10007}" for i in range(count)
    ]


_LONGER = (
    " and she also said that the meeting about the quarterly budget moved to Thursday "
    "afternoon because the room on the third floor was booked for the design review"
) * 4


def _long_texts(count: int) -> list[str]:
    """:func:`_texts` of about 400 characters each."""
    return [text + _LONGER for text in _texts(count)]


async def _burst(calls: list[Callable[[], Awaitable[Any]]]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = await asyncio.gather(*(call() for call in calls))
    return time.perf_counter() - started, results


async def _store_bursts(store: Any, system: str, count: int) -> list[Measurement]:
    """The three LangGraph bursts on ``store`` (ours or theirs: the same BaseStore calls)."""
    texts = _texts(count)
    namespaces = [("users", f"u{i % 50}") for i in range(count)]
    rows = []
    seconds, _ = await _burst(
        [lambda i=i: store.aput(namespaces[i], f"k{i}", {"text": texts[i]}) for i in range(count)]
    )
    rows.append(rate_row("burst_put", system, "storage", count, count, seconds))
    seconds, found = await _burst(
        [lambda i=i: store.aget(namespaces[i], f"k{i}") for i in range(count)]
    )
    missing = sum(item is None for item in found)
    if missing:
        raise AssertionError(f"{system}: {missing} of {count} items not found after the burst")
    rows.append(rate_row("burst_get", system, "storage", count, count, seconds))
    searches = max(1, count // 10)
    seconds, hits = await _burst(
        [
            lambda i=i: store.asearch(("users", f"u{i % 50}"), query=texts[i], limit=5)
            for i in range(searches)
        ]
    )
    # Kept in the row, not raised: a filtered HNSW scan that stops early returns nothing for
    # some owners (a known fault of stores without iterative scans), which is a finding.
    empty = sum(not hit for hit in hits)
    rows.append(
        rate_row("burst_search", system, "storage", count, searches, seconds, empty_results=empty)
    )
    return rows


GOALS = {
    "burst_mixed_ttl": 1.0,
    "burst_get_ttl": 1.0,
    "burst_get_ttl_aged": 1.0,
    "burst_get_ttl_long": 1.0,
    "burst_get_ttl_aged_long": 1.0,
}
"""Per burst, the most our seconds may be of theirs (issue 22: LangGraph's burst load at least
as fast as theirs; the others, 2)."""

MIXED_KEYS = 20
TTL_CONFIG: Any = {"default_ttl": 60, "refresh_on_read": True}


MIXED_REPEATS = 11
"""A mixed burst lasts about a fifth of a second, and whether a full garbage-collector pass
falls inside it moves it by a third (both stores: 0.16 against 0.25 s): each store runs it
this many times, and the median counts (with five, the median of either store moved 10%
between runs of the same code)."""


async def _age(url: str, table: str) -> None:
    """Moves every expiry of ``table`` half a TTL back, then vacuums it (as autovacuum would
    have by the time the items are read again): each later refresh must write a new expiry."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"UPDATE {table} SET expires_at = expires_at - interval '30 minutes' "
            "WHERE expires_at IS NOT NULL"
        )
        await connection.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await connection.close()


async def _ttl_gets(
    store: Any, system: str, count: int, age: Callable[[], Awaitable[None]], long: bool = False
) -> list[Measurement]:
    """``count`` distinct items put, then all read at once, each read refreshing its TTL (a
    deployment's TTL config): what an agent host's reads cost when every read keeps its
    item alive. Read right after the put, then again once ``age`` made every item due.
    ``long``: items of :func:`_long_texts` (rows named ``…_long``)."""
    texts = _long_texts(count) if long else _texts(count)
    suffix = "_long" if long else ""
    namespaces = [("users", f"t{i % 50}") for i in range(count)]
    await _burst(
        [lambda i=i: store.aput(namespaces[i], f"k{i}", {"text": texts[i]}) for i in range(count)]
    )

    async def read_all(name: str) -> Measurement:
        seconds, found = await _burst(
            [lambda i=i: store.aget(namespaces[i], f"k{i}") for i in range(count)]
        )
        missing = sum(item is None for item in found)
        if missing:
            raise AssertionError(f"{system}: {missing} of {count} items not found in {name}")
        return rate_row(name, system, "storage", count, count, seconds)

    fresh = await read_all(f"burst_get_ttl{suffix}")
    await age()
    return [fresh, await read_all(f"burst_get_ttl_aged{suffix}")]


async def _mixed_bursts(store: Any, system: str, count: int) -> Measurement:
    """:func:`_mixed_burst` :data:`MIXED_REPEATS` times; the median run, with every run's
    failures."""
    runs = [await _mixed_burst(store, system, count) for _ in range(MIXED_REPEATS)]
    runs.sort(key=lambda row: row.throughput)
    median = runs[len(runs) // 2]
    median.extra["failures"] = sum(row.extra["failures"] for row in runs)
    median.extra["failure_kinds"] = sorted({k for row in runs for k in row.extra["failure_kinds"]})
    median.extra["runs_seconds"] = [round(row.count / row.throughput, 4) for row in runs]
    return median


async def _mixed_burst(store: Any, system: str, count: int) -> Measurement:
    """Puts, deletes, gets and searches of a few keys at once, refreshing TTLs on reads."""
    namespace = ("users", "ana")

    def call(i: int) -> Awaitable[Any]:
        key = f"k{i % MIXED_KEYS}"
        kind = i % 4
        if kind == 0:
            return store.aput(namespace, key, {"text": f"note {i} about tea"})
        if kind == 1:
            return store.aget(namespace, key, refresh_ttl=True)
        if kind == 2:
            return store.adelete(namespace, key)
        return store.asearch(namespace, query="tea", limit=5, refresh_ttl=True)

    started = time.perf_counter()
    results = await asyncio.gather(*(call(i) for i in range(count)), return_exceptions=True)
    seconds = time.perf_counter() - started
    failed = [r for r in results if isinstance(r, BaseException)]
    kinds = sorted({type(r).__name__ for r in failed})
    return rate_row(
        "burst_mixed_ttl", system, "storage", count, count, seconds,
        failures=len(failed), failure_kinds=kinds,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _our_store(url: str, table: str, ttl: Any = None, **settings: Any) -> AsyncIterator[Any]:
    """A PepperpyStore on its own cleared ``table`` of ``url`` (``settings``: PostgresConfig
    fields), cleared again and closed after."""
    from langgraph_pepperpy import PepperpyStore

    config = PostgresConfig(dsn=url, table=table, **settings)
    handle = await BackgroundStorage.acreate(config, HashingEmbedder(DIMENSION))
    store = PepperpyStore(handle, ttl=ttl)
    try:
        await handle.acall(lambda s: s.clear())
        yield store
    finally:
        await handle.acall(lambda s: s.clear())
        await store.aclose()


async def _ours_mixed(url: str, count: int) -> list[Measurement]:
    async with _our_store(url, "burst_mixed", TTL_CONFIG) as store:
        mixed = await _mixed_bursts(store, OURS, count)
        return [mixed, *await _ttl_gets(store, OURS, count, lambda: _age(url, "burst_mixed"))]


async def _ours_long(url: str, count: int) -> list[Measurement]:
    """The TTL gets of items of about 400 characters."""
    async with _our_store(url, "burst_long", TTL_CONFIG) as store:
        return await _ttl_gets(store, OURS, count, lambda: _age(url, "burst_long"), long=True)


async def _langgraph_mixed(url: str, count: int) -> list[Measurement]:
    async with _langgraph_store(url, TTL_CONFIG) as store:
        mixed = await _mixed_bursts(store, LANGGRAPH, count)
        return [mixed, *await _ttl_gets(store, LANGGRAPH, count, lambda: _age(url, "store"))]


async def _langgraph_long(url: str, count: int) -> list[Measurement]:
    async with _langgraph_store(url, TTL_CONFIG) as store:
        return await _ttl_gets(store, LANGGRAPH, count, lambda: _age(url, "store"), long=True)


@contextlib.asynccontextmanager
async def _langgraph_store(url: str, ttl: Any = None) -> AsyncIterator[Any]:
    """LangGraph's store (see anchors.langgraph_store) embedding as ours does."""
    embedder = HashingEmbedder(DIMENSION)

    async def embed(texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in await embedder.embed_documents(texts)]

    async with langgraph_store(url, DIMENSION, embed, ttl=ttl) as store:
        yield store


async def _ours(url: str, count: int) -> list[Measurement]:
    async with _our_store(url, "burst_memories") as store:
        return await _store_bursts(store, OURS, count)


async def _core(url: str, count: int) -> list[Measurement]:
    config = PostgresConfig(dsn=url, table="burst_core")
    async with PostgresStorage[str, Any](config, HashingEmbedder(DIMENSION)) as storage:
        await storage.clear()
        texts = _texts(count)
        seconds, _ = await _burst(
            [
                lambda i=i: storage.store(
                    f"k{i}", texts[i], scope=MemoryScope.USER, scope_id=f"u{i % 50}"
                )
                for i in range(count)
            ]
        )
        stored = await storage.count()
        if stored != count:
            raise AssertionError(f"core burst: {stored} of {count} memories stored")
        await storage.clear()
    return [rate_row("burst_core_store", CORE, "storage", count, count, seconds)]


async def _langgraph(url: str, count: int) -> list[Measurement]:
    async with _langgraph_store(url) as store:
        return await _store_bursts(store, LANGGRAPH, count)


def _ratios(rows: list[Measurement]) -> list[dict[str, Any]]:
    seconds = {(r.name, r.system): r.count / r.throughput for r in rows}
    out = []
    for name in dict.fromkeys(("burst_put", "burst_get", "burst_search", *GOALS)):
        if (name, OURS) in seconds and (name, LANGGRAPH) in seconds:
            ratio = seconds[(name, OURS)] / seconds[(name, LANGGRAPH)]
            goal = GOALS.get(name, 2.0)
            out.append(
                {
                    "name": name,
                    "ratio": ratio,
                    "meaning": "our seconds over AsyncPostgresStore's",
                    "goal": goal,
                    "met": ratio <= goal,
                }
            )
    return out


async def _run(count: int, anchors: bool) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="pepperpy-bursts-"))
    server = _start_server(folder)
    try:
        database = await _prepare_database(server)
        url = server.get_uri("bench")
        rows: list[Measurement] = []
        _log(f"core: {count} concurrent store()")
        rows += await _core(url, count)
        _log(f"{OURS}: bursts of {count}")
        rows += await _ours(url, count)
        rows += await _ours_mixed(url, count)
        rows += await _ours_long(url, count)
        if anchors:
            _log(f"{LANGGRAPH}: bursts of {count}")
            rows += await _langgraph(url, count)
            rows += await _langgraph_mixed(url, count)
            rows += await _langgraph_long(url, count)
        # The anchor again, then ours again: the host's speed drifts within a run.
        if anchors:
            _log("second round")
            rows += await _ours(url, count)
            rows += await _ours_mixed(url, count)
            rows += await _ours_long(url, count)
            rows += await _langgraph(url, count)
            rows += await _langgraph_mixed(url, count)
            rows += await _langgraph_long(url, count)
    finally:
        server.cleanup()
    environment = {"cpu_count": cpu_count(), "database": database}
    best: dict[tuple[str, str], Measurement] = {}
    for row in rows:
        key = (row.name, row.system)
        if key not in best or row.throughput > best[key].throughput:
            best[key] = row
    chosen = list(best.values())
    return {
        "versions": _versions(),
        "environment": environment,
        "results": [row.as_dict(environment) for row in chosen],
        "ratios": _ratios(chosen),
    }


async def _profile(count: int, fillfactor: int | None) -> list[str]:
    """Where an aged TTL-get burst of ours goes: the store's reads and its refreshes timed
    apart, and how many of the refreshed rows PostgreSQL rewrote in place (heap-only)."""
    from langgraph_pepperpy import PepperpyStore

    spent: dict[str, float] = {}
    originals = {name: getattr(PepperpyStore, name) for name in ("_get", "_refresh")}

    def timed(name: str) -> Any:
        original = originals[name]

        async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(self, *args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

        return call

    lines = []
    table = "burst_profiled"
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-bursts-profile-")))
    try:
        await _prepare_database(server)
        url = server.get_uri("bench")
        for name in originals:
            setattr(PepperpyStore, name, timed(name))
        connection = await asyncpg.connect(url)
        try:
            updates = (
                "SELECT n_tup_upd, n_tup_hot_upd, n_tup_ins FROM pg_stat_user_tables "
                "WHERE relname = $1"
            )
            refreshes = f"{table}_refreshes"
            # (Closed at the block's end: backends report their counts as they end, an idle
            # one only now and then. Its clearing deletes, which are not counted here.)
            async with _our_store(url, table, TTL_CONFIG, fillfactor=fillfactor) as store:
                before = await connection.fetchrow(updates, table)
                kept_before = await connection.fetchrow(updates, refreshes)
                rows = await _ttl_gets(store, OURS, count, lambda: _age(url, table))
            # The aging rewrites every item once; the aged reads write a refresh of each.
            deadline = time.monotonic() + 15
            while True:
                after = await connection.fetchrow(updates, table)
                kept = await connection.fetchrow(updates, refreshes)
                written = sum(kept[c] - kept_before[c] for c in ("n_tup_ins", "n_tup_upd"))
                if after["n_tup_upd"] - before["n_tup_upd"] >= count and written >= count:
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            await connection.close()
        for row in rows:
            lines.append(f"{row.name:18} {row.count / row.throughput:6.2f} s")
        lines.append(f"reads (_get)      {spent.get('_get', 0.0):6.2f} s, both bursts")
        lines.append(f"refreshes         {spent.get('_refresh', 0.0):6.2f} s, both bursts")
        updated = after["n_tup_upd"] - before["n_tup_upd"]
        in_place = after["n_tup_hot_upd"] - before["n_tup_hot_upd"]
        lines.append(f"rows updated      {updated} ({in_place} in place), the aging's included")
        lines.append(f"kept              {written} refreshes beside the memories")
    finally:
        for name, original in originals.items():
            setattr(PepperpyStore, name, original)
        server.cleanup()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bursts", description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="calls per burst")
    parser.add_argument("--no-anchors", action="store_true", help="measure ours only")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: ours' TTL gets only, reads and refreshes timed apart",
    )
    parser.add_argument(
        "--fillfactor", type=int, help="with --profile: the table's fillfactor (default 70)"
    )
    args = parser.parse_args(argv)
    if args.profile:
        for line in asyncio.run(_profile(args.count, args.fillfactor)):
            print(line)
        return 0
    report = asyncio.run(_run(args.count, not args.no_anchors))
    for row in report["results"]:
        seconds = row["count"] / row["throughput"]
        empty = row["extra"].get("empty_results")
        note = f"  ({empty} found nothing)" if empty else ""
        if "failures" in row["extra"]:
            note += f"  ({row['extra']['failures']} failed {row['extra']['failure_kinds']})"
        print(f"{row['name']:18} {row['system']:36} {row['count']:6d} calls {seconds:7.2f} s{note}")
    for ratio in report["ratios"]:
        print(f"{ratio['name']:18} ours/theirs {ratio['ratio']:.2f} (goal <= {ratio['goal']:g})")
    save_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.floor``: our semantic search against the raw pgvector floor.

One table of N memories (hashing vectors, so no model is needed), the same query vectors for
all, alternating rounds in one process: ``PostgresStorage.search`` with a precomputed
embedding (what a caller with its own vectors runs) against the bare prepared
``SELECT key … ORDER BY embedding <=> $1 LIMIT 10`` on one of the store's pool connections
(same table, same ``hnsw.ef_search``). Prints p50 per round and the ratio (target ≤ 1.4).

Two more rows split the gap: ``sql`` runs the store's own search statement, prepared, on the
same connection as the floor (what the server and row decoding cost), and ``server`` is
that statement's and the floor's planning and execution time by ``EXPLAIN ANALYZE``. What
``ours`` adds to ``sql`` is the Python path: the query model, the pool, building results.

The **payload floor** (issue 32) is the hand-written statement that returns what a memory
search must return — key, value, metadata, moments, score — with the liveness filter (not
expired, valid now), for the whole tenant and for one owner; ours is set beside it (goal
≤ 1.3×, and ≤ 1.6× the bare-key floor). **Writes**: ``store()`` of a new memory with its
vector given, against a raw prepared ``INSERT … ON CONFLICT DO UPDATE`` into a copy of the
table with all its indexes and no triggers (goal ≤ 1.3×). **End to end** (unless
``--no-model``): a semantic search from the query's text on a store with the default model
(the memories' vectors given, so that only queries meet the model), against the model alone
embedding a query of the same shape plus the payload floor for that query's vector, the
three in turn (goal ≤ 1.2×). Every query text is new to the store, so no search is answered
from its cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryIndex,
    MemoryQuery,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.embeddings import Embedder, default_embedder
from pepperpy_pg_memory.search_sql import Page

from .measure import save_json
from .run import _start_server


def _memories(size: int) -> list[dict[str, Any]]:
    """The table's memories."""
    return [
        {
            "key": f"k{i}",
            "value": {"content": f"note {i} about topic {i % 37} and {i % 101}"},
            "scope": "user",
            "scope_id": f"u{i % 20}",
            "metadata": {"topic": i % 37},
        }
        for i in range(size)
    ]


async def _measure(size: int, queries: int, rounds: int, model: bool) -> dict[str, Any]:
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-floor-")))
    try:
        config = PostgresConfig(dsn=server.get_uri("postgres"), table="floor")
        async with PostgresStorage[str, Any](config, HashingEmbedder(384)) as store:
            await store.store_many(_memories(size))
            vectors = [
                (await store.query_vector(f"topic {i % 37} thing {i % 89}")).tolist()
                for i in range(queries)
            ]
            layout = store.layout
            sql = (
                f"SELECT key FROM {layout.qualified_table} "
                f"ORDER BY embedding <=> $1::{layout.vector_column_type} LIMIT 10"
            )
            # The store's own statement for these searches (no passages exist).
            restriction = store._ready.restriction()
            ours_sql = store._ready.searches.semantic_search(
                vectors[0], restriction, Page(10), passages=False
            )
            ours: list[float] = []
            floor: list[float] = []
            sql_only: list[float] = []
            for vector in vectors[:20]:  # warm up both
                await store.search(MemoryQuery(embedding=vector, limit=10))
            for _ in range(rounds):
                samples = []
                for vector in vectors:
                    started = time.perf_counter()
                    await store.search(MemoryQuery(embedding=vector, limit=10))
                    samples.append((time.perf_counter() - started) * 1000)
                ours.append(statistics.median(samples))
                async with store.database.pool.acquire() as conn:
                    floor.append(await _p50(await conn.prepare(sql), vectors, []))
                    statement = await conn.prepare(ours_sql.sql)
                    sql_only.append(await _p50(statement, vectors, ours_sql.args[1:]))
            payload = await _payload_floor(store, vectors, rounds)
            writes = await _write_floor(store, vectors, rounds)
            async with store.database.pool.acquire() as conn:
                server_ms = {
                    "floor": await _explained(conn, sql, [vectors[1]]),
                    "sql": await _explained(conn, ours_sql.sql, [vectors[1], *ours_sql.args[1:]]),
                }
        end_to_end = None
        if model:
            end_to_end = await _end_to_end(server.get_uri("postgres"), size, queries, rounds)
    finally:
        server.cleanup()
    return {
        "size": size,
        "queries": queries,
        "ours_p50_ms": ours,
        "floor_p50_ms": floor,
        "sql_p50_ms": sql_only,
        "server_median_ms": server_ms,
        "ratio": statistics.median(ours) / statistics.median(floor),
        "sql_ratio": statistics.median(sql_only) / statistics.median(floor),
        "goal": 1.4,
        "payload": payload,
        "writes": writes,
        "end_to_end": end_to_end,
    }


def _payload_sql(store: PostgresStorage[str, Any], owner: bool) -> str:
    """What a memory search must return, live rows only, nearest first; $2 the tenant, and
    with ``owner`` $3 and $4 the owner's scope and id."""
    layout = store.layout
    vector = f"$1::{layout.vector_column_type}"
    where = (
        "tenant = $2 AND (expires_at IS NULL OR expires_at > now()) "
        "AND (valid_to IS NULL OR valid_to > now())"
    )
    if owner:
        where += " AND scope = $3 AND scope_id = $4"
    return (
        f"SELECT key, value, metadata, created_at, updated_at, expires_at, "
        f"1 - (embedding <=> {vector}) AS score FROM {layout.qualified_table} "
        f"WHERE {where} ORDER BY embedding <=> {vector} LIMIT 10"
    )


async def _payload_floor(
    store: PostgresStorage[str, Any], vectors: list[list[float]], rounds: int
) -> dict[str, Any]:
    """Ours against the payload floor, for the whole tenant and for one owner (u3)."""
    tenant = store.config.tenant or ""
    cases = {
        "tenant": ({}, [tenant], False),
        "owner": ({"scope": "user", "scope_id": "u3"}, [tenant, "user", "u3"], True),
    }
    p50: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, (owner, args, scoped) in cases.items():
            samples = []
            for vector in vectors:
                started = time.perf_counter()
                await store.search(MemoryQuery(embedding=vector, limit=10, **owner))
                samples.append((time.perf_counter() - started) * 1000)
            p50.setdefault(f"ours_{name}", []).append(statistics.median(samples))
            async with store.database.pool.acquire() as conn:
                statement = await conn.prepare(_payload_sql(store, scoped))
                p50.setdefault(f"floor_{name}", []).append(await _p50(statement, vectors, args))
    # A floor that returns fewer than ten rows (an HNSW scan whose candidates the owner
    # filter thins out) is cheaper for being wrong: say how many it returns.
    floor_rows = {}
    async with store.database.pool.acquire() as conn:
        for name, (_, args, scoped) in cases.items():
            statement = await conn.prepare(_payload_sql(store, scoped))
            counts = [len(await statement.fetch(vector, *args)) for vector in vectors[:20]]
            floor_rows[name] = statistics.mean(counts)
    medians = {name: statistics.median(values) for name, values in p50.items()}
    return {
        "p50_ms_per_round": p50,
        "floor_rows_per_query": floor_rows,
        "ratio_to_payload_floor": {
            name: medians[f"ours_{name}"] / medians[f"floor_{name}"] for name in cases
        },
        "goal": 1.3,
    }


def _questions(count: int, round_number: int, kind: str) -> list[str]:
    """``count`` query texts, different in every round and of each ``kind`` (the same shape
    and length), so that no text is asked twice."""
    return [
        f"what was the {kind} note {i} of round {round_number} about topic {i % 37} and {i % 89}"
        for i in range(count)
    ]


async def _end_to_end(dsn: str, size: int, queries: int, rounds: int) -> dict[str, Any]:
    """Semantic search from text on a store with the default model, against the model alone
    plus the payload floor (tenant-wide), the three in turn, query by query."""
    model: Embedder = default_embedder()
    items = _memories(size)
    # The memories' vectors are given (hashing ones): the model embeds only the queries.
    hashing = HashingEmbedder(model.dimension)
    given = await hashing.embed_documents([item["value"]["content"] for item in items])
    for item, vector in zip(items, given, strict=True):
        item["embedding"] = vector
    config = PostgresConfig(dsn=dsn, table="floor_model")
    p50: dict[str, list[float]] = {"ours": [], "model": [], "floor": []}
    async with PostgresStorage[str, Any](config, model) as store:
        await store.store_many(items)
        tenant = store.config.tenant or ""
        for warm_up in _questions(10, -1, "warm"):
            await store.search(MemoryQuery(query=warm_up, index_type=MemoryIndex.SEMANTIC))
        for number in range(rounds):
            # One query of each kind in turn: the model runs as it does inside a search,
            # between statements (back to back, its thread pool stays awake and it is faster
            # than a search can ever see it).
            samples: dict[str, list[float]] = {name: [] for name in p50}
            asked = _questions(queries, number, "asked")
            async with store.database.pool.acquire() as conn:
                floor = await conn.prepare(_payload_sql(store, owner=False))
                for text, other in zip(_questions(queries, number, "model"), asked, strict=True):
                    started = time.perf_counter()
                    vector = await model.embed_query(text)
                    samples["model"].append((time.perf_counter() - started) * 1000)
                    as_list = [float(x) for x in vector]
                    started = time.perf_counter()
                    await floor.fetch(as_list, tenant)
                    samples["floor"].append((time.perf_counter() - started) * 1000)
                    query = MemoryQuery(query=other, index_type=MemoryIndex.SEMANTIC, limit=10)
                    started = time.perf_counter()
                    await store.search(query)
                    samples["ours"].append((time.perf_counter() - started) * 1000)
            for name, values in samples.items():
                p50[name].append(statistics.median(values))
    medians = {name: statistics.median(values) for name, values in p50.items()}
    return {
        "p50_ms_per_round": p50,
        "ratio": medians["ours"] / (medians["model"] + medians["floor"]),
        "meaning": "our search from text, p50, over the model's query p50 + the payload floor's",
        "goal": 1.2,
    }


async def _write_floor(
    store: PostgresStorage[str, Any], vectors: list[list[float]], rounds: int
) -> dict[str, Any]:
    """store() of new memories against a raw prepared upsert into a trigger-less copy of
    the table (same indexes), rounds alternating."""
    layout = store.layout
    copy = f"{layout.schema}.floor_copy"
    upsert = (
        f"INSERT INTO {copy} (tenant, scope, scope_id, key, value, content, content_hash, "
        "memory_type, indices, metadata, embedding) VALUES ($1, 'user', $2, $3, "
        "$4::text::jsonb, $5, sha256(convert_to($5, 'UTF8')), 'long_term', "
        "ARRAY['semantic', 'contextual'], '{}'::jsonb, "
        f"$6::{layout.vector_column_type}) ON CONFLICT (tenant, scope, scope_id, key) DO UPDATE "
        "SET value = EXCLUDED.value, content = EXCLUDED.content, "
        "content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding, "
        "updated_at = now()"
    )
    tenant = store.config.tenant or ""
    async with store.database.pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {copy} (LIKE {layout.qualified_table} INCLUDING ALL)")
        columns = await conn.fetchval(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
            "AND attgenerated = ''",
            layout.regclass,
        )
        await conn.execute(
            f"INSERT INTO {copy} ({columns}) SELECT {columns} FROM {layout.qualified_table}"
        )
    p50: dict[str, list[float]] = {"ours": [], "floor": []}
    for number in range(rounds):
        writes = [
            (f"w{number}-{i}", f"new note {i} of round {number}", vector)
            for i, vector in enumerate(vectors)
        ]
        samples = []
        for key, text, vector in writes:
            started = time.perf_counter()
            await store.store(
                key, text, scope="user", scope_id=f"u{len(key) % 20}", embedding=vector
            )
            samples.append((time.perf_counter() - started) * 1000)
        p50["ours"].append(statistics.median(samples))
        samples = []
        async with store.database.pool.acquire() as conn:
            statement = await conn.prepare(upsert)
            for key, text, vector in writes:
                started = time.perf_counter()
                await statement.fetch(
                    tenant, f"u{len(key) % 20}", key, json.dumps(text), text, vector
                )
                samples.append((time.perf_counter() - started) * 1000)
        p50["floor"].append(statistics.median(samples))
    return {
        "p50_ms_per_round": p50,
        "ratio": statistics.median(p50["ours"]) / statistics.median(p50["floor"]),
        "goal": 1.3,
    }


async def _p50(statement: Any, vectors: list[list[float]], rest: list[Any]) -> float:
    """Median ms of ``statement`` run for each vector (its first argument) and ``rest``."""
    samples = []
    for vector in vectors:
        started = time.perf_counter()
        await statement.fetch(vector, *rest)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _explained(conn: Any, sql: str, args: list[Any], runs: int = 30) -> dict[str, float]:
    """Median planning and execution time of ``sql`` by ``EXPLAIN ANALYZE``."""
    planning, execution = [], []
    for _ in range(runs):
        plan = json.loads(
            await conn.fetchval(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {sql}", *args)
        )
        planning.append(plan[0]["Planning Time"])
        execution.append(plan[0]["Execution Time"])
    return {"planning": statistics.median(planning), "execution": statistics.median(execution)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument(
        "--no-model", action="store_true", help="leave out the end-to-end row (no model)"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(_measure(args.size, args.queries, args.rounds, not args.no_model))
    print(f"ours p50 ms per round: {[round(x, 3) for x in result['ours_p50_ms']]}")
    print(f"floor p50 ms per round: {[round(x, 3) for x in result['floor_p50_ms']]}")
    print(f"our statement alone, p50 ms per round: {[round(x, 3) for x in result['sql_p50_ms']]}")
    for name, times in result["server_median_ms"].items():
        print(
            f"{name} on the server: planning {times['planning']:.3f} ms, "
            f"execution {times['execution']:.3f} ms"
        )
    print(
        f"ratio (medians): {result['ratio']:.2f} (goal <= 1.4); "
        f"our statement alone {result['sql_ratio']:.2f}"
    )
    for name, ratio in result["payload"]["ratio_to_payload_floor"].items():
        print(f"against the payload floor, {name}: {ratio:.2f} (goal <= 1.3)")
    print(f"store() against a raw prepared upsert: {result['writes']['ratio']:.2f} (goal <= 1.3)")
    end_to_end = result["end_to_end"]
    if end_to_end is not None:
        print(
            "search from text against the model alone + the payload floor: "
            f"{end_to_end['ratio']:.2f} (goal <= 1.2)"
        )
    save_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

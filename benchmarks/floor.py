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

from pepperpy_pg_memory import HashingEmbedder, MemoryQuery, PostgresConfig, PostgresStorage
from pepperpy_pg_memory.search_sql import Page

from .measure import save_json
from .run import _start_server


async def _measure(size: int, queries: int, rounds: int) -> dict[str, Any]:
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-floor-")))
    try:
        config = PostgresConfig(dsn=server.get_uri("postgres"), table="floor")
        async with PostgresStorage[str, Any](config, HashingEmbedder(384)) as store:
            await store.store_many(
                {
                    "key": f"k{i}",
                    "value": {"content": f"note {i} about topic {i % 37} and {i % 101}"},
                    "scope": "user",
                    "scope_id": f"u{i % 20}",
                    "metadata": {"topic": i % 37},
                }
                for i in range(size)
            )
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
            restriction = store._restriction()
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
            async with store.database.pool.acquire() as conn:
                server_ms = {
                    "floor": await _explained(conn, sql, [vectors[1]]),
                    "sql": await _explained(conn, ours_sql.sql, [vectors[1], *ours_sql.args[1:]]),
                }
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
    args = parser.parse_args(argv)
    result = asyncio.run(_measure(args.size, args.queries, args.rounds))
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
    save_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

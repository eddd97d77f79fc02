"""``python -m benchmarks.floor``: our semantic search against the raw pgvector floor.

One table of N memories (hashing vectors, so no model is needed), the same query vectors for
both, alternating rounds in one process: ``PostgresStorage.search`` with a precomputed
embedding (what a caller with its own vectors runs) against the bare prepared
``SELECT key … ORDER BY embedding <=> $1 LIMIT 10`` on one of the store's pool connections
(same table, same ``hnsw.ef_search``). Prints p50 per round and the ratio (target ≤ 1.4).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pepperpy_pg_memory import HashingEmbedder, MemoryQuery, PostgresConfig, PostgresStorage

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
            ours: list[float] = []
            floor: list[float] = []
            for vector in vectors[:20]:  # warm up both
                await store.search(MemoryQuery(embedding=vector, limit=10))
            for _ in range(rounds):
                samples = []
                for vector in vectors:
                    started = time.perf_counter()
                    await store.search(MemoryQuery(embedding=vector, limit=10))
                    samples.append((time.perf_counter() - started) * 1000)
                ours.append(statistics.median(samples))
                samples = []
                async with store.database.pool.acquire() as conn:
                    statement = await conn.prepare(sql)
                    for vector in vectors:
                        started = time.perf_counter()
                        await statement.fetch(vector)
                        samples.append((time.perf_counter() - started) * 1000)
                floor.append(statistics.median(samples))
    finally:
        server.cleanup()
    return {
        "size": size,
        "queries": queries,
        "ours_p50_ms": ours,
        "floor_p50_ms": floor,
        "ratio": statistics.median(ours) / statistics.median(floor),
        "goal": 1.4,
    }


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
    print(f"ratio (medians): {result['ratio']:.2f} (goal <= 1.4)")
    save_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

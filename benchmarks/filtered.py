"""``python -m benchmarks.filtered``: filtered semantic search at scale.

One table of N memories of one owner (embedded once with the default model; ``--random`` for
random unit vectors, no model, the hard case for an HNSW graph), each with a
``priority`` from 0 to 99 in its metadata. Two stores read it: one with
``indexed_metadata={"priority": "numeric"}`` (an expression index the range filter uses) and
one without (the anchor: the filter checked on the rows the HNSW scan yields). For owner +
range filters passing 1%, 10% and 50% of the rows, rounds alternate between the unfiltered
search, the anchor and the indexed store; p50 per round, the ratio to the unfiltered search,
and recall@10 against the exact filtered answer (the same statement with index scans off): the
share of results no farther than the exact tenth.

Target (issue 15): p50 <= 1.5x the unfiltered semantic search, recall@10 >= 0.95, at each
selectivity.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from pepperpy_pg_memory import MemoryQuery, PostgresConfig, PostgresStorage
from pepperpy_pg_memory.embeddings import default_embedder
from pepperpy_pg_memory.search_sql import Page

from .corpus import memories, questions
from .embedders import PrecomputedEmbedder, RandomEmbedder
from .measure import log, report, search_p50
from .run import _start_server

SELECTIVITY = {"1%": 1, "10%": 10, "50%": 50}
OWNER = {"scope": "user", "scope_id": "ana"}


async def _p50(store: PostgresStorage[str, Any], queries: list[MemoryQuery]) -> float:
    return await search_p50((store, query) for query in queries)


async def _exact(store: PostgresStorage[str, Any], vector: list[float], below: int) -> float:
    """The distance of the true tenth nearest among the rows passing the filter (no index:
    every row is read)."""
    query = MemoryQuery(embedding=vector, limit=10, filter={"priority": {"$lt": below}}, **OWNER)
    restriction = store._ready.restriction(query.scope, query.scope_id, None, query.filter)
    statement = store._ready.searches.semantic_search(vector, restriction, Page(10), passages=False)
    async with store.database.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_indexscan = off")
        await conn.execute("SET LOCAL enable_bitmapscan = off")
        rows = await conn.fetch(statement.sql, *statement.args)
    return float(rows[-1]["distance"])


async def _vectors(texts: list[str], random: bool) -> dict[str, Any]:
    """Each text's vector; the model's are kept in the user cache folder (embedding 100k
    texts takes minutes), keyed by the texts."""
    embedder: Any = RandomEmbedder(384) if random else default_embedder("onnx")
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = Path(platformdirs.user_cache_dir("pepperpy-pg-memory")) / f"bench-{digest}.npy"
    if not random and cache.exists():
        matrix = np.load(cache)
    else:
        parts = [
            np.asarray(await embedder.embed_documents(texts[start : start + 256]))
            for start in range(0, len(texts), 256)
        ]
        matrix = np.concatenate(parts)
        if not random:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, matrix)
    return dict(zip(texts, matrix, strict=True))


async def _measure(size: int, queries: int, rounds: int, random: bool) -> dict[str, Any]:
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-filtered-")))
    try:
        dsn = server.get_uri("postgres")
        corpus = memories(size)
        asked = questions(queries)
        log(f"embedding {size + queries} texts")
        embedder = PrecomputedEmbedder(await _vectors([m.text for m in corpus] + asked, random))
        # Two tables of the same rows: the statistics the indexed store keeps on the field
        # would otherwise help the anchor's plans too, and it would no longer be "before".
        plain = PostgresStorage[str, Any](PostgresConfig(dsn=dsn, table="plain"), embedder)
        indexed = PostgresStorage[str, Any](
            PostgresConfig(dsn=dsn, table="indexed", indexed_metadata={"priority": "numeric"}),
            embedder,
        )
        await plain.start()
        try:
            rows = [
                {"key": m.key, "value": m.text, "metadata": {"priority": i % 100}, **OWNER}
                for i, m in enumerate(corpus)
            ]
            log(f"loading {size} memories, twice")
            await plain.store_many(rows)
            begun = time.perf_counter()
            await indexed.start()  # adds the expression index to the empty table
            index_seconds = time.perf_counter() - begun
            await indexed.store_many(rows)
            async with indexed.database.pool.acquire() as conn:  # as autovacuum would
                await conn.execute(f"ANALYZE {indexed.layout.qualified_table}")
            vectors = [(await plain.query_vector(q)).tolist() for q in asked]
            unfiltered = [MemoryQuery(embedding=v, limit=10, **OWNER) for v in vectors]
            filtered = {
                name: [
                    MemoryQuery(embedding=v, limit=10, filter={"priority": {"$lt": below}}, **OWNER)
                    for v in vectors
                ]
                for name, below in SELECTIVITY.items()
            }
            for store in (plain, indexed):  # warm up every statement shape
                await _p50(store, unfiltered[:10])
                for batch in filtered.values():
                    await _p50(store, batch[:10])
            p50: dict[str, list[float]] = {}
            for _ in range(rounds):
                p50.setdefault("unfiltered", []).append(await _p50(plain, unfiltered))
                for name, batch in filtered.items():
                    p50.setdefault(f"anchor_{name}", []).append(await _p50(plain, batch))
                    p50.setdefault(f"indexed_{name}", []).append(await _p50(indexed, batch))
            log("recall against exact filtered search")
            recall: dict[str, float] = {}
            found = 0
            for vector, query in zip(vectors, unfiltered, strict=True):
                tenth = await _exact(plain, vector, 100)  # every row passes
                results = await plain.search(query)
                found += sum(1 - r.score <= tenth + 1e-6 for r in results)
            recall["unfiltered"] = found / (10 * len(vectors))
            for name, below in SELECTIVITY.items():
                for label, store in (("anchor", plain), ("indexed", indexed)):
                    found = 0
                    for vector, query in zip(vectors, filtered[name], strict=True):
                        tenth = await _exact(plain, vector, below)
                        results = await store.search(query)
                        found += sum(1 - r.score <= tenth + 1e-6 for r in results)
                    recall[f"{label}_{name}"] = found / (10 * len(vectors))
        finally:
            await indexed.close()
            await plain.close()
    finally:
        server.cleanup()
    medians = {name: statistics.median(values) for name, values in p50.items()}
    ratios = {
        name: value / medians["unfiltered"]
        for name, value in medians.items()
        if name != "unfiltered"
    }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "size": size,
        "queries": queries,
        "rounds": rounds,
        "start_with_index_seconds": index_seconds,
        "p50_ms_per_round": p50,
        "p50_ms": medians,
        "ratio_over_unfiltered": ratios,
        "recall_at_10": recall,
        "targets_met": {
            f"indexed_{name}": ratios[f"indexed_{name}"] <= 1.5
            and recall[f"indexed_{name}"] >= 0.95
            for name in SELECTIVITY
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.filtered", description=__doc__)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--random", action="store_true", help="random vectors (no model)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    report(asyncio.run(_measure(args.size, args.queries, args.rounds, args.random)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

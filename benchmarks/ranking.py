"""``python -m benchmarks.ranking``: what ranking and read counting cost a search, and what
deduplication costs a store.

One table of N memories of one owner (the model's vectors, cached; ``--random`` for random
ones), each with an importance, read by two stores started on it: one counting reads
(``track_access=True``, the default), one not. Rounds alternate, per query, between a plain
semantic search, the same search with ``Ranking(relevance=1, recency=0.3, importance=0.3)``
(four times the page of candidates weighed in the database), and the plain search through the
store that does not count reads — the three in turn for each query, each going first for a
third of them (the first search of a vector warms the pages the others read), so that drift on
a busy host touches all three alike; p50 per round, then the ratios.

Then ``--writes`` new memories are stored one call at a time into the same table, in turn a
plain ``store()``, ``store(dedupe=True)`` (none of them a duplicate: the lookup's cost) and a
``store()`` through a store with ``max_memories_per_owner`` set above the owner's count (the
quota trigger's lock and count, nothing evicted); then batches of ``--batch`` memories,
alternating ``store_many`` with and without ``dedupe=True``.

Targets (issue 13): ranked ≤ 1.3x plain; reads counted ≤ 1.05x not counted; store with
``dedupe=True`` ≤ 1.5x plain store. The quota and the deduplicating batch are reported, with
no target. The side table's look-ups for ``access_count`` are in both
searches (every entry carries them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pepperpy_pg_memory import MemoryQuery, PostgresConfig, PostgresStorage, Ranking

from .corpus import memories, questions
from .embedders import PrecomputedEmbedder
from .filtered import _vectors
from .measure import log, report
from .run import _start_server

OWNER = {"scope": "user", "scope_id": "ana"}
RANKING = Ranking(relevance=1.0, recency=0.3, importance=0.3, half_life=timedelta(days=1))


async def _measure(
    size: int, queries: int, rounds: int, writes: int, batch_size: int, random: bool
) -> dict[str, Any]:
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-ranking-")))
    corpus = memories(size + writes + 10 * batch_size)
    asked = questions(queries)
    log(f"embedding {size + queries} texts (cached after the first run)")
    embedder = PrecomputedEmbedder(await _vectors([m.text for m in corpus] + asked, random=random))
    dsn = server.get_uri("postgres")
    counting = PostgresStorage[str, Any](PostgresConfig(dsn=dsn, table="ranked"), embedder)
    silent = PostgresStorage[str, Any](
        PostgresConfig(dsn=dsn, table="ranked", track_access=False), embedder
    )
    limited = PostgresStorage[str, Any](
        # A limit the owner never reaches (by one): what every new memory pays for it.
        PostgresConfig(dsn=dsn, table="ranked", max_memories_per_owner=len(corpus) + 1),
        embedder,
    )
    try:
        await counting.start()
        await silent.start()
        await limited.start()
        log(f"loading {size} memories")
        await counting.store_many(
            [
                {"key": m.key, "value": m.text, "importance": (i % 10) / 10, **OWNER}
                for i, m in enumerate(corpus[:size])
            ]
        )
        async with counting.database.pool.acquire() as conn:  # as autovacuum would
            await conn.execute(f"VACUUM ANALYZE {counting.layout.qualified_table}")
        vectors = [(await counting.query_vector(q)).tolist() for q in asked]
        plain = [MemoryQuery(embedding=v, limit=10, **OWNER) for v in vectors]
        ranked = [MemoryQuery(embedding=v, limit=10, ranking=RANKING, **OWNER) for v in vectors]
        for store, batch in ((counting, plain), (counting, ranked), (silent, plain)):
            for query in batch[:10]:  # warm every statement shape
                await store.search(query)
        await counting.flush_access_counts()  # some memories have counts, as in use
        p50: dict[str, list[float]] = {}
        log(f"searches: {queries} per system and round, {rounds} rounds")
        systems = (
            ("plain", counting, plain),
            ("ranked", counting, ranked),
            ("plain_not_counting", silent, plain),
        )
        for _ in range(rounds):
            times: dict[str, list[float]] = {name: [] for name, _, _ in systems}
            for position in range(len(plain)):
                # The first search of a vector warms the pages the next ones read: each
                # system goes first for a third of the queries.
                turn = position % len(systems)
                for name, store, batch in systems[turn:] + systems[:turn]:
                    begun = time.perf_counter()
                    await store.search(batch[position])
                    times[name].append((time.perf_counter() - begun) * 1000)
            for name, samples in times.items():
                p50.setdefault(name, []).append(statistics.median(samples))
        log(f"writes: {writes} new memories, plain, deduplicating and limited stores in turn")
        write_ms: dict[str, list[float]] = {"store": [], "store_dedupe": [], "store_quota": []}
        kinds = list(write_ms)
        for position, memory in enumerate(corpus[size : size + writes]):
            name = kinds[position % len(kinds)]
            store = limited if name == "store_quota" else counting
            begun = time.perf_counter()
            await store.store(memory.key, memory.text, dedupe=name == "store_dedupe", **OWNER)
            write_ms[name].append((time.perf_counter() - begun) * 1000)
        log(f"batches: 10 of {batch_size} memories, with and without dedupe=True in turn")
        batch_ms: dict[str, list[float]] = {"store_many": [], "store_many_dedupe": []}
        rest = corpus[size + writes :]
        for position in range(10):
            name = "store_many_dedupe" if position % 2 else "store_many"
            items = [
                (m.key, m.text) for m in rest[position * batch_size : (position + 1) * batch_size]
            ]
            begun = time.perf_counter()
            await counting.store_many(items, dedupe=name == "store_many_dedupe", **OWNER)
            batch_ms[name].append((time.perf_counter() - begun) * 1000)
    finally:
        await limited.close()
        await silent.close()
        await counting.close()
        server.cleanup()
    medians = {name: statistics.median(values) for name, values in p50.items()}
    writes_p50 = {name: statistics.median(values) for name, values in write_ms.items()}
    batches_p50 = {name: statistics.median(values) for name, values in batch_ms.items()}
    ratios = {
        "ranked_over_plain": medians["ranked"] / medians["plain"],
        "counting_over_not_counting": medians["plain"] / medians["plain_not_counting"],
        "dedupe_store_over_store": writes_p50["store_dedupe"] / writes_p50["store"],
        "quota_store_over_store": writes_p50["store_quota"] / writes_p50["store"],
        "dedupe_batch_over_batch": batches_p50["store_many_dedupe"] / batches_p50["store_many"],
    }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "mode": "storage (vectors given)",
        "vectors": "random" if random else "all-MiniLM-L6-v2",
        "size": size,
        "queries": queries,
        "rounds": rounds,
        "ranking": RANKING.model_dump(mode="json"),
        "p50_ms_per_round": p50,
        "p50_ms": medians,
        "writes": writes,
        "write_p50_ms": writes_p50,
        "batch": batch_size,
        "batch_p50_ms": batches_p50,
        "ratios": ratios,
        "targets_met": {
            "ranked": ratios["ranked_over_plain"] <= 1.3,
            "counting": ratios["counting_over_not_counting"] <= 1.05,
            "dedupe_store": ratios["dedupe_store_over_store"] <= 1.5,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ranking", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes", type=int, default=600)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--random", action="store_true", help="random vectors (no model)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    measured = _measure(args.size, args.queries, args.rounds, args.writes, args.batch, args.random)
    report(asyncio.run(measured), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

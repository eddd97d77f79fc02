"""``python -m benchmarks.history``: what memory over time costs.

Same server, same run, vectors given (the model's, cached; the database's cost alone is the
strict case — with the model embedding each text, the ratios move towards 1):

* **writes**: ``store()`` of new memories and ``store()`` updating them, one call at a time,
  into a store with history on and one with history off; rounds alternate between the two.
* **valid-now search**: semantic search p50 over N memories, against the same N memories
  after 30% of them were superseded by new memories (so the table holds 1.3 N rows, 0.3 N of
  them closed facts the search must skip).
* **as of**: semantic search as of a moment (before the supersessions, and now) against the
  current-only search of the same table.

Targets (issue 12): history on ≤ 1.25x off for store and update; search with 30% superseded
≤ 1.1x none superseded; as-of search ≤ 5x current-only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pepperpy_pg_memory import MemoryQuery, PostgresConfig, PostgresStorage

from .corpus import memories, questions
from .embedders import PrecomputedEmbedder
from .filtered import _vectors
from .measure import log, p50_ms, report
from .run import _start_server

OWNER = {"scope": "user", "scope_id": "ana"}


async def _writes(
    on: PostgresStorage[str, Any], off: PostgresStorage[str, Any], texts: list[str], rounds: int
) -> dict[str, dict[str, list[float]]]:
    """p50 per round of store (new keys) and update (the same keys, new text)."""
    chunk = len(texts) // (2 * rounds)
    samples: dict[str, dict[str, list[float]]] = {"store": {}, "update": {}}
    for number in range(rounds):
        part = texts[number * 2 * chunk : (number + 1) * 2 * chunk]
        olds, news = part[:chunk], part[chunk:]
        for name, store in (
            (("on", on), ("off", off))
            if number % 2 == 0
            else (
                ("off", off),
                ("on", on),
            )
        ):
            keys = [f"r{number}-{i}" for i in range(chunk)]

            def writer(key: str, text: str, target: Any = store) -> Any:
                return lambda: target.store(key, text, **OWNER)

            stored = await p50_ms([writer(k, t) for k, t in zip(keys, olds, strict=True)])
            updated = await p50_ms([writer(k, t) for k, t in zip(keys, news, strict=True)])
            samples["store"].setdefault(name, []).append(stored)
            samples["update"].setdefault(name, []).append(updated)
    return samples


async def _searches(
    store: PostgresStorage[str, Any], vectors: list[list[float]], as_of: datetime | None = None
) -> float:
    queries = [MemoryQuery(embedding=v, limit=10, as_of=as_of, **OWNER) for v in vectors]
    return await p50_ms([lambda q=q: store.search(q) for q in queries])


async def _server_now(store: PostgresStorage[str, Any]) -> datetime:
    async with store.database.pool.acquire() as conn:
        moment: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return moment


async def _measure(
    size: int, writes: int, queries: int, rounds: int, random: bool
) -> dict[str, Any]:
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-history-")))
    corpus = memories(size + writes)
    asked = questions(queries)
    log(f"embedding {size + writes + queries} texts (cached after the first run)")
    vectors = await _vectors([m.text for m in corpus] + asked, random=random)
    embedder = PrecomputedEmbedder(vectors)
    dsn = server.get_uri("postgres")
    stores = {
        name: PostgresStorage[str, Any](PostgresConfig(dsn=dsn, table=name, **extra), embedder)
        for name, extra in (
            ("history_on", {}),
            ("history_off", {"history": False}),
            ("none_superseded", {}),
            ("superseded", {}),
        )
    }
    try:
        for store in stores.values():
            await store.start()
        log(f"writes: {writes} stores and updates per system, {rounds} alternating rounds")
        write_texts = [m.text for m in corpus[size:]]
        write_p50 = await _writes(stores["history_on"], stores["history_off"], write_texts, rounds)

        rows = [{"key": m.key, "value": m.text, **OWNER} for m in corpus[:size]]
        log(f"loading {size} memories into two tables")
        for name in ("none_superseded", "superseded"):
            await stores[name].store_many(rows)
        superseded = stores["superseded"]
        before = await _server_now(superseded)
        share = int(size * 0.3)
        log(f"superseding {share} of them by new memories")
        for i, memory in enumerate(corpus[:share]):
            successor = corpus[(i + share) % size].text
            await superseded.supersede(memory.key, successor, new_key=f"{memory.key}-2", **OWNER)
        for store in stores.values():
            async with store.database.pool.acquire() as conn:  # as autovacuum would
                await conn.execute(f"VACUUM ANALYZE {store.layout.qualified_table}")
                await conn.execute(f"ANALYZE {store.layout.qualified_history}")
        query_vectors = [(await superseded.query_vector(q)).tolist() for q in asked]
        for store in (stores["none_superseded"], superseded):  # warm every statement shape
            await _searches(store, query_vectors[:10])
        await _searches(superseded, query_vectors[:10], before)
        search_p50: dict[str, list[float]] = {}
        log(f"searches: {queries} per system and round, {rounds} rounds")
        for _ in range(rounds):
            now = await _server_now(superseded)
            for name, work in (
                ("none_superseded", _searches(stores["none_superseded"], query_vectors)),
                ("superseded", _searches(superseded, query_vectors)),
                ("as_of_before_supersessions", _searches(superseded, query_vectors, before)),
                ("as_of_now", _searches(superseded, query_vectors, now)),
            ):
                search_p50.setdefault(name, []).append(await work)
    finally:
        for store in stores.values():
            await store.close()
        server.cleanup()
    write_medians = {
        operation: {name: statistics.median(v) for name, v in systems.items()}
        for operation, systems in write_p50.items()
    }
    search_medians = {name: statistics.median(v) for name, v in search_p50.items()}
    ratios = {
        "store_history_on_over_off": write_medians["store"]["on"] / write_medians["store"]["off"],
        "update_history_on_over_off": write_medians["update"]["on"]
        / write_medians["update"]["off"],
        "search_30pct_superseded_over_none": search_medians["superseded"]
        / search_medians["none_superseded"],
        "as_of_before_over_current": search_medians["as_of_before_supersessions"]
        / search_medians["superseded"],
        "as_of_now_over_current": search_medians["as_of_now"] / search_medians["superseded"],
    }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "mode": "storage (vectors given)",
        "vectors": "random" if random else "all-MiniLM-L6-v2",
        "size": size,
        "writes_per_round": writes // (2 * rounds),
        "queries": queries,
        "rounds": rounds,
        "write_p50_ms_per_round": write_p50,
        "write_p50_ms": write_medians,
        "search_p50_ms_per_round": search_p50,
        "search_p50_ms": search_medians,
        "ratios": ratios,
        "targets_met": {
            "store": ratios["store_history_on_over_off"] <= 1.25,
            "update": ratios["update_history_on_over_off"] <= 1.25,
            "superseded_search": ratios["search_30pct_superseded_over_none"] <= 1.1,
            "as_of_search": max(
                ratios["as_of_before_over_current"], ratios["as_of_now_over_current"]
            )
            <= 5,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.history", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=2_400, help="texts for the write rounds")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--random", action="store_true", help="random vectors (no model)")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    measured = _measure(args.size, args.writes, args.queries, args.rounds, args.random)
    report(asyncio.run(measured), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

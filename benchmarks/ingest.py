"""``python -m benchmarks.ingest``: bulk ingest with every feature on, beside the raw floor.

Issue 24's first row: ``store_many`` of N memories with their vectors given (384-d,
clustered), held by 100 owners, against asyncpg's COPY of the same rows into a bare table
followed by the same HNSW build (m 16, ef_construction 64): the raw floor. Ours runs with
everything a deployment turns on — history, contextual terms with per-owner statistics, a
deduplication check on every item, ``max_memories_per_owner`` — and then with one feature off
at a time, so that the cost of each shows beside the others. Each store writes a fresh table
in one call (which is how a bulk load rebuilds the index once), rounds alternate, the median
counts, and the JSON keeps the ratios to the floor (target: everything on ≥ 0.7×).
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

import asyncpg
import numpy as np

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryQuery,
    MemoryScope,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.queries import Statements

from .corpus import memories
from .measure import save_json
from .run import _log, _prepare_database, _start_server

DIMENSION = 384
OWNERS = 100

VARIANTS: dict[str, dict[str, Any]] = {
    "everything_on": {},
    "no_history": {"history": False},
    "no_dedupe_check": {"dedupe": False},
    "no_quota": {"max_memories_per_owner": None},
    "tenant_term_statistics": {"term_statistics": "tenant"},
    "row_triggers": {"row_triggers": True},
    "halfvec": {"vector_type": "halfvec"},
}
"""What each store changes from everything on (the dedupe check is a store_many argument;
``row_triggers`` leaves versions, history, terms and the quota to the row triggers, as
before schema version 20: the statement's gain, in the same run; ``halfvec`` stores the
vectors as half-precision floats, whose space the report's ``disk_halfvec`` gives)."""


def _vectors(count: int, seed: int = 11, draw: int | None = None) -> np.ndarray:
    """Unit vectors in 50 clusters: what a model's embeddings of related notes look like.
    ``draw`` (a seed) draws other vectors around the same clusters: queries."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, DIMENSION))
    if draw is not None:
        rng = np.random.default_rng(draw)
    vectors = centres[rng.integers(0, 50, count)] + 0.35 * rng.normal(size=(count, DIMENSION))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


RECALL_QUERIES = 200


def _settings(variant: dict[str, Any]) -> dict[str, Any]:
    """A variant's configuration (the dedupe check is a ``store_many`` argument, the row
    triggers a patch of ``Statements``)."""
    return {k: v for k, v in variant.items() if k not in ("dedupe", "row_triggers")}


async def _recall(
    url: str, rows: list[tuple[str, str, np.ndarray]], table: str, variant: dict[str, Any]
) -> float:
    """recall@10 of a tenant-wide semantic search on a table ``_ours`` wrote, against the
    exact nearest ten of the full-precision vectors (numpy): what the HNSW graph and, for
    ``halfvec``, the half-precision vectors lose."""
    keys = [key for key, _, _ in rows]
    vectors = np.stack([vector for _, _, vector in rows])
    queries = _vectors(RECALL_QUERIES, draw=29)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    config = PostgresConfig(dsn=url, table=table, **_settings(variant))
    found = 0
    async with PostgresStorage[str, Any](config, HashingEmbedder(DIMENSION)) as store:
        for query, nearest in zip(queries, exact, strict=True):
            hits = await store.search(MemoryQuery(embedding=query.tolist(), limit=10))
            found += len({hit.entry.key for hit in hits} & {keys[i] for i in nearest})
    return found / (10 * RECALL_QUERIES)


def _rows(size: int) -> list[tuple[str, str, np.ndarray]]:
    """The memories both sides store: key, text and vector."""
    texts = [(m.key, m.text) for m in memories(size)]
    vectors = _vectors(size)
    return [(key, text, vectors[i]) for i, (key, text) in enumerate(texts)]


async def _raw(url: str, rows: list[tuple[str, str, np.ndarray]], table: str) -> float:
    """COPY into a bare table, then the HNSW build: the floor."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        from pgvector.asyncpg import register_vector

        await register_vector(conn)
        await conn.execute(
            f"CREATE TABLE {table} (key text PRIMARY KEY, owner text NOT NULL, content text "
            f"NOT NULL, embedding vector({DIMENSION}) NOT NULL)"
        )
        records = [
            (key, f"user-{i % OWNERS}", text, vec) for i, (key, text, vec) in enumerate(rows)
        ]
        # The build gets the memory ours gets: with the server's default (64 MB) a graph of
        # 100,000 vectors no longer fits, and the build takes several times as long.
        maintenance_work_mem = PostgresConfig.model_fields["maintenance_work_mem"].default
        await conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        started = time.perf_counter()
        await conn.copy_records_to_table(
            table, records=records, columns=["key", "owner", "content", "embedding"]
        )
        await conn.execute(
            f"CREATE INDEX ON {table} USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _ours(
    url: str, rows: list[tuple[str, str, np.ndarray]], table: str, variant: dict[str, Any]
) -> float:
    config = PostgresConfig(
        dsn=url,
        table=table,
        **{"max_memories_per_owner": 1_000_000, "dedupe_threshold": 0.95, **_settings(variant)},
    )
    items = [
        {
            "key": key,
            "value": {"text": text},
            "text": text,
            "embedding": vector.tolist(),
            "scope": MemoryScope.USER,
            "scope_id": f"user-{i % OWNERS}",
        }
        for i, (key, text, vector) in enumerate(rows)
    ]
    writes_versions = Statements.writes_versions
    if variant.get("row_triggers"):
        Statements.writes_versions = property(lambda self: False)  # type: ignore[method-assign,assignment]
    try:
        async with PostgresStorage[str, Any](config, HashingEmbedder(DIMENSION)) as store:
            started = time.perf_counter()
            await store.store_many(items, dedupe=variant.get("dedupe"))
            seconds = time.perf_counter() - started
            await store.complete_backfills()
    finally:
        Statements.writes_versions = writes_versions  # type: ignore[method-assign]
    return seconds


async def _disk(url: str, raw: str, ours: str, size: int) -> dict[str, Any]:
    """Bytes per memory on disk: the raw table with its indexes, and ours — every relation
    of the store (memories, versions, read counts, passages, term statistics) with their
    indexes and TOAST — with the largest contributors."""
    conn = await asyncpg.connect(url)
    try:
        raw_bytes = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", raw)
        parts = await conn.fetch(
            """
            SELECT c.relname AS name, CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid)
                                           ELSE pg_table_size(c.oid) END AS bytes
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_index i ON i.indexrelid = c.oid
            LEFT JOIN pg_class t ON t.oid = i.indrelid
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')
              AND (CASE WHEN c.relkind = 'i' THEN t.relname ELSE c.relname END) ~ $1
            ORDER BY bytes DESC
            """,
            f"^{ours}($|_)",
        )
    finally:
        await conn.close()
    ours_bytes = sum(part["bytes"] for part in parts)
    return {
        "memories": size,
        "raw_table_and_hnsw_bytes_per_memory": raw_bytes / size,
        "ours_bytes_per_memory": ours_bytes / size,
        "ratio_to_raw": ours_bytes / raw_bytes,
        "goal_ratio": 2.5,
        "largest_bytes_per_memory": {
            part["name"].replace(ours, "<table>"): part["bytes"] / size for part in parts[:10]
        },
    }


async def _checkpoint(url: str) -> None:
    """Write out what the store before left in the server's buffers and WAL, so that each
    store starts from the same state: at 100,000 rows (0.7 GB a store) a checkpoint that
    the one before set off otherwise lands, in part, in whichever store runs next."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _run(size: int, rounds: int) -> dict[str, Any]:
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-ingest-")))
    try:
        database = await _prepare_database(server)
        url = server.get_uri("bench")
        rows = _rows(size)
        seconds: dict[str, list[float]] = {"raw_copy_hnsw": []}
        for name in VARIANTS:
            seconds[name] = []
        for number in range(rounds):
            _log(f"round {number + 1}: raw")
            await _checkpoint(url)
            seconds["raw_copy_hnsw"].append(await _raw(url, rows, f"raw_{number}"))
            for index, (name, variant) in enumerate(VARIANTS.items()):
                _log(f"round {number + 1}: {name}")
                table = f"ours_{index}_{number}"
                await _checkpoint(url)
                seconds[name].append(await _ours(url, rows, table, variant))
        disk = await _disk(url, "raw_0", "ours_0_0", size)
        halfvec = f"ours_{list(VARIANTS).index('halfvec')}_0"
        disk_halfvec = await _disk(url, "raw_0", halfvec, size)
        _log("recall@10 against exact search")
        recall = {
            "vector": await _recall(url, rows, "ours_0_0", VARIANTS["everything_on"]),
            "halfvec": await _recall(url, rows, halfvec, VARIANTS["halfvec"]),
        }
    finally:
        server.cleanup()
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    floor = medians["raw_copy_hnsw"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "database": database,
        "rows": size,
        "owners": OWNERS,
        "rounds": rounds,
        "seconds": seconds,
        "rows_per_second": {name: size / value for name, value in medians.items()},
        "ratio_to_raw": {name: floor / value for name, value in medians.items()},
        "goal": {"everything_on_ratio_to_raw": 0.7},
        "met": floor / medians["everything_on"] >= 0.7,
        "disk": disk,
        "disk_halfvec": disk_halfvec,
        "recall_at_10": recall,
    }


async def _profile(size: int) -> list[tuple[float, int, str]]:
    """One everything-on store, every statement it sends timed on the client: (seconds,
    times run, the statement's first words), largest first."""
    import collections

    spent: dict[str, float] = collections.defaultdict(float)
    runs: collections.Counter[str] = collections.Counter()
    originals = {}
    for name in (
        "execute",
        "fetch",
        "fetchval",
        "fetchrow",
        "executemany",
        "copy_records_to_table",
    ):
        original = getattr(asyncpg.Connection, name)
        originals[name] = original

        def timed(original: Any = original, name: str = name) -> Any:
            async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await original(self, *args, **kwargs)
                finally:
                    what = args[0] if args and isinstance(args[0], str) else name
                    label = f"{name}: {' '.join(what.split())[:110]}"
                    spent[label] += time.perf_counter() - started
                    runs[label] += 1

            return call

        setattr(asyncpg.Connection, name, timed())
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-ingest-")))
    try:
        await _prepare_database(server)
        rows = _rows(size)
        total = await _ours(server.get_uri("bench"), rows, "profiled", {})
    finally:
        server.cleanup()
        for name, original in originals.items():
            setattr(asyncpg.Connection, name, original)
    report = sorted(((spent[k], runs[k], k) for k in spent), reverse=True)
    return [(total, 1, "the whole store_many")] + report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: one everything-on store, each statement's time (where the time goes)",
    )
    args = parser.parse_args(argv)
    if args.profile:
        for seconds, times, label in asyncio.run(_profile(args.size))[:15]:
            print(f"{seconds:7.3f} s {times:5}x  {label}")
        return 0
    report = asyncio.run(_run(args.size, args.rounds))
    for name, rate in report["rows_per_second"].items():
        ratio = report["ratio_to_raw"][name]
        print(f"{name:24} {rate:8.0f} rows/s  {ratio:5.2f}x raw")
    disk = report["disk"]
    print(
        f"disk: {disk['ours_bytes_per_memory']:,.0f} bytes a memory, "
        f"{disk['ratio_to_raw']:.2f}x the raw table with its HNSW index"
    )
    recall = report["recall_at_10"]
    print(
        f"recall@10 against exact: vector {recall['vector']:.3f}, halfvec {recall['halfvec']:.3f}"
    )
    save_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

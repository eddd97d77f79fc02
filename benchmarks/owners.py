"""``python -m benchmarks.owners``: owner-scoped search in a table many owners share.

The workload agents run (issue 32): one table of ``--owners`` owners holding
``--per-owner`` memories each plus one owner of ``--big`` memories (300,000 + 50,000 by
default). For ``--sample`` small owners and for the big one, owner-scoped SEMANTIC,
CONTEXTUAL and HYBRID searches (``--queries`` each per owner) run on the shared table and on a
table holding only that owner's rows — the anchor: what a table per owner would give —
rounds alternating, p50 per round. Vectors are clustered 384-d unit vectors given with each
memory (no model): five topics an owner, each of subjects of about 50 memories
(:func:`_clustered`; ``--flat`` for topics without subjects, the worst case for a graph
index); a query is one of the owner's memories, its text and its vector moved a little, so
every owner has near neighbours to find.

Quality: recall@10 of SEMANTIC on the shared table against the exact answer (numpy over the
owner's own vectors), and for CONTEXTUAL and HYBRID the share of the anchor's top 10 the
shared table also returns (term statistics are per owner, so these should agree). The big
owner's semantic recall counts ``--recall-queries`` more queries beside its timed ones (the
small owners' timed queries are 200 already), and is measured again at ``hnsw.ef_search`` 40
and 200: whether a wider walk would find what the default one misses. The plan PostgreSQL
picks for a small and for the big owner's semantic search is kept too.

Then 30% of those owners' memories are retired in the shared table (half expired, half
closed as superseded facts) and the same searches run again: reads of the live facts should
not slow down (≤ 1.1× before), and recall is counted against the live memories only. The
searches run once more after a VACUUM (what autovacuum does some minutes later), reported
beside: the retired rows' old versions and the GIN indexes' pending entries cost reads until
then.

Targets: p50 ≤ 2× the anchor, recall@10 ≥ 0.98, for the small owners and the big one.
``--quick`` is a small smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pepperpy_pg_memory import (
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.search_sql import Page

from .corpus import memories
from .embedders import PrecomputedEmbedder
from .measure import log, report, search_p50
from .run import _start_server

DIMENSION = 384
MODES = (MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID)
BIG = "big"


SUBJECT_SIZE = 50
"""About how many memories share a subject within a topic (graded vectors)."""


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _clustered(
    count: int, rng: np.random.Generator, centres: np.ndarray, flat: bool = False
) -> np.ndarray:
    """Unit vectors of one owner's memories around a few of ``centres`` (five topics).

    Graded (the default): each topic holds subjects of about :data:`SUBJECT_SIZE` memories,
    as a person's memories do — a memory's nearest are of its subject (cosine about 0.75),
    then of its topic (about 0.4), then the rest (about 0). ``flat``: each topic is one
    cloud whose members are all about as near one another (cosine 0.88 ± 0.01, the data of
    the runs before 2026-12-06): no memory has neighbours nearer than the rest of its topic,
    so which ten of thousands are "the nearest" is decided by hundredths, the worst case for
    a graph index.
    """
    own = centres[rng.choice(len(centres), size=5, replace=False)]
    if flat:
        vectors = own[rng.integers(0, len(own), count)] + 0.35 * rng.normal(size=(count, DIMENSION))
        return _unit(vectors).astype(np.float32)
    noise = 1 / np.sqrt(DIMENSION)
    subjects = max(1, count // SUBJECT_SIZE)
    topics = _unit(own)[rng.integers(0, len(own), subjects)]
    subject_centres = _unit(topics + 0.9 * noise * rng.normal(size=(subjects, DIMENSION)))
    vectors = subject_centres[rng.integers(0, subjects, count)]
    vectors = vectors + 0.6 * noise * rng.normal(size=(count, DIMENSION))
    return _unit(vectors).astype(np.float32)


class _Owner:
    """One owner's memories (keys, texts, vectors) and the queries asked of them."""

    def __init__(self, name: str, keys: list[str], texts: list[str], vectors: np.ndarray) -> None:
        self.name, self.keys, self.texts, self.vectors = name, keys, texts, vectors
        self.queries: list[tuple[str, np.ndarray]] = []
        self.live = np.ones(len(keys), dtype=bool)

    def retire(self, share: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
        """Mark ``share`` of the memories gone: half to expire, half to close (superseded
        facts); returns the keys of each half."""
        chosen = rng.choice(len(self.keys), size=int(share * len(self.keys)), replace=False)
        self.live[chosen] = False
        half = len(chosen) // 2
        return [self.keys[i] for i in chosen[:half]], [self.keys[i] for i in chosen[half:]]

    def ask(self, count: int, rng: np.random.Generator) -> None:
        """Add ``count`` queries to :attr:`queries` (the timed ones)."""
        self.queries.extend(self.questions(count, rng))

    def questions(self, count: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
        """``count`` queries, each one of the memories (its text halved, its vector moved)."""
        asked = []
        for index in rng.choice(len(self.keys), size=count, replace=False):
            moved = self.vectors[index] + 0.25 * rng.normal(size=DIMENSION) / np.sqrt(DIMENSION)
            words = self.texts[index].split()
            text = " ".join(words[: max(3, len(words) // 2)])
            asked.append((text, (moved / np.linalg.norm(moved)).astype(np.float32)))
        return asked

    def items(self) -> list[dict[str, Any]]:
        return [
            {
                "key": key,
                "value": text,
                "embedding": vector,
                "scope": MemoryScope.USER,
                "scope_id": self.name,
            }
            for key, text, vector in zip(self.keys, self.texts, self.vectors, strict=True)
        ]

    def exact(self, vector: np.ndarray) -> set[str]:
        """The ten nearest live memories."""
        distances = np.where(self.live, self.vectors @ vector, -np.inf)
        order = np.argsort(-distances, kind="stable")[:10]
        return {self.keys[i] for i in order}


def _owners(
    count: int, per_owner: int, big: int, flat: bool = False, seed: int = 5
) -> list[_Owner]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, DIMENSION))
    corpus = memories(count * per_owner + big)
    owners, start = [], 0
    for number in range(count + 1):
        size, name = (big, BIG) if number == count else (per_owner, f"user-{number:05d}")
        chunk = corpus[start : start + size]
        start += size
        vectors = _clustered(size, rng, centres, flat)
        owners.append(_Owner(name, [m.key for m in chunk], [m.text for m in chunk], vectors))
    return owners


def _query(owner: _Owner, text: str, vector: np.ndarray, mode: MemoryIndex) -> MemoryQuery:
    return MemoryQuery(
        query=text if mode != MemoryIndex.SEMANTIC else None,
        embedding=vector.tolist() if mode != MemoryIndex.CONTEXTUAL else None,
        index_type=mode,
        limit=10,
        scope=MemoryScope.USER,
        scope_id=owner.name,
    )


async def _shared_rounds(
    store: PostgresStorage[str, Any],
    batches: dict[tuple[str, MemoryIndex], list[tuple[_Owner, MemoryQuery]]],
    rounds: int,
) -> dict[str, list[float]]:
    """p50 of each batch of searches on ``store``, per round."""
    measured: dict[str, list[float]] = {}
    for _ in range(rounds):
        for (group, mode), batch in batches.items():
            shared_ms = await search_p50((store, query) for _, query in batch)
            measured.setdefault(f"{group}_{mode.value}", []).append(shared_ms)
    return measured


async def _retire(
    store: PostgresStorage[str, Any], owners: tuple[_Owner, ...], rng: np.random.Generator
) -> int:
    """Expire 15% and close 15% of each of ``owners``' memories in ``store`` (as expiry and
    supersession leave them: rows that searches must skip); returns how many."""
    table, tenant = store.layout.qualified_table, store.config.tenant or ""
    owner = "tenant = $1 AND scope = 'user' AND scope_id = $2 AND key = ANY($3::text[])"
    retired = 0
    async with store.database.pool.acquire() as conn:
        for member in owners:
            expired, closed = member.retire(0.3, rng)
            await conn.execute(
                f"UPDATE {table} SET expires_at = now() WHERE {owner}", tenant, member.name, expired
            )
            await conn.execute(
                f"UPDATE {table} SET valid_to = now() WHERE {owner}", tenant, member.name, closed
            )
            retired += len(expired) + len(closed)
        await conn.execute(f"ANALYZE {table}")
    return retired


async def _plan(store: PostgresStorage[str, Any], owner: _Owner) -> list[str]:
    """The plan of the owner's first semantic search on ``store``: its node lines."""
    vector = owner.queries[0][1].tolist()
    restriction = store._ready.restriction(MemoryScope.USER, owner.name)
    # The statement a table without passages runs (see operations.search.vector_rows).
    statement = store._ready.searches.semantic_search(vector, restriction, Page(10), passages=False)
    async with store.database.pool.acquire() as conn:
        rows = await conn.fetch("EXPLAIN " + statement.sql, *statement.args)
    # The query vector is shown inline (a custom plan): left out.
    return [re.sub(r"'\[[^]]*\]'", "'[…]'", row[0]) for row in rows if "Scan" in row[0]]


async def _quality(
    shared: PostgresStorage[str, Any],
    alone: dict[str, PostgresStorage[str, Any]],
    mode: MemoryIndex,
    batch: list[tuple[_Owner, MemoryQuery]],
) -> float:
    """The share of each search's expected ten the shared table returns: for SEMANTIC the
    exact nearest (recall), otherwise what the owner's own table returns (agreement)."""
    found = 0.0
    for owner, query in batch:
        got = {hit.entry.key for hit in await shared.search(query)}
        if mode == MemoryIndex.SEMANTIC:
            assert query.embedding is not None
            expected = owner.exact(np.asarray(query.embedding, dtype=np.float32))
        else:
            expected = {hit.entry.key for hit in await alone[owner.name].search(query)}
        found += len(got & expected) / max(1, len(expected))
    return found / len(batch)


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(17)
    log(f"making {args.owners} owners of {args.per_owner} and one of {args.big}")
    owners = _owners(args.owners, args.per_owner, args.big, args.flat)
    sampled = [owners[int(i)] for i in rng.choice(args.owners, size=args.sample, replace=False)]
    big = owners[-1]
    for owner in sampled:
        owner.ask(args.queries, rng)
    big.ask(args.queries * 4, rng)
    # Recall is counted over more queries than are timed: the few memories a graph build
    # reaches poorly are missed by a handful of queries, so forty queries' recall swings
    # with which of them were drawn (README, 2026-12-08). Their own generator: the timed
    # queries stay those of earlier runs.
    recall_only = [
        (big, _query(big, text, vector, MemoryIndex.SEMANTIC))
        for text, vector in big.questions(args.recall_queries, np.random.default_rng(29))
    ]
    table = {text: vector for owner in (*sampled, big) for text, vector in owner.queries}
    embedder = PrecomputedEmbedder(table)
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-owners-")))
    stores: list[PostgresStorage[str, Any]] = []
    try:
        dsn = server.get_uri("postgres")

        async def opened(name: str, **settings: Any) -> PostgresStorage[str, Any]:
            config = PostgresConfig(dsn=dsn, table=name, **settings)
            store = PostgresStorage[str, Any](config, embedder)
            await store.start()
            stores.append(store)
            return store

        shared = await opened("shared")
        total = sum(len(owner.keys) for owner in owners)
        log(f"loading {total:,} memories into the shared table")
        begun = time.perf_counter()
        await shared.store_many([item for owner in owners for item in owner.items()])
        load_seconds = time.perf_counter() - begun
        await shared.complete_backfills()
        alone: dict[str, PostgresStorage[str, Any]] = {}
        log("loading each sampled owner, and the big one, into a table of its own")
        for number, owner in enumerate((*sampled, big)):
            alone[owner.name] = await opened(f"alone_{number}")
            await alone[owner.name].store_many(owner.items())
            await alone[owner.name].complete_backfills()
        for store in stores:
            async with store.database.pool.acquire() as conn:  # as autovacuum would
                await conn.execute(f"ANALYZE {store.layout.qualified_table}")
            # As a store that has been searched and written a while has them.
            await store.refresh_term_statistics()
        groups = {"small": sampled, "big": [big]}
        batches = {
            (group, mode): [
                (owner, _query(owner, text, vector, mode))
                for owner in members
                for text, vector in owner.queries
            ]
            for group, members in groups.items()
            for mode in MODES
        }
        log("warming up every statement shape")
        for batch in batches.values():
            for owner, query in batch[:5]:
                await shared.search(query)
                await alone[owner.name].search(query)
        p50: dict[str, list[float]] = {}
        for number in range(args.rounds):
            log(f"round {number + 1} of {args.rounds}")
            for (group, mode), batch in batches.items():
                label = f"{group}_{mode.value}"
                shared_ms = await search_p50((shared, query) for _, query in batch)
                alone_ms = await search_p50((alone[owner.name], query) for owner, query in batch)
                p50.setdefault(f"{label}_shared", []).append(shared_ms)
                p50.setdefault(f"{label}_alone", []).append(alone_ms)
        log("recall against exact search, agreement with the owner's own table")
        quality: dict[str, float] = {}
        recall_batches = {group: batches[(group, MemoryIndex.SEMANTIC)] for group in groups}
        recall_batches["big"] = recall_batches["big"] + recall_only
        for (group, mode), batch in batches.items():
            name = "recall_at_10" if mode == MemoryIndex.SEMANTIC else "agreement_at_10"
            if mode == MemoryIndex.SEMANTIC:
                batch = recall_batches[group]
            quality[f"{group}_{mode.value}_{name}"] = await _quality(shared, alone, mode, batch)
        log("the big owner's semantic recall at other walk widths")
        by_width = {"100": quality["big_semantic_recall_at_10"]}
        for width in (40, 200):
            walked = await opened("shared", hnsw_ef_search=width)
            by_width[str(width)] = await _quality(
                walked, alone, MemoryIndex.SEMANTIC, recall_batches["big"]
            )
        plans = {"small": await _plan(shared, sampled[0]), "big": await _plan(shared, big)}
        log("the big owner's own vector index (PostgresStorage.index_owner)")
        begun = time.perf_counter()
        await shared.index_owner(MemoryScope.USER, big.name)
        owner_index: dict[str, Any] = {"build_seconds": time.perf_counter() - begun}
        for mode in (MemoryIndex.SEMANTIC, MemoryIndex.HYBRID):
            batch = batches[("big", mode)]
            for _, query in batch[:5]:
                await shared.search(query)
            rounds = [
                await search_p50((shared, query) for _, query in batch) for _ in range(args.rounds)
            ]
            alone_ms = statistics.median(p50[f"big_{mode.value}_alone"])
            owner_index[mode.value] = {
                "p50_ms": statistics.median(rounds),
                "ratio_over_alone": statistics.median(rounds) / alone_ms,
                "recall_or_agreement_at_10": await _quality(shared, alone, mode, batch),
            }
        owner_index["plan"] = await _plan(shared, big)
        # The later phases measure the table as before.
        await shared.drop_owner_index(MemoryScope.USER, big.name)
        log("expiring 15% and closing 15% of those owners' memories; the same searches again")
        retired = await _retire(shared, (*sampled, big), rng)
        after = await _shared_rounds(shared, batches, args.rounds)
        # Until a vacuum, the retired rows' old versions and the GIN indexes' pending
        # entries stay in the searches' way (autovacuum gets there within minutes, or only
        # after a fifth of the table has changed): the same searches once more after one.
        async with shared.database.pool.acquire() as conn:
            started = time.perf_counter()
            await conn.execute(f"VACUUM (ANALYZE) {shared.layout.qualified_table}")
            vacuum_seconds = time.perf_counter() - started
        after_vacuum = await _shared_rounds(shared, batches, args.rounds)
        # Against the live memories: _Owner.exact skips the retired ones.
        recall_after = {
            f"{group}_semantic_recall_at_10": await _quality(
                shared, alone, MemoryIndex.SEMANTIC, recall_batches[group]
            )
            for group in groups
        }
    finally:
        for store in stores:
            await store.close()
        server.cleanup()
    medians = {name: statistics.median(values) for name, values in p50.items()}
    after_medians = {name: statistics.median(values) for name, values in after.items()}
    vacuumed_medians = {name: statistics.median(values) for name, values in after_vacuum.items()}
    ratios = {
        name.removesuffix("_shared"): medians[name] / medians[name.replace("_shared", "_alone")]
        for name in medians
        if name.endswith("_shared")
    }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "owners": args.owners,
        "per_owner": args.per_owner,
        "big_owner": args.big,
        "vectors": "flat" if args.flat else "graded",
        "sampled": args.sample,
        "queries_per_owner": args.queries,
        "semantic_recall_queries": {group: len(batch) for group, batch in recall_batches.items()},
        "rounds": args.rounds,
        "load_seconds": load_seconds,
        "p50_ms_per_round": p50,
        "p50_ms": medians,
        "ratio_shared_over_alone": ratios,
        "quality": quality,
        "big_semantic_recall_at_10_by_ef_search": by_width,
        "plans": plans,
        "big_owner_with_its_own_index": owner_index,
        "after_retiring_30_percent": {
            "memories_retired": retired,
            "p50_ms_per_round": after,
            "ratio_after_over_before": {
                name: value / medians[f"{name}_shared"] for name, value in after_medians.items()
            },
            "quality": recall_after,
            "then_vacuumed": {
                "vacuum_seconds": vacuum_seconds,
                "p50_ms_per_round": after_vacuum,
                "ratio_after_over_before": {
                    name: value / medians[f"{name}_shared"]
                    for name, value in vacuumed_medians.items()
                },
            },
        },
        "targets_met": {
            "p50_at_most_2x_alone": all(ratio <= 2.0 for ratio in ratios.values()),
            "recall_at_least_0.98": all(value >= 0.98 for value in quality.values()),
            "live_reads_at_most_1.1x_after_retiring": all(
                value / medians[f"{name}_shared"] <= 1.1 for name, value in after_medians.items()
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.owners", description=__doc__)
    parser.add_argument("--owners", type=int, default=3_000)
    parser.add_argument("--per-owner", type=int, default=100)
    parser.add_argument("--big", type=int, default=50_000)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--recall-queries",
        type=int,
        default=200,
        help="queries asked of the big owner for its semantic recall only, beside the timed",
    )
    parser.add_argument("--quick", action="store_true", help="300 owners, a big one of 5,000")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument(
        "--flat",
        action="store_true",
        help="each topic one cloud of equidistant memories (the worst case; see _clustered)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.owners, args.big, args.sample, args.queries, args.rounds = 300, 5_000, 5, 5, 1
        args.recall_queries = 20
    report(asyncio.run(_measure(args)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

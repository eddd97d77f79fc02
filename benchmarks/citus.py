"""``python -m benchmarks.citus``: what a Citus cluster costs per call, beside one server.

The same memories (N, hashing vectors, held by 100 owners) in a store on one embedded server
and in a store distributed by owner on a Citus cluster (a coordinator and two workers on this
machine, started from ../shared/citus unless ``--dsn`` names a coordinator). Rounds alternate;
p50 per call: ``store`` of one memory, ``retrieve``, semantic and hybrid search within one
owner, and semantic search across every owner (a fan-out to every shard, merged on the
coordinator). On one machine this measures routing — the coordinator's planning and the hop
to a worker — not a speed-up: the workers share the same two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.sql import Query

from .measure import save_json
from .run import _log, _start_server

OWNERS = 100
CITUS = Path(__file__).resolve().parents[1].parent / "shared" / "citus"


@contextlib.contextmanager
def _cluster(dsn: str | None) -> Any:
    """A coordinator's DSN: ``dsn``, or a cluster started (and stopped after) here."""
    if dsn:
        yield dsn
        return
    pg_config = (
        os.environ.get("PEPPERPY_PG_TEST_CITUS_PG_CONFIG")
        or subprocess.run(
            ["bash", str(CITUS / "build.sh"), sys.executable],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    folder = tempfile.mkdtemp(prefix="pepperpy-citus-bench-")
    script = str(CITUS / "cluster.sh")
    started = subprocess.run(
        ["bash", script, "start", pg_config, folder, "2", "9750"],
        capture_output=True,
        text=True,
        check=True,
    )
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", script, "stop", pg_config, folder], check=False)


@contextlib.asynccontextmanager
async def _loaded(config: PostgresConfig, size: int) -> AsyncIterator[PostgresStorage[str, Any]]:
    async with PostgresStorage[str, Any](config, HashingEmbedder(384)) as store:
        for owner in range(OWNERS):
            await store.store_many(
                [
                    (f"k{i}", f"note {i} about topic {i % 37} and place {i % 11}")
                    for i in range(owner, size, OWNERS)
                ],
                scope=MemoryScope.USER,
                scope_id=f"u{owner}",
            )
        yield store


def _calls(
    store: PostgresStorage[str, Any], number: int
) -> dict[str, Callable[[], Awaitable[Any]]]:
    owner = {"scope": MemoryScope.USER, "scope_id": f"u{number % OWNERS}"}
    text = f"topic {number % 37} place {number % 11}"
    return {
        "store": lambda: store.store(f"new{number}", f"a new note {number}", **owner),
        "retrieve": lambda: store.retrieve(f"k{number % OWNERS}", **owner),
        "semantic_owner": lambda: store.search(MemoryQuery(query=text, limit=10, **owner)),
        "hybrid_owner": lambda: store.search(
            MemoryQuery(query=text, index_type=MemoryIndex.HYBRID, limit=10, **owner)
        ),
        "semantic_all_owners": lambda: store.search(MemoryQuery(query=text, limit=10)),
    }


async def _p50s(store: PostgresStorage[str, Any], calls: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    for number in range(calls):
        for name, call in _calls(store, number).items():
            started = time.perf_counter()
            await call()
            samples.setdefault(name, []).append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


async def _run(size: int, calls: int, rounds: int, dsn: str | None) -> dict[str, Any]:
    single_server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-citus-one-")))
    results: dict[str, list[dict[str, float]]] = {"one_server": [], "cluster": []}
    shards = 0
    try:
        with _cluster(dsn) as coordinator:
            one = PostgresConfig(dsn=single_server.get_uri("postgres"), table="bench_one")
            many = PostgresConfig(
                dsn=coordinator, table=f"bench_{int(time.time())}", distribution="owner"
            )
            _log("loading both stores")
            async with _loaded(one, size) as alone, _loaded(many, size) as spread:
                shards = await spread.database.fetchval(
                    "shards",
                    Query(
                        "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = $1::regclass",
                        [spread.layout.qualified_table],
                    ),
                )
                for number in range(rounds):
                    _log(f"round {number + 1}")
                    results["one_server"].append(await _p50s(alone, calls))
                    results["cluster"].append(await _p50s(spread, calls))
    finally:
        single_server.cleanup()
    medians = {
        side: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        for side, runs in results.items()
    }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "memories": size,
        "owners": OWNERS,
        "calls_per_round": calls,
        "rounds": rounds,
        "cluster": "Citus 14.0.1, a coordinator and 2 workers on this machine",
        "shards": shards,
        "p50_ms": medians,
        "ratio_cluster_to_one_server": {
            name: medians["cluster"][name] / medians["one_server"][name]
            for name in medians["one_server"]
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.citus", description=__doc__)
    parser.add_argument("--size", type=int, default=5_000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="a Citus coordinator of your own")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    report = asyncio.run(_run(args.size, args.calls, args.rounds, args.dsn))
    for name, ratio in report["ratio_cluster_to_one_server"].items():
        one, cluster = report["p50_ms"]["one_server"][name], report["p50_ms"]["cluster"][name]
        print(f"{name:22} one server {one:7.2f} ms  cluster {cluster:7.2f} ms  {ratio:5.2f}x")
    save_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.replicas``: search throughput with 0 and 1 read replicas.

One embedded server with one embedded streaming replica (``embedded_replicas=1``), N memories
of 20 owners (hashing vectors, so no model is needed), and two stores on the same table: one
reading the primary only, one routing reads to the replica. Rounds alternate between them:
``--clients`` tasks each run owner-restricted semantic searches with the vector given for
``--seconds``; searches per second and p50 per round. Then write-then-search pairs (a
``store()`` and a search that must see it) through each: what read-your-writes costs.

On one machine a replica shares the primary's cores, so this shows what routing costs (the
wait for replay, the check of the replay position), not the speed-up of a replica on a
machine of its own.
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

from .measure import log, report


async def _throughput(
    store: PostgresStorage[str, Any], vectors: list[list[float]], clients: int, seconds: float
) -> tuple[float, float]:
    """Searches per second and p50 ms of ``clients`` tasks searching for ``seconds``."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(number: int) -> None:
        turn = number
        while time.perf_counter() < deadline:
            vector = vectors[turn % len(vectors)]
            owner = f"u{turn % 20}"
            started = time.perf_counter()
            await store.search(
                MemoryQuery(embedding=vector, limit=10, scope="user", scope_id=owner)
            )
            samples.append((time.perf_counter() - started) * 1000)
            turn += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    return len(samples) / (time.perf_counter() - started), statistics.median(samples)


async def _write_then_search(store: PostgresStorage[str, Any], pairs: int, tag: str) -> float:
    """p50 ms of a store() followed by a search that finds it."""
    samples = []
    for i in range(pairs):
        word = f"w{time.perf_counter_ns()}"  # a word only this memory holds
        started = time.perf_counter()
        await store.store(
            f"{tag}-{i}", {"content": f"pair {i}: {word}"}, scope="user", scope_id="writer"
        )
        found = await store.search(
            MemoryQuery(query=word, index_type="contextual", scope="user", scope_id="writer")
        )
        samples.append((time.perf_counter() - started) * 1000)
        assert found and found[0].entry.key == f"{tag}-{i}", "the write was not read back"
    return statistics.median(samples)


async def _measure(
    size: int, clients: int, seconds: float, rounds: int, pairs: int
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="pepperpy-replicas-")) / "postgres"
    base = {"data_dir": data_dir, "table": "bench", "max_size": clients}
    primary_only = PostgresStorage[str, Any](PostgresConfig(**base), HashingEmbedder(384))
    replicated = PostgresStorage[str, Any](
        PostgresConfig(**base, embedded_replicas=1), HashingEmbedder(384)
    )
    await primary_only.start()
    await replicated.start()
    try:
        log(f"loading {size} memories")
        await primary_only.store_many(
            {
                "key": f"k{i}",
                "value": {"content": f"note {i} about topic {i % 37} and {i % 101}"},
                "scope": "user",
                "scope_id": f"u{i % 20}",
            }
            for i in range(size)
        )
        vectors = [
            (await primary_only.query_vector(f"topic {i % 37} thing {i % 89}")).tolist()
            for i in range(200)
        ]
        # Both warm, and the replica has replayed the load.
        await _throughput(primary_only, vectors, clients, 1.0)
        await _throughput(replicated, vectors, clients, 1.0)
        per_round: dict[str, dict[str, list[float]]] = {
            "0_replicas": {"per_second": [], "p50_ms": []},
            "1_replica": {"per_second": [], "p50_ms": []},
        }
        for number in range(rounds):
            for name, store in (("0_replicas", primary_only), ("1_replica", replicated)):
                per_second, p50 = await _throughput(store, vectors, clients, seconds)
                per_round[name]["per_second"].append(per_second)
                per_round[name]["p50_ms"].append(p50)
            log(
                f"round {number + 1}: "
                + ", ".join(f"{k} {v['per_second'][-1]:.0f}/s" for k, v in per_round.items())
            )
        pair_p50 = {
            "0_replicas": await _write_then_search(primary_only, pairs, "plain"),
            "1_replica": await _write_then_search(replicated, pairs, "routed"),
        }
        stats = await replicated.stats()
    finally:
        await replicated.close()
        await primary_only.close()
    medians = {name: statistics.median(v["per_second"]) for name, v in per_round.items()}
    return {
        "size": size,
        "clients": clients,
        "seconds_per_round": seconds,
        "rounds": per_round,
        "searches_per_second": medians,
        "write_then_search_p50_ms": pair_p50,
        "replica": stats["replicas"][0],
        "primary_reads": stats["primary_reads"],
        "ratios": {
            "throughput_1_replica_over_0": medians["1_replica"] / medians["0_replicas"],
            "write_then_search_1_replica_over_0": pair_p50["1_replica"] / pair_p50["0_replicas"],
        },
        "note": (
            "replica and primary share this machine's cores: the ratio shows routing's cost, "
            "not a replica's speed-up"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    result = asyncio.run(_measure(args.size, args.clients, args.seconds, args.rounds, args.pairs))
    report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

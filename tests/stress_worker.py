"""The writers of the stress tests: tasks doing random operations on one owner's small key
space through one store, recording what each caller was told of its writes.

Imported by ``test_concurrent_writers.py``, and run as a process of its own
(``python tests/stress_worker.py CONFIG_FIELDS_JSON TASKS OPERATIONS SEED``), which prints
"ready" once its store has started and its outcomes as one JSON line at the end: several
processes are what a deployment runs.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections import Counter
from datetime import timedelta
from typing import Any

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryConnectionError,
    MemoryIndex,
    MemoryNotFoundError,
    MemoryOutcomeUnknownError,
    MemoryQuery,
    MemoryQuotaError,
    PostgresConfig,
    PostgresStorage,
)

OWNER = {"scope": "user", "scope_id": "ana"}
KEYS = [f"k{n}" for n in range(10)]
OPERATIONS = ("store", "store", "delete", "touch", "read_touch", "many", "get", "search", "tidy")


class Outcomes:
    """What the callers were told of each write: every stored value is a token of its own."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.acknowledged: set[str] = set()
        self.failed: set[str] = set()
        self.unknown: set[str] = set()
        """Tokens of writes reported MemoryOutcomeUnknownError: either is allowed."""

    def merge(self, other: Outcomes) -> None:
        self.errors.update(other.errors)
        self.acknowledged |= other.acknowledged
        self.failed |= other.failed
        self.unknown |= other.unknown

    def to_json(self) -> str:
        return json.dumps(
            {
                "errors": dict(self.errors),
                "acknowledged": sorted(self.acknowledged),
                "failed": sorted(self.failed),
                "unknown": sorted(self.unknown),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Outcomes:
        data = json.loads(text)
        outcomes = cls()
        outcomes.errors.update(data["errors"])
        outcomes.acknowledged = set(data["acknowledged"])
        outcomes.failed = set(data["failed"])
        outcomes.unknown = set(data["unknown"])
        return outcomes


async def workload(
    stores: list[PostgresStorage[str, Any]],
    *,
    tasks: int,
    operations: int,
    seed: int,
    prefix: str = "",
) -> Outcomes:
    """``tasks`` tasks of ``operations`` random operations each, spread over ``stores``."""
    outcomes = Outcomes()

    async def worker(number: int) -> None:
        rnd = random.Random(seed * 1000 + number)
        store = stores[number % len(stores)]
        for step in range(operations):
            operation = rnd.choice(OPERATIONS)
            tokens: list[str] = []
            try:
                if operation == "store":
                    tokens = [f"{prefix}{number}-{step}"]
                    await store.store(
                        rnd.choice(KEYS),
                        {"token": tokens[0]},
                        type="short_term",
                        dedupe=rnd.random() < 0.5,
                        **OWNER,
                    )
                elif operation == "delete":
                    await store.delete(rnd.choice(KEYS), **OWNER)
                elif operation == "touch":
                    await store.touch(rnd.sample(KEYS, 4), timedelta(minutes=5), **OWNER)
                elif operation == "read_touch":  # a read that refreshes what it reads
                    names = [("user", "ana", key) for key in rnd.sample(KEYS, 4)]
                    await store.values_by_owner(names, touch=timedelta(minutes=rnd.choice([5, 9])))
                elif operation == "many":
                    chosen = rnd.sample(KEYS, 4)
                    tokens = [f"{prefix}{number}-{step}-{key}" for key in chosen]
                    batch = [
                        (key, {"token": token}) for key, token in zip(chosen, tokens, strict=True)
                    ]
                    await store.store_many(batch, type="short_term", **OWNER)
                elif operation == "search":
                    index = rnd.choice([MemoryIndex.SEMANTIC, MemoryIndex.HYBRID])
                    await store.search(
                        MemoryQuery(query="token", index_type=index, limit=5, **OWNER)
                    )
                elif operation == "tidy":
                    await store.consolidate(scope="user", scope_id="ana")
                else:
                    await store.retrieve(rnd.choice(KEYS), **OWNER)
                outcomes.acknowledged.update(tokens)
            except MemoryNotFoundError:
                pass
            except MemoryOutcomeUnknownError:
                outcomes.errors["MemoryOutcomeUnknownError"] += 1
                outcomes.unknown.update(tokens)
            except (MemoryConnectionError, MemoryQuotaError) as exc:
                outcomes.errors[type(exc).__name__] += 1
                outcomes.failed.update(tokens)
                if type(exc).__name__ == "MemoryTimeoutError":
                    # Which call waited too long: the test's log shows the worker's stderr.
                    print(f"{operation} timed out: {exc}", file=sys.stderr, flush=True)

    await asyncio.gather(*(worker(number) for number in range(tasks)))
    return outcomes


async def _main(fields: str, tasks: int, operations: int, seed: int) -> None:
    config = PostgresConfig(**json.loads(fields))
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        print("ready", flush=True)
        outcomes = await workload(
            [store], tasks=tasks, operations=operations, seed=seed, prefix=f"p{seed}-"
        )
    print(outcomes.to_json(), flush=True)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))

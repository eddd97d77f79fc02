"""The demo: an assistant's memories stored and recalled on the embedded database.

Run it with ``python -m pepperpy_pg_memory demo`` (or ``pepperpy-memory demo``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from .config import PostgresConfig
from .models import MemoryQuery, MemorySearchResult
from .storage import PostgresStorage
from .types import MemoryIndex, MemoryScope, MemoryType

__all__ = ["DEMO_MEMORIES", "DEMO_QUERIES", "run_demo"]

# (key, text, type, scope, scope_id, metadata)
DEMO_MEMORIES: list[tuple[str, str, MemoryType, MemoryScope, str | None, dict[str, Any]]] = [
    (
        "ana-coffee",
        "Ana takes her coffee with oat milk and no sugar.",
        MemoryType.LONG_TERM,
        MemoryScope.USER,
        "ana",
        {"topic": "preferences"},
    ),
    (
        "ana-allergy",
        "Ana is allergic to peanuts; never suggest recipes that contain them.",
        MemoryType.LONG_TERM,
        MemoryScope.USER,
        "ana",
        {"topic": "health", "priority": 10},
    ),
    (
        "ana-trip",
        "Ana is planning a hiking trip to Patagonia in March.",
        MemoryType.EPISODIC,
        MemoryScope.USER,
        "ana",
        {"topic": "travel"},
    ),
    (
        "ana-kids",
        "Ana has two daughters, Lia (7) and Bea (4).",
        MemoryType.LONG_TERM,
        MemoryScope.USER,
        "ana",
        {"topic": "family"},
    ),
    (
        "bruno-lang",
        "Bruno wants every answer in Portuguese.",
        MemoryType.LONG_TERM,
        MemoryScope.USER,
        "bruno",
        {"topic": "preferences"},
    ),
    (
        "bruno-job",
        "Bruno works as a PostgreSQL database administrator in Lisbon.",
        MemoryType.SEMANTIC,
        MemoryScope.USER,
        "bruno",
        {"topic": "work"},
    ),
    (
        "s1-turn-1",
        "User asked how to reset the router after the internet went down.",
        MemoryType.SHORT_TERM,
        MemoryScope.SESSION,
        "session-42",
        {"role": "user"},
    ),
    (
        "s1-turn-2",
        "Assistant explained: unplug the router for thirty seconds, then wait for the green light.",
        MemoryType.SHORT_TERM,
        MemoryScope.SESSION,
        "session-42",
        {"role": "assistant"},
    ),
    (
        "task-draft",
        "Drafting the quarterly sales report; the revenue table still needs Q3 figures.",
        MemoryType.WORKING,
        MemoryScope.AGENT,
        "report-writer",
        {"topic": "task"},
    ),
    (
        "tool-weather",
        "To get a forecast, call the weather tool with a city name and a date.",
        MemoryType.PROCEDURAL,
        MemoryScope.AGENT,
        "assistant",
        {"topic": "tools"},
    ),
    (
        "fact-boiling",
        "Water boils at lower temperatures at high altitude, so pasta takes longer "
        "to cook in the mountains.",
        MemoryType.SEMANTIC,
        MemoryScope.GLOBAL,
        None,
        {"topic": "science"},
    ),
    (
        "policy-refund",
        "Company policy: refunds are possible within 30 days with a receipt.",
        MemoryType.LONG_TERM,
        MemoryScope.GLOBAL,
        None,
        {"topic": "policy"},
    ),
]

# (title, query)
DEMO_QUERIES: list[tuple[str, MemoryQuery]] = [
    (
        "Semantic: what should I avoid cooking for Ana? (Ana's memories only)",
        MemoryQuery(
            query="what food should I avoid when cooking for Ana?",
            index_type=MemoryIndex.SEMANTIC,
            scope=MemoryScope.USER,
            scope_id="ana",
            limit=3,
        ),
    ),
    (
        "Semantic: the user's internet stopped working (everyone's memories)",
        MemoryQuery(query="my wifi connection is broken", index_type=MemoryIndex.SEMANTIC, limit=3),
    ),
    (
        "Contextual: 'refund receipt' (full-text)",
        MemoryQuery(query="refund receipt", index_type=MemoryIndex.CONTEXTUAL, limit=3),
    ),
    (
        "Contextual with a typo: 'Patagnia hikng' (trigram fallback)",
        MemoryQuery(query="Patagnia hikng", index_type=MemoryIndex.CONTEXTUAL, limit=3),
    ),
    (
        "Hybrid: 'Lisbon database administrator' (semantic + full-text, fused)",
        MemoryQuery(query="Lisbon database administrator", index_type=MemoryIndex.HYBRID, limit=3),
    ),
    (
        "Hybrid, filtered: Ana's high-priority memories about eating",
        MemoryQuery(
            query="eating restrictions",
            index_type=MemoryIndex.HYBRID,
            scope=MemoryScope.USER,
            scope_id="ana",
            filter={"priority": {"$gte": 5}},
            limit=3,
        ),
    ),
]


def _print_results(title: str, results: Sequence[MemorySearchResult[Any]], out: TextIO) -> None:
    print(f"\n{title}", file=out)
    if not results:
        print("   (nothing recalled)", file=out)
    for rank, result in enumerate(results, 1):
        entry = result.entry
        owner = entry.scope.value + (f":{entry.scope_id}" if entry.scope_id else "")
        print(
            f"  {rank}. {result.score:6.3f}  [{entry.type.value}, {owner}] {entry.text}",
            file=out,
        )


async def run_demo(config: PostgresConfig | None = None, out: TextIO = sys.stdout) -> int:
    """Store the demo memories and show recall; returns how many memories were stored."""
    config = config or PostgresConfig(table="demo_memories")
    started = time.perf_counter()
    print(f"Starting the memory store on {config.describe_target()} ...", file=out)
    async with PostgresStorage[str, dict[str, Any]](config) as storage:
        print(
            f"Ready in {time.perf_counter() - started:.1f}s "
            f"(table {config.schema_name}.{config.table}, "
            f"{storage.layout.dimension}-d embeddings).",
            file=out,
        )
        await storage.clear()
        stored = await storage.store_many(
            {
                "key": key,
                "value": {"content": text},
                "type": memory_type,
                "scope": scope,
                "scope_id": scope_id,
                "metadata": metadata,
            }
            for key, text, memory_type, scope, scope_id, metadata in DEMO_MEMORIES
        )
        print(f"Stored {stored} memories across types and scopes.", file=out)
        for title, query in DEMO_QUERIES:
            _print_results(title, await storage.search(query), out)
        _print_results(
            "Similar to 'ana-trip' (stored vector, no re-embedding)",
            await storage.similar("ana-trip", limit=2),
            out,
        )
        print(f"\nLive memories: {await storage.count()}.", file=out)
    return stored

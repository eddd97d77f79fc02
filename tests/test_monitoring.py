"""stats() figures move when operations run; Prometheus sees the same numbers."""

from __future__ import annotations

from typing import Any

import pytest

from pepperpy_pg_memory import MemoryNotFoundError, MemoryQuery, PostgresStorage
from pepperpy_pg_memory.metrics import PrometheusCollector


async def test_stats_follow_the_operations(storage: PostgresStorage[str, Any]) -> None:
    before = await storage.stats()
    assert before["memories"] == 0 and before["operations"] == {}
    await storage.store_many((f"k{i}", f"text {i}") for i in range(20))
    await storage.store("one", "more text", passages=["first part", "second part"])
    for _ in range(3):
        await storage.search(MemoryQuery(query="text"))
    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("missing")
    after = await storage.stats()
    assert after["memories"] == 21
    operations = after["operations"]
    assert operations["search"]["count"] == 3 and operations["search"]["errors"] == 0
    assert operations["store_many"]["count"] == 1 and operations["store"]["count"] == 1
    assert operations["retrieve"]["errors"] == 1
    assert after["errors"] == {"MemoryNotFoundError": 1}
    assert sum(operations["search"]["histogram_ms"].values()) == 3
    assert operations["search"]["p95_ms_at_most"] >= operations["search"]["p50_ms_at_most"]
    assert after["pool"]["waiting"] == 0 and after["pool"]["size"] >= 1
    assert set(after["index_bytes"]) >= {
        f"{storage.config.table}_embedding_idx",
        f"{storage.config.table}_terms_idx",
        f"{storage.config.table}_trgm_idx",
    }
    assert after["total_bytes"] > before["total_bytes"]
    assert after["embedding_cache"]["hits"] >= 2  # the repeated query was embedded once
    assert after["passages"] == 2 and before["passages"] == 0
    assert before["by_type"] == {} and after["by_type"] == {"long_term": 21}
    await storage.store("ana", "x", type="short_term", scope="user", scope_id="ana")
    await storage.store("gone", "x", scope="user", scope_id="ana", ttl=0.001)
    counts = await storage.stats()
    assert counts["by_type"] == {"long_term": 21, "short_term": 1}  # the expired one is gone
    assert counts["by_owner"] == {"global": 21, "user:ana": 1}
    # A fact that stopped being true is not counted, in the total or in its breakdowns (they
    # disagreed: 7 memories, per type 8).
    await storage.invalidate("ana", scope="user", scope_id="ana")
    counts = await storage.stats()
    assert counts["memories"] == sum(counts["by_type"].values()) == 21
    assert counts["by_owner"] == {"global": 21}
    assert after["embedder"] == "hashing/64" and after["dimension"] == 64
    assert after["queued_stores"] == 0
    # A new table has nothing to backfill: not pending from the start.
    assert (await storage.stats())["backfill_pending"] is False


async def test_prometheus_collector_exports_histograms_and_errors(
    storage: PostgresStorage[str, Any],
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    await storage.store("k", "v")
    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("nope")
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(storage))
    text = generate_latest(registry).decode()
    table = storage.config.table
    assert (
        f'pepperpy_memory_operation_seconds_count{{operation="store",table="{table}"}} 1.0' in text
    )
    assert (
        f'pepperpy_memory_errors_total{{error="MemoryNotFoundError",table="{table}"}} 1.0' in text
    )


@pytest.fixture(scope="module")
def spans() -> Any:
    """Finished OpenTelemetry spans, through the SDK's in-memory exporter."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The global provider can be set once per process; this module is the only one to set it.
    trace.set_tracer_provider(provider)
    return exporter


async def test_each_operation_is_an_opentelemetry_span(
    storage: PostgresStorage[str, Any], spans: Any
) -> None:
    spans.clear()
    await storage.store("span-key", "a secret the span must not carry")
    await storage.search(MemoryQuery(query="secret"))
    with pytest.raises(MemoryNotFoundError):
        await storage.retrieve("span-key-missing")
    finished = {span.name: span for span in spans.get_finished_spans()}
    assert {"pepperpy_memory.store", "pepperpy_memory.search", "pepperpy_memory.retrieve"} <= set(
        finished
    )
    search = finished["pepperpy_memory.search"]
    assert search.attributes == {"db.system": "postgresql", "pepperpy.operation": "search"}
    assert search.status.is_ok
    failed = finished["pepperpy_memory.retrieve"]
    assert not failed.status.is_ok and failed.status.description == "MemoryNotFoundError"
    assert failed.attributes["error.type"] == "MemoryNotFoundError"
    for span in finished.values():  # keys and contents stay out of telemetry
        seen = repr((span.attributes, span.status.description, [e.attributes for e in span.events]))
        assert "secret" not in seen and "span-key" not in seen

"""What a store measures about itself: latency histograms and error counts per operation,
tasks waiting for a connection, and optional OpenTelemetry spans and Prometheus export.

Nothing here touches the database; :meth:`PostgresStorage.stats` adds the database's figures.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

__all__ = ["Metrics", "OperationStats", "instrumented", "PrometheusCollector", "BUCKETS_MS"]

logger = logging.getLogger("pepperpy_pg_memory")

BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000)
"""Upper bounds (milliseconds) of the latency histogram buckets; one more bucket is +inf."""

try:  # OpenTelemetry is optional: spans only when the API is installed.
    from opentelemetry import trace as _trace

    _tracer: Any = _trace.get_tracer("pepperpy_pg_memory")
except ImportError:  # pragma: no cover - depends on the environment
    _tracer = None


@dataclass
class OperationStats:
    """Latency histogram and counters of one operation."""

    count: int = 0
    errors: int = 0
    total_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))

    def observe(self, elapsed_ms: float, failed: bool) -> None:
        self.count += 1
        self.errors += failed
        self.total_ms += elapsed_ms
        self.buckets[bisect.bisect_left(BUCKETS_MS, elapsed_ms)] += 1

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile ``q`` (an estimate, in ms)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, hits in zip((*BUCKETS_MS, float("inf")), self.buckets, strict=True):
            seen += hits
            if seen >= rank:
                return bound
        return float("inf")  # pragma: no cover

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "errors": self.errors,
            "mean_ms": self.total_ms / self.count if self.count else None,
            "p50_ms_at_most": self.quantile(0.5),
            "p95_ms_at_most": self.quantile(0.95),
            "histogram_ms": {
                ("+inf" if bound == float("inf") else str(bound)): hits
                for bound, hits in zip((*BUCKETS_MS, float("inf")), self.buckets, strict=True)
            },
        }


class Metrics:
    """Per-store counters, kept in memory, reset only with the store object."""

    def __init__(self) -> None:
        self.operations: dict[str, OperationStats] = {}
        self.errors: dict[str, int] = {}
        self.waiting = 0

    @contextlib.contextmanager
    def measure(self, operation: str) -> Iterator[None]:
        # Exceptions are not recorded on the span as OpenTelemetry would by default: their
        # messages can name keys. The span gets the error's class instead.
        span = (
            _tracer.start_as_current_span(
                f"pepperpy_memory.{operation}",
                attributes={"db.system": "postgresql", "pepperpy.operation": operation},
                record_exception=False,
                set_status_on_exception=False,
            )
            if _tracer is not None
            else contextlib.nullcontext()
        )
        started = time.perf_counter()
        failed = False
        with span as current:
            try:
                yield
            except BaseException as exc:
                failed = True
                name = type(exc).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
                if current is not None:
                    current.set_attribute("error.type", name)
                    current.set_status(_trace.Status(_trace.StatusCode.ERROR, name))
                # Contents and keys stay out of logs: only what failed and how.
                logger.debug("%s failed: %s", operation, name)
                raise
            finally:
                elapsed_ms = (time.perf_counter() - started) * 1000
                self.operations.setdefault(operation, OperationStats()).observe(elapsed_ms, failed)
                logger.debug("%s took %.2f ms", operation, elapsed_ms)


P = ParamSpec("P")
R = TypeVar("R")


def instrumented(
    operation: str,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Time a storage coroutine method, count its errors, wrap it in a span."""

    def decorate(method: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(method)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            metrics: Metrics = args[0].metrics  # type: ignore[attr-defined]
            with metrics.measure(operation):
                return await method(*args, **kwargs)

        return wrapper

    return decorate


class _Configured(Protocol):
    @property
    def table(self) -> str: ...


class MeasuredStore(Protocol):
    """What the collector reads of a store (a :class:`~.storage.PostgresStorage`)."""

    @property
    def config(self) -> _Configured: ...

    @property
    def metrics(self) -> Metrics: ...


class PrometheusCollector:
    """Exposes a store's operation histograms and error counts to ``prometheus_client``.

    Examples:
        >>> from prometheus_client import REGISTRY
        >>> REGISTRY.register(PrometheusCollector(storage))  # doctest: +SKIP
    """

    def __init__(self, storage: MeasuredStore, name: str = "pepperpy_memory") -> None:
        self.storage = storage
        self.name = name

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        histogram = HistogramMetricFamily(
            f"{self.name}_operation_seconds",
            "Duration of memory store operations",
            labels=["operation", "table"],
        )
        table = self.storage.config.table
        for operation, stats in self.storage.metrics.operations.items():
            cumulative = 0
            buckets = []
            for bound, hits in zip((*BUCKETS_MS, float("inf")), stats.buckets, strict=True):
                cumulative += hits
                label = "+Inf" if bound == float("inf") else str(bound / 1000)
                buckets.append((label, cumulative))
            histogram.add_metric([operation, table], buckets, stats.total_ms / 1000)
        yield histogram
        errors = CounterMetricFamily(
            f"{self.name}_errors",
            "Failed memory store operations by error class",
            labels=["error", "table"],
        )
        for error, count in self.storage.metrics.errors.items():
            errors.add_metric([error, table], count)
        yield errors

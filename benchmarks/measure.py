"""Timing helpers and the record every measurement produces."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Measurement:
    """One row of results: a named operation of one system at one size."""

    name: str
    system: str
    mode: str  # "storage" (vectors given) or "end_to_end" (the default model embeds)
    size: int
    unit: str
    throughput: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, environment: dict[str, Any]) -> dict[str, Any]:
        return {**asdict(self), **environment}


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    """Seconds ``work`` took."""
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def latencies(calls: Sequence[Callable[[], Awaitable[Any]]], warmup: int = 5) -> list[float]:
    """Milliseconds of each call, run one after another after ``warmup`` untimed calls."""
    for call in calls[:warmup]:
        await call()
    out = []
    for call in calls:
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def p50_ms(calls: Sequence[Callable[[], Awaitable[Any]]]) -> float:
    """Median milliseconds of ``calls``, run one after another, none untimed (writes, whose
    warm-up would write twice)."""
    return statistics.median(await latencies(calls, warmup=0))


def latency_row(
    name: str, system: str, mode: str, size: int, samples: list[float], **extra: Any
) -> Measurement:
    values = np.asarray(samples)
    return Measurement(
        name=name,
        system=system,
        mode=mode,
        size=size,
        unit="queries/s",
        throughput=float(1000 / values.mean()),
        p50_ms=float(np.percentile(values, 50)),
        p95_ms=float(np.percentile(values, 95)),
        count=len(samples),
        extra=extra,
    )


def rate_row(
    name: str, system: str, mode: str, size: int, count: int, seconds: float, **extra: Any
) -> Measurement:
    return Measurement(
        name=name,
        system=system,
        mode=mode,
        size=size,
        unit="entries/s",
        throughput=count / seconds,
        p50_ms=seconds * 1000 / count,  # per-entry latency within the batch
        count=count,
        extra={"seconds": seconds, **extra},
    )


def log(message: str) -> None:
    """A timestamped progress line on stderr (results go to stdout and --out)."""
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def save_json(result: dict[str, Any], out: Path | str | None) -> None:
    """Write a benchmark's result to ``out`` as indented JSON (nothing when None)."""
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def report(result: dict[str, Any], out: Path | None) -> None:
    """Print a benchmark's JSON result, and write it to ``out`` when given."""
    print(json.dumps(result, indent=2))
    save_json(result, out)


async def search_p50(searches: Iterable[tuple[Any, Any]]) -> float:
    """Median milliseconds of ``store.search(query)`` over ``(store, query)`` pairs, in order."""
    times = []
    for store, query in searches:
        begun = time.perf_counter()
        await store.search(query)
        times.append((time.perf_counter() - begun) * 1000)
    return statistics.median(times)

"""The default model per embedding backend: one query's latency and batch throughput.

``python -m benchmarks.backends [--rounds 5] [--out FILE]``: the same process, backends
alternating round by round (the host's speed drifts), sentences from the benchmark corpus.
Reports p50 of single-query embedding and sentences/s in batches of 32 for sentence-transformers
on torch and for onnxruntime, the ratios between them, and the smallest cosine between their
vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pepperpy_pg_memory import OnnxEmbedder, SentenceTransformerEmbedder

from .corpus import memories, questions


async def _measure(rounds: int) -> dict[str, Any]:
    backends: dict[str, Any] = {"torch": SentenceTransformerEmbedder(), "onnx": OnnxEmbedder()}
    texts = [m.text for m in memories(512)]
    asked = questions(200)
    for embedder in backends.values():  # load, export if needed, warm up
        await embedder.embed_documents(texts[:32])
    query_ms: dict[str, list[float]] = {name: [] for name in backends}
    per_second: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, embedder in backends.items():
            samples = []
            for question in asked:
                started = time.perf_counter()
                await embedder.embed_query(question)
                samples.append((time.perf_counter() - started) * 1000)
            query_ms[name].append(statistics.median(samples))
            started = time.perf_counter()
            for start in range(0, len(texts), 32):
                await embedder.embed_documents(texts[start : start + 32])
            per_second[name].append(len(texts) / (time.perf_counter() - started))
    torch_vectors = np.asarray(await backends["torch"].embed_documents(texts + asked))
    onnx_vectors = np.asarray(await backends["onnx"].embed_documents(texts + asked))
    query = {name: statistics.median(values) for name, values in query_ms.items()}
    throughput = {name: statistics.median(values) for name, values in per_second.items()}
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "query_p50_ms": query,
        "batch_sentences_per_second": throughput,
        "query_ratio_onnx_over_torch": query["onnx"] / query["torch"],
        "throughput_ratio_onnx_over_torch": throughput["onnx"] / throughput["torch"],
        "min_cosine_onnx_vs_torch": float(np.min(np.sum(torch_vectors * onnx_vectors, axis=1))),
        "rounds": {"query_ms": query_ms, "sentences_per_second": per_second},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args()
    result = asyncio.run(_measure(args.rounds))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    q, t = result["query_p50_ms"], result["batch_sentences_per_second"]
    print(
        f"query p50: torch {q['torch']:.2f} ms, onnx {q['onnx']:.2f} ms "
        f"({result['query_ratio_onnx_over_torch']:.2f}x); batches of 32: torch "
        f"{t['torch']:.0f}/s, onnx {t['onnx']:.0f}/s "
        f"({result['throughput_ratio_onnx_over_torch']:.2f}x); min cosine "
        f"{result['min_cosine_onnx_vs_torch']:.6f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

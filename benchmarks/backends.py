"""The default model per embedding backend: one query's latency and batch throughput.

``python -m benchmarks.backends [--rounds 5] [--out FILE]``: the same process, backends
alternating round by round (the host's speed drifts), sentences from the benchmark corpus.
Reports p50 of single-query embedding and sentences/s in batches of 32 for sentence-transformers
on torch, for onnxruntime (fp32) and for its int8 variant, the ratios to torch, the smallest
cosine between each one's vectors and torch's, and each one's top-3 agreement with torch on
the corpus questions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from pepperpy_pg_memory import OnnxEmbedder, SentenceTransformerEmbedder

from .corpus import NAMES, memories, questions
from .measure import save_json

# What each question form of the corpus asks about: the topic of the memories that answer it.
_ASKS = {
    "like to drink": "drinks",
    "books does": "reads",
    "sport or instrument": "plays",
    "food does": "cooks",
    "like to go": "visits",
    "allergic to anything": "allergic",
    "'s job": "as",
    "travelling to": "planning",
}


def _answers(question: str) -> tuple[str, str] | None:
    """The (user, topic) whose memories answer ``question``, read off its template."""
    topic = next((t for form, t in _ASKS.items() if form in question), None)
    name = next((n for n in NAMES if f" {n} " in f" {question} " or f"{n}'s" in question), None)
    return None if topic is None or name is None else (name.lower(), topic)


async def _measure(rounds: int) -> dict[str, Any]:
    backends: dict[str, Any] = {
        "torch": SentenceTransformerEmbedder(),
        "onnx": OnnxEmbedder(),
        "onnx-int8": OnnxEmbedder(variant="int8"),
    }
    corpus = memories(512)
    texts = [m.text for m in corpus]
    # Hit rates over 1000 questions (801 answerable): at 200, one question is 0.006 of hit@1,
    # and the batch a sentence is quantised in moves int8's hit@1 by that much.
    asked = questions(1000)
    timed = asked[:200]
    for embedder in backends.values():  # load, export if needed, warm up
        await embedder.embed_documents(texts[:32])
    query_ms: dict[str, list[float]] = {name: [] for name in backends}
    per_second: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, embedder in backends.items():
            samples = []
            for question in timed:
                started = time.perf_counter()
                await embedder.embed_query(question)
                samples.append((time.perf_counter() - started) * 1000)
            query_ms[name].append(statistics.median(samples))
            started = time.perf_counter()
            for start in range(0, len(texts), 32):
                await embedder.embed_documents(texts[start : start + 32])
            per_second[name].append(len(texts) / (time.perf_counter() - started))
    vectors = {
        name: np.asarray(await embedder.embed_documents(texts + asked))
        for name, embedder in backends.items()
    }

    def top3(matrix: Any) -> Any:
        scores = matrix[len(texts) :] @ matrix[: len(texts)].T
        return np.argsort(-scores, axis=1)[:, :3]

    reference = top3(vectors["torch"])

    def hit_rates(matrix: Any) -> dict[str, float]:
        """Share of answerable questions whose first (or first three) results answer them."""
        scores = matrix[len(texts) :] @ matrix[: len(texts)].T
        first = second = total = 0
        for question, row in zip(asked, scores, strict=True):
            wanted = _answers(question)
            relevant = {i for i, m in enumerate(corpus) if wanted and (m.user, m.topic) == wanted}
            if not relevant:
                continue
            ranked = np.argsort(-row)[:3].tolist()
            total += 1
            first += ranked[0] in relevant
            second += bool(relevant & set(ranked))
        return {"hit_at_1": first / total, "hit_at_3": second / total, "questions": total}

    query = {name: statistics.median(values) for name, values in query_ms.items()}
    throughput = {name: statistics.median(values) for name, values in per_second.items()}
    others = [name for name in backends if name != "torch"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "query_p50_ms": query,
        "batch_sentences_per_second": throughput,
        "query_ratio_over_torch": {name: query[name] / query["torch"] for name in others},
        "throughput_ratio_over_torch": {
            name: throughput[name] / throughput["torch"] for name in others
        },
        "min_cosine_vs_torch": {
            name: float(np.min(np.sum(vectors["torch"] * vectors[name], axis=1))) for name in others
        },
        "hit_rates": {name: hit_rates(vectors[name]) for name in backends},
        "top3_same_as_torch": {
            name: float(
                np.mean(
                    [set(a) == set(b) for a, b in zip(top3(vectors[name]), reference, strict=True)]
                )
            )
            for name in others
        },
        "rounds": {"query_ms": query_ms, "sentences_per_second": per_second},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args()
    result = asyncio.run(_measure(args.rounds))
    save_json(result, args.out)
    q, t = result["query_p50_ms"], result["batch_sentences_per_second"]
    print(f"torch: query p50 {q['torch']:.2f} ms, batches of 32 {t['torch']:.0f}/s")
    for name, rates in result["hit_rates"].items():
        print(
            f"{name}: hit@1 {rates['hit_at_1']:.3f}, hit@3 {rates['hit_at_3']:.3f} "
            f"over {rates['questions']} answerable questions"
        )
    for name in result["query_ratio_over_torch"]:
        print(
            f"{name}: query p50 {q[name]:.2f} ms ({result['query_ratio_over_torch'][name]:.2f}x),"
            f" batches {t[name]:.0f}/s ({result['throughput_ratio_over_torch'][name]:.2f}x), "
            f"min cosine {result['min_cosine_vs_torch'][name]:.4f}, "
            f"top-3 as torch {result['top3_same_as_torch'][name]:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

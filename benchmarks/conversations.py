"""``python -m benchmarks.conversations``: recall on long multi-session conversations.

The development set (:mod:`benchmarks.dialogues`, committed as ``conversations-dev.json``)
is stored two ways, each conversation as the memories of its own owner:

- ``turns``: every turn a memory of its own (key = turn id, text = "Speaker: text") through
  ``store_many`` — how the issue measured the store;
- ``conversation``: every session through ``store_conversation`` (each turn indexed with its
  date, the turns before it and its resolved relative dates);
- ``conversation_reranked``: the same, HYBRID for 20 candidates re-ranked by
  :class:`~pepperpy_pg_memory.reranking.LateInteractionReranker` (optional, not the default).

Each question is searched within its owner with ``limit=k`` in each mode. hit@k: at least one
answering turn in the top k; recall@k: the share of answering turns there. Both per question
kind; the search p50 per mode (embedding the question included). The model alone (exact cosine
over the turns' own vectors) is the reference row. Same run, same server, same model.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from pepperpy_pg_memory import (
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    PostgresConfig,
    PostgresStorage,
    Turn,
)
from pepperpy_pg_memory.embeddings import Embedder, default_embedder
from pepperpy_pg_memory.reranking import LateInteractionReranker

from .dialogues import DEV_SET, load
from .measure import save_json
from .run import _log, _prepare_database, _start_server

MODES = (MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID)
KINDS = ("single-hop", "context", "temporal", "multi-hop", "update")


def _scores(
    found: list[list[str]], questions: list[dict[str, Any]], k: int
) -> dict[str, dict[str, float]]:
    hits: dict[str, list[float]] = defaultdict(list)
    recalls: dict[str, list[float]] = defaultdict(list)
    for keys, question in zip(found, questions, strict=True):
        answers = set(question["turns"])
        top = set(keys[:k])
        for group in ("all", question["kind"]):
            hits[group].append(float(bool(top & answers)))
            recalls[group].append(len(top & answers) / len(answers))
    return {
        group: {
            f"hit@{k}": round(statistics.mean(hits[group]), 3),
            f"recall@{k}": round(statistics.mean(recalls[group]), 3),
            "questions": len(hits[group]),
        }
        for group in ("all", *KINDS)
        if hits[group]
    }


async def _load(store: PostgresStorage[str, Any], data: dict[str, Any], system: str) -> None:
    for conversation in data["conversations"]:
        owner = {"scope": MemoryScope.USER, "scope_id": conversation["id"]}
        if system == "turns":
            items = [
                {"key": t["id"], "value": t["text"], "text": f"{t['speaker']}: {t['text']}"}
                for session in conversation["sessions"]
                for t in session["turns"]
            ]
            await store.store_many(items, dedupe=False, **owner)
            continue
        for session in conversation["sessions"]:
            day = date.fromisoformat(session["date"])
            turns = [Turn(id=t["id"], speaker=t["speaker"], text=t["text"], at=day)
                     for t in session["turns"]]  # fmt: skip
            await store.store_conversation(session["id"], turns, **owner)
    await store.complete_backfills()
    await store.refresh_term_statistics()


RERANK_CANDIDATES = 20


async def _search_all(
    store: PostgresStorage[str, Any],
    questions: list[dict[str, Any]],
    mode: MemoryIndex,
    k: int,
    reranker: LateInteractionReranker | None = None,
) -> tuple[list[list[str]], list[float]]:
    """Each question searched within its owner: the top ``k`` keys and the seconds it took
    (with ``reranker``: :data:`RERANK_CANDIDATES` found, re-ranked to the top k)."""
    found, seconds = [], []
    for question in questions:
        query = MemoryQuery(
            query=question["question"],
            index_type=mode,
            limit=k if reranker is None else RERANK_CANDIDATES,
            scope=MemoryScope.USER,
            scope_id=question["conversation"],
        )
        started = time.perf_counter()
        results = await store.search(query)
        if reranker is not None:
            results = await reranker.rerank(question["question"], results, limit=k)
        seconds.append(time.perf_counter() - started)
        found.append([result.entry.key for result in results])
    return found, seconds


async def _model_alone(
    embedder: Embedder, data: dict[str, Any], questions: list[dict[str, Any]], k: int
) -> list[list[str]]:
    """Exact cosine over each conversation's turns ("Speaker: text"): the reference."""
    found = []
    for conversation in data["conversations"]:
        turns = [t for s in conversation["sessions"] for t in s["turns"]]
        keys = [t["id"] for t in turns]
        vectors = np.asarray(
            await embedder.embed_documents([f"{t['speaker']}: {t['text']}" for t in turns])
        )
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for question in questions:
            if question["conversation"] != conversation["id"]:
                continue
            query = np.asarray(await embedder.embed_query(question["question"]))
            order = np.argsort(-(vectors @ (query / np.linalg.norm(query))))[:k]
            found.append((question, [keys[i] for i in order]))
    by_question = {id(question): keys for question, keys in found}
    return [by_question[id(question)] for question in questions]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    data = load(args.data)
    if args.conversations:
        data["conversations"] = data["conversations"][: args.conversations]
        kept = {conversation["id"] for conversation in data["conversations"]}
        data["questions"] = [q for q in data["questions"] if q["conversation"] in kept]
    questions = data["questions"][: args.questions] if args.questions else data["questions"]
    embedder = default_embedder(args.backend)
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-conversations-")))
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "data": str(args.data.name),
        "conversations": len(data["conversations"]),
        "turns": sum(len(s["turns"]) for c in data["conversations"] for s in c["sessions"]),
        "questions": len(questions),
        "k": args.k,
        "embedder": getattr(embedder, "name", type(embedder).__name__),
        "systems": {},
    }
    try:
        report["database"] = await _prepare_database(server)
        dsn = server.get_uri("bench")
        _log("model alone")
        found = await _model_alone(embedder, data, questions, args.k)
        report["systems"]["model_alone_exact"] = {
            "semantic": {"scores": _scores(found, questions, args.k)}
        }
        for system in ("turns", "conversation"):
            config = PostgresConfig(dsn=dsn, table=f"conv_{system}")
            async with PostgresStorage[str, Any](config, embedder) as store:
                _log(f"{system}: storing")
                started = time.perf_counter()
                await _load(store, data, system)
                loaded = time.perf_counter() - started
                result: dict[str, Any] = {"load_seconds": round(loaded, 1)}
                for mode in MODES:
                    _log(f"{system}: {mode.value}")
                    await _search_all(store, questions[:20], mode, args.k)  # warm
                    found, seconds = await _search_all(store, questions, mode, args.k)
                    result[mode.value] = {
                        "scores": _scores(found, questions, args.k),
                        "p50_ms": round(statistics.median(seconds) * 1000, 2),
                    }
                report["systems"][system] = result
                if system == "conversation" and args.rerank:
                    _log("conversation: hybrid, re-ranked")
                    reranker = LateInteractionReranker()
                    hybrid = MemoryIndex.HYBRID
                    await _search_all(store, questions[:5], hybrid, args.k, reranker)  # warm
                    found, seconds = await _search_all(store, questions, hybrid, args.k, reranker)
                    report["systems"]["conversation_reranked"] = {
                        "hybrid": {
                            "scores": _scores(found, questions, args.k),
                            "p50_ms": round(statistics.median(seconds) * 1000, 2),
                            "candidates": RERANK_CANDIDATES,
                        }
                    }
    finally:
        server.cleanup()
    turns = report["systems"]["turns"]
    ours = report["systems"]["conversation"]
    hybrid = ours["hybrid"]["scores"]["all"]
    report["goal"] = {
        "hybrid_hit@5": 0.75,
        "hybrid_recall@5": 0.65,
        "hybrid_p50_vs_turns": 2.0,
    }
    report["hybrid_p50_vs_turns"] = round(ours["hybrid"]["p50_ms"] / turns["hybrid"]["p50_ms"], 2)
    if args.k == 5:
        report["met_on_dev_set"] = (
            hybrid["hit@5"] >= 0.75
            and hybrid["recall@5"] >= 0.65
            and report["hybrid_p50_vs_turns"] <= 2.0
        )
    return report


def _print(report: dict[str, Any]) -> None:
    k = report["k"]
    print(
        f"{'system':20} {'mode':11} {'p50 ms':>7} "
        + " ".join(f"{g[:10]:>12}" for g in ("all", *KINDS))
    )
    for system, modes in report["systems"].items():
        for mode, result in modes.items():
            if not isinstance(result, dict):
                continue
            cells = []
            for group in ("all", *KINDS):
                score = result["scores"].get(group)
                cells.append(
                    f"{score[f'hit@{k}']:.2f}/{score[f'recall@{k}']:.2f}" if score else "-"
                )
            p50 = result.get("p50_ms")
            print(f"{system:20} {mode:11} {p50 if p50 is not None else '-':>7} "
                  + " ".join(f"{cell:>12}" for cell in cells))  # fmt: skip
    print(f"(hit@{k}/recall@{k}; hybrid p50 vs turns: {report['hybrid_p50_vs_turns']}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conversations", description=__doc__)
    parser.add_argument("--data", type=Path, default=DEV_SET)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--conversations", type=int, default=0, help="only the first N (0: all)")
    parser.add_argument("--questions", type=int, default=0, help="only the first N (0: all)")
    parser.add_argument("--backend", default="onnx", choices=["onnx", "onnx-int8", "torch"])
    parser.add_argument(
        "--no-rerank",
        dest="rerank",
        action="store_false",
        help="leave out the re-ranked row (late interaction over the top 20)",
    )
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    report = asyncio.run(_run(args))
    _print(report)
    save_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

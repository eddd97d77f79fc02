"""`python -m benchmarks --quick` runs end to end and writes valid JSON (no timing asserted:
performance targets live in the benchmark report, not in tests)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.model
def test_quick_benchmark_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    # Its own short TMPDIR (the server's socket path must stay short).
    scratch = Path(tempfile.mkdtemp(prefix="bench-smoke-"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
        left = [p.name for p in scratch.iterdir() if p.name.startswith("pepperpy-bench-")]
    finally:
        shutil.rmtree(scratch)  # torch and platformdirs keep caches of their own there
    assert result.returncode == 0, result.stderr[-3000:]
    assert left == []  # the benchmark's server folder is gone
    report = json.loads(out.read_text())
    records = report["measurements"]
    names = {(r["name"], r["system"]) for r in records}
    assert ("semantic_search", "pepperpy-pg-memory") in names
    assert ("batch_insert", "langchain-postgres PGVectorStore") in names
    assert ("semantic_search", "langgraph AsyncPostgresStore") in names
    for record in records:
        assert {
            "name",
            "size",
            "unit",
            "p50_ms",
            "p95_ms",
            "throughput",
            "cpu_count",
            "versions",
        } <= set(record)
        assert record["throughput"] > 0
    sweep = [r for r in records if r["name"] == "ef_search_sweep"]
    assert {r["extra"]["ef_search"] for r in sweep} == {40, 100, 200}
    assert all(0 < r["throughput"] <= 1 for r in sweep)
    assert report["ratios"] and report["targets"] is not None
    assert "measurement" in result.stdout  # the readable table


def _run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.<module> *args`` on a server of its own (in a scratch folder
    removed afterwards); it must succeed."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{module}-smoke-"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{module}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
    finally:
        shutil.rmtree(scratch)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _run_small(module: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """:func:`_run_module` with ``--out``; the JSON it wrote."""
    out = tmp_path / f"{module}.json"
    _run_module(module, *args, "--out", str(out))
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_contextual_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small(
        "contextual",
        tmp_path,
        *("--hashing", "--noise", "50", "--size", "300", "--queries", "5"),
        *("--rounds", "1", "--write-rows", "100"),
    )
    identifiers = report["quality"]["identifiers"]
    # Word matching does not depend on the vectors: any-term BM25 finds the identifiers that
    # all-words matching misses, whatever the embedder.
    assert identifiers["contextual_any"]["hit_at_3"] >= 0.85
    assert identifiers["contextual_all"]["hit_at_3"] < identifiers["contextual_any"]["hit_at_3"]
    assert set(report["latency"]["ratio_any_over_all"]) >= {"contextual_all_kinds"}
    assert report["write_cost"]["rows"] == 100


def test_history_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small(
        "history",
        tmp_path,
        *("--random", "--size", "300", "--writes", "24", "--queries", "5", "--rounds", "1"),
    )
    assert set(report["ratios"]) == {
        "store_history_on_over_off",
        "update_history_on_over_off",
        "search_30pct_superseded_over_none",
        "as_of_before_over_current",
        "as_of_now_over_current",
    }
    assert report["write_p50_ms_per_round"]["store"]["on"]


def test_ingest_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small("ingest", tmp_path, "--size", "300", "--rounds", "1")
    assert set(report["rows_per_second"]) == {
        "raw_copy_hnsw",
        "everything_on",
        "no_history",
        "no_dedupe_check",
        "no_quota",
        "tenant_term_statistics",
        "row_triggers",
        "halfvec",
    }
    assert report["ratio_to_raw"]["raw_copy_hnsw"] == 1.0
    # Of 300 memories, an HNSW search at ef_search 100 finds nearly all exact neighbours.
    assert report["recall_at_10"]["vector"] >= 0.9
    assert report["recall_at_10"]["halfvec"] >= 0.9
    # Half-precision vectors take less room than full ones, the same memories.
    halfvec = report["disk_halfvec"]
    assert halfvec["ours_bytes_per_memory"] < report["disk"]["ours_bytes_per_memory"]
    # Every relation of the store is counted: the memories and their versions at least.
    largest = report["disk"]["largest_bytes_per_memory"]
    assert {"<table>", "<table>_history", "<table>_embedding_idx"} <= set(largest)
    assert report["disk"]["ours_bytes_per_memory"] >= sum(largest.values())
    assert all(len(values) == 1 for values in report["seconds"].values())


def test_ranking_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small(
        "ranking",
        tmp_path,
        *("--random", "--size", "300", "--queries", "6", "--rounds", "1", "--writes", "12"),
        *("--batch", "5"),
    )
    assert set(report["ratios"]) == {
        "ranked_over_plain",
        "counting_over_not_counting",
        "dedupe_store_over_store",
        "quota_store_over_store",
        "dedupe_batch_over_batch",
    }
    assert set(report["batch_p50_ms"]) == {"store_many", "store_many_dedupe"}
    assert set(report["p50_ms"]) == {"plain", "ranked", "plain_not_counting"}


def test_replicas_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small(
        "replicas",
        tmp_path,
        *("--size", "200", "--clients", "2", "--seconds", "0.3", "--rounds", "1", "--pairs", "5"),
    )
    assert set(report["ratios"]) == {
        "throughput_1_replica_over_0",
        "write_then_search_1_replica_over_0",
    }
    # The routed store's reads were served by the replica, which replayed every write first.
    assert report["replica"]["healthy"] and report["replica"]["errors"] == 0
    assert report["replica"]["operations"]["search"] > 0
    assert report["replica"]["waits"] >= 5


def test_floor_benchmark_splits_the_gap(tmp_path: Path) -> None:
    report = _run_small(
        "floor", tmp_path, "--size", "300", "--queries", "20", "--rounds", "1", "--no-model"
    )
    assert report["size"] == 300 and report["goal"] == 1.4
    assert len(report["ours_p50_ms"]) == len(report["floor_p50_ms"]) == len(report["sql_p50_ms"])
    # Our statement runs on the server (planned and executed), as does the floor's.
    for name in ("floor", "sql"):
        times = report["server_median_ms"][name]
        assert times["planning"] > 0 and times["execution"] > 0
    assert report["ratio"] > 0 and report["sql_ratio"] > 0
    assert report["end_to_end"] is None  # --no-model


@pytest.mark.model
def test_floor_benchmark_sets_search_from_text_beside_the_model_alone(tmp_path: Path) -> None:
    report = _run_small("floor", tmp_path, "--size", "300", "--queries", "10", "--rounds", "2")
    end_to_end = report["end_to_end"]
    assert end_to_end["goal"] == 1.2
    for name in ("ours", "model", "floor"):
        assert len(end_to_end["p50_ms_per_round"][name]) == 2
        assert all(ms > 0 for ms in end_to_end["p50_ms_per_round"][name])
    assert end_to_end["ratio"] > 0


@pytest.mark.model
def test_conversation_benchmark_writes_json(tmp_path: Path) -> None:
    report = _run_small("conversations", tmp_path, "--conversations", "1")
    assert report["conversations"] == 1 and report["questions"] > 0
    assert set(report["systems"]) == {
        "model_alone_exact",
        "turns",
        "conversation",
        "conversation_reranked",
    }
    reranked = report["systems"]["conversation_reranked"]["hybrid"]
    assert reranked["candidates"] == 20 and reranked["p50_ms"] > 0
    for system in ("turns", "conversation"):
        for mode in ("semantic", "contextual", "hybrid"):
            scores = report["systems"][system][mode]["scores"]["all"]
            assert 0 <= scores["recall@5"] <= scores["hit@5"] <= 1
            assert report["systems"][system][mode]["p50_ms"] > 0
    # Storing by turn alone, the model's semantic ranking is the exact reference's.
    exact = report["systems"]["model_alone_exact"]["semantic"]["scores"]["all"]["hit@5"]
    assert abs(report["systems"]["turns"]["semantic"]["scores"]["all"]["hit@5"] - exact) <= 0.05


def test_chat_appends_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small("chat_appends", tmp_path, "--sizes", "5", "40")
    assert [row["session_turns"] for row in report["rows"]] == [5, 40]
    assert all(row["append_p50_ms"] > 0 and row["store_p50_ms"] > 0 for row in report["rows"])


def test_ingest_profile_names_where_the_time_goes() -> None:
    lines = _run_module("ingest", "--size", "300", "--profile").stdout.splitlines()
    assert "the whole store_many" in lines[0]
    assert any("WITH merged AS (INSERT INTO" in line for line in lines)


def test_bursts_profile_times_reads_and_refreshes_apart() -> None:
    lines = _run_module("bursts", "--profile", "--count", "200", "--fillfactor", "50").stdout
    found = dict(line.split(maxsplit=1) for line in lines.splitlines() if line.strip())
    assert {"burst_get_ttl", "burst_get_ttl_aged", "reads", "refreshes", "rows", "kept"} <= set(
        found
    )
    # The aging rewrites all 200 items, in place at 50%; the aged reads write a refresh of
    # each beside it, and no memory's row.
    assert found["rows"].startswith("updated      200 (200 in place)")
    assert found["kept"].startswith("200 refreshes")


def test_owners_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small(
        "owners",
        tmp_path,
        *("--owners", "40", "--big", "600", "--sample", "3", "--queries", "3", "--rounds", "1"),
    )
    groups = ("small", "big")
    modes = ("semantic", "contextual", "hybrid")
    assert set(report["ratio_shared_over_alone"]) == {f"{g}_{m}" for g in groups for m in modes}
    # Exact search over the owner's own vectors finds what an owner this small holds.
    assert report["quality"]["small_semantic_recall_at_10"] == 1.0
    # Term statistics are per owner: the shared table ranks words as the owner's own does.
    assert report["quality"]["small_contextual_agreement_at_10"] == 1.0
    assert all("Scan" in line for line in report["plans"]["big"])
    # The big owner's recall counts its 12 timed queries and --recall-queries' 200 more.
    assert report["semantic_recall_queries"] == {"small": 3 * 3, "big": 3 * 4 + 200}
    assert set(report["big_semantic_recall_at_10_by_ef_search"]) == {"40", "100", "200"}
    after = report["after_retiring_30_percent"]
    assert after["memories_retired"] == 3 * 30 + 180  # 30% of three owners of 100 and of 600
    # Expired and superseded memories are never returned: the live ones are found as before.
    assert after["quality"]["small_semantic_recall_at_10"] == 1.0


def test_owner_writes_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small(
        "owner_writes",
        tmp_path,
        *("--owners", "3", "--per-owner", "20", "--big", "300", "--writes", "5", "--rounds", "2"),
    )
    calls = {"store", "update", "retrieve", "delete", "store_many"}
    assert set(report["ratio_big_over_small"]) == calls
    assert all(
        len(report["ms_per_round"][kind][call]) == 2 for kind in ("small", "big") for call in calls
    )
    # Each round stores, rewrites and deletes 5 memories, then writes a batch of 5: nothing
    # the owners held is lost, and no new note was folded into another.
    assert report["held_after"] == {"small": 20 + 2 * 5, "big": 300 + 2 * 5}


def test_bursts_benchmark_runs_small(tmp_path: Path) -> None:
    report = _run_small("bursts", tmp_path, "--count", "200")
    names = {(row["name"], row["system"]) for row in report["results"]}
    both = {"pepperpy-pg-memory PepperpyStore", "langgraph AsyncPostgresStore"}
    ttl_bursts = ("burst_get_ttl", "burst_get_ttl_aged")
    for name in (*ttl_bursts, *(f"{name}_long" for name in ttl_bursts), "burst_mixed_ttl"):
        assert {system for burst, system in names if burst == name} == both
    # Every burst with a goal has its ratio, once.
    ratios = [ratio["name"] for ratio in report["ratios"]]
    assert sorted(ratios) == sorted(set(ratios))
    assert {"burst_get_ttl", "burst_get_ttl_aged", "burst_mixed_ttl"} <= set(ratios)
    assert "burst_get_ttl_aged_long" in ratios
    mixed = [row for row in report["results"] if row["name"] == "burst_mixed_ttl"]
    assert all(row["extra"]["failures"] == 0 for row in mixed)

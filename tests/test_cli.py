"""The pepperpy-memory command, driven as a user would: a subprocess, exit codes, JSON on
stdout, progress and summaries on stderr."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_until
from pepperpy_pg_memory import backup


def _cli(
    *args: str, stdin: str | None = None, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pepperpy_pg_memory", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        env={**os.environ, **(env_extra or {})},
    )


@pytest.fixture
def target(pg_dsn: str, test_schema: str) -> list[str]:
    return ["--dsn", pg_dsn, "--schema", test_schema, "--table", f"cli_{uuid.uuid4().hex[:8]}"]


def test_every_command_has_help() -> None:
    top = _cli("--help")
    assert top.returncode == 0
    for command in (
        "demo",
        "init",
        "migrate",
        "store",
        "list",
        "get",
        "delete",
        "history",
        "restore",
        "search",
        "import",
        "export",
        "reindex",
        "backfill",
        "consolidate",
        "mcp",
        "ui",
        "cleanup",
        "index-owner",
        "stats",
    ):
        assert command in top.stdout
        sub = _cli(command, "--help")
        assert sub.returncode == 0 and "--dsn" in sub.stdout, command


def test_help_says_the_defaults() -> None:
    assert "(default: hybrid)" in " ".join(_cli("search", "--help").stdout.split())
    assert "(default: long_term)" in " ".join(_cli("store", "--help").stdout.split())
    # An option whose default comes from a secret's variable names the variable, not it.
    shown = _cli("mcp", "--help", env_extra={"PEPPERPY_MCP_TOKEN": "s3cret-value"})
    assert "s3cret-value" not in shown.stdout and "$PEPPERPY_MCP_TOKEN" in shown.stdout


def test_help_loads_no_database_driver_and_no_model() -> None:
    # --help, a usage error and the package's names cost an import of the light modules:
    # asyncpg, torch, transformers and onnxruntime wait for a command that needs them.
    probe = textwrap.dedent(
        """
        import sys
        import pepperpy_pg_memory
        from pepperpy_pg_memory import MemoryQuery, PostgresConfig
        from pepperpy_pg_memory.cli import main
        for argv in (["--help"], ["store", "--help"], ["search", "--nope"]):
            try:
                main(argv)
            except SystemExit:
                pass
        heavy = ("asyncpg", "torch", "transformers", "onnxruntime", "sentence_transformers")
        print(sorted(name for name in heavy if name in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_connection_options_before_the_command_and_json_everywhere(
    pg_dsn: str, test_schema: str
) -> None:
    server = ["--dsn", pg_dsn, "--schema", test_schema]
    before, after = f"cli_{uuid.uuid4().hex[:8]}", f"cli_{uuid.uuid4().hex[:8]}"
    # Options before the command name count; given after it too, the later one wins.
    init = _cli(*server, "--table", before, "init", "--json")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["table"] == before
    # A table init made has nothing to backfill, and says so at once.
    stats = _cli(*server, "--table", before, "stats", "--json")
    assert json.loads(stats.stdout)["backfill_pending"] is False
    migrated = _cli(*server, "--table", before, "migrate", "--json", "--table", after)
    assert json.loads(migrated.stdout)["table"] == after
    reindexed = _cli("reindex", "contextual", "--json", *server, "--table", after)
    assert json.loads(reindexed.stdout) == {"reindexed": 0, "index": "contextual"}
    backfilled = _cli("backfill", "--json", *server, "--table", after)
    assert json.loads(backfilled.stdout) == {"backfilled": 0}
    # The demo tells a story and offers no --json.
    assert _cli("demo", "--json").returncode == 2


def test_progress_bars_use_rich_when_installed_and_plain_text_otherwise(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pepperpy_pg_memory import cli

    with cli.progress_bar("reindexing semantic") as progress:
        for done in range(0, 41, 10):
            progress(done, 40)
    drawn = capsys.readouterr().err
    assert "reindexing semantic" in drawn and "40/40" in drawn and "[" not in drawn

    monkeypatch.setitem(sys.modules, "rich.progress", None)  # as if the extra were missing
    with cli.progress_bar("importing") as progress:
        progress(40, 40)
        progress(40, 40)  # completion reported twice draws one last line
    assert capsys.readouterr().err == "\rimporting [" + "#" * 30 + "] 40/40\n"


@pytest.mark.model
def test_store_get_search_delete_round_trip(target: list[str]) -> None:
    assert _cli("init", *target).stdout.startswith("ready:")
    stored = _cli(
        "store",
        "ana-tea",
        "Ana drinks green tea every morning",
        "--scope",
        "user",
        "--scope-id",
        "ana",
        "--metadata",
        '{"topic": "food"}',
        "--json",
        *target,
    )
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["scope_id"] == "ana"
    got = json.loads(_cli("get", "ana-tea", "--json", *target).stdout)
    assert got["value"] == "Ana drinks green tea every morning"
    assert got["metadata"] == {"topic": "food"}
    found = _cli(
        "search", "what does Ana drink?", "--scope", "user", "--scope-id", "ana", "--json", *target
    )
    hits = json.loads(found.stdout)
    assert hits[0]["entry"]["key"] == "ana-tea" and 0 < hits[0]["score"] <= 1
    assert _cli("store", "order", "Order A-77812 shipped on Monday", *target).returncode == 0
    question = _cli(
        "search", "has A-77812 been sent yet?", "--index", "contextual", "--json", *target
    )
    assert json.loads(question.stdout)[0]["entry"]["key"] == "order"
    table = _cli("search", "green tea", "--index", "contextual", *target)
    assert "ana-tea" in table.stdout and "score" in table.stdout
    assert "┃" in table.stdout  # rich's boxed table (the `cli` extra is in `all`)
    owner = ["--scope", "user", "--scope-id", "ana"]
    changed = _cli("store", "ana-tea", "Ana switched to coffee", *owner, *target)
    assert changed.returncode == 0, changed.stderr
    versions = json.loads(_cli("history", "ana-tea", "--json", *owner, *target).stdout)
    assert [(v["version"], v["operation"]) for v in versions] == [(2, "update"), (1, "create")]
    restored = _cli("restore", "ana-tea", "1", "--reason", "typo", "--json", *owner, *target)
    assert json.loads(restored.stdout)["version"] == 3, restored.stderr
    shown = _cli("history", "ana-tea", *target)  # the key names its one holder
    assert "restore" in shown.stdout and "typo" in shown.stdout
    assert _cli("history", "never-stored", *owner, *target).returncode == 1
    assert _cli("delete", "ana-tea", *target).returncode == 0
    assert _cli("delete", "ana-tea", *target).returncode == 1
    missing = _cli("get", "ana-tea", *target)
    assert missing.returncode == 1
    assert missing.stderr == "error: no memory with key 'ana-tea'\n"


@pytest.mark.model
def test_consolidate_reports_then_merges_repeated_memories(target: list[str]) -> None:
    owner = ["--scope", "user", "--scope-id", "ana"]
    for key, text in (("tea", "Ana likes green tea"), ("tea-again", "ana likes GREEN tea")):
        assert _cli("store", key, text, *owner, *target).returncode == 0
    dry = _cli("consolidate", "--dry-run", "--json", *owner, *target)
    assert dry.returncode == 0, dry.stderr
    # Equally important: the most recent keeps.
    assert json.loads(dry.stdout)["merged_into"] == {"tea": "tea-again"}
    done = _cli("consolidate", *owner, *target)
    assert done.returncode == 0, done.stderr
    assert "merged: 1" in done.stdout and "tea -> tea-again" in done.stdout
    again = json.loads(_cli("consolidate", "--json", *owner, *target).stdout)
    assert (again["merged"], again["dry_run"]) == ([], False)
    versions = json.loads(_cli("history", "tea", "--json", *owner, *target).stdout)
    assert (versions[0]["reason"], versions[0]["actor"]) == (
        "merged",
        "pepperpy-memory consolidate",
    )


@pytest.mark.model
def test_import_export_reindex_cleanup_stats(target: list[str], tmp_path: Path) -> None:
    lines = [
        json.dumps({"key": f"k{i}", "value": f"imported memory number {i}", "metadata": {"i": i}})
        for i in range(1200)
    ]
    lines.insert(3, "this is not json")
    lines.insert(7, json.dumps({"value": "no key"}))
    lines.insert(
        9, json.dumps({"key": "bad", "value": {"x": float("inf")}}).replace("Infinity", '"\\u0000"')
    )
    source = tmp_path / "memories.jsonl"
    source.write_text("\n".join(lines) + "\n")
    imported = _cli("import", str(source), *target)
    assert imported.returncode == 1  # bad lines: every one named, nothing written
    assert "stored 0 memories, unchanged 0, skipped 2, failed 1" in imported.stderr
    assert "line 4: not JSON" in imported.stderr and "line 10:" in imported.stderr
    for bad in (9, 7, 3):
        del lines[bad]
    source.write_text("\n".join(lines) + "\n")
    imported = _cli("import", str(source), *target)
    assert imported.returncode == 0, imported.stderr
    assert "stored 1200 memories, unchanged 0, skipped 0, failed 0" in imported.stderr
    # rich's bar, in memories written, ending full
    assert "importing memories" in imported.stderr and "1200/1200" in imported.stderr
    again = _cli("import", str(source), *target)
    assert "stored 0 memories, unchanged 1200, skipped 0, failed 0" in again.stderr

    out = tmp_path / "export.jsonl"
    exported = _cli("export", "--out", str(out), *target)
    assert exported.returncode == 0 and "exported 1200 memories" in exported.stderr
    head, *records = [json.loads(line) for line in out.read_text().splitlines()]
    assert head["format"] == "pepperpy-memory-export" and head["version"] == backup.VERSION
    assert len(records) == 1200 and records[0]["metadata"] == {"i": 0}
    assert not head["history"]
    with_history = tmp_path / "history.jsonl"
    assert _cli("export", "--with-history", "--out", str(with_history), *target).returncode == 0
    head, *records = [json.loads(line) for line in with_history.read_text().splitlines()]
    assert head["history"] and len(records) == 2400  # each memory and its one version
    assert records[-1]["kind"] == "version" and records[-1]["operation"] == "create"

    reindexed = _cli("reindex", "contextual", *target)
    assert reindexed.returncode == 0 and "reindexed 1200 memories" in reindexed.stderr
    assert json.loads(_cli("cleanup", "--json", *target).stdout) == {"deleted": 0}
    stats: dict[str, Any] = json.loads(_cli("stats", "--json", *target).stdout)
    assert stats["memories"] == 1200 and stats["pool"]["max_size"] == 10
    assert stats["index_bytes"]


def test_errors_are_one_line_without_traceback(target: list[str]) -> None:
    bad = _cli("get", "k", "--dsn", "postgresql://nobody@127.0.0.1:1/none")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr
    invalid = _cli("search", "x", "--filter", "{not json", *target)
    assert invalid.returncode == 2 and "argument --filter: not valid JSON" in invalid.stderr
    debug = _cli("get", "k", "--debug", "--dsn", "postgresql://nobody@127.0.0.1:1/none")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_tables_fall_back_to_plain_text_without_rich(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pepperpy_pg_memory import cli

    monkeypatch.setitem(sys.modules, "rich.console", None)  # as if the extra were missing
    cli._print_table([["0.912", "ana-tea", "long_term"]], ["score", "key", "type"])
    assert capsys.readouterr().out.splitlines() == [
        "score  key      type     ",
        "-----  -------  ---------",
        "0.912  ana-tea  long_term",
    ]


@pytest.mark.model
def test_a_terminated_command_stops_the_embedded_server_it_started(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    pid_file = data_dir / "postmaster.pid"
    command = subprocess.Popen(
        [sys.executable, "-m", "pepperpy_pg_memory", "demo", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    # The server is up within a second or two; loading the model then takes seconds more, so
    # the signal lands while the demo is still running.
    def started() -> bool:
        assert command.poll() is None, "the demo exited before its server started"
        return pid_file.exists()

    wait_until(started, 120, "the demo's server started")
    postmaster = int(pid_file.read_text().split()[0])
    command.send_signal(signal.SIGTERM)
    command.communicate(timeout=120)
    assert command.returncode == 130
    assert not pid_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(postmaster, 0)


def test_a_bad_ttl_is_a_usage_error_not_a_traceback() -> None:
    for given, said in (("abc", "neither a number of seconds nor 'never'"), ("0", "positive")):
        refused = _cli("store", "k", "v", "--ttl", given)
        assert refused.returncode == 2
        assert said in refused.stderr and "Traceback" not in refused.stderr


def test_an_owner_is_given_whole() -> None:
    """A scope without its id was read as the library's default id (user 'default'); an id
    without a scope was refused in Python's words."""
    for arguments, said in (
        (["search", "tea", "--scope", "user"], "--scope user needs --scope-id"),
        (["get", "k", "--scope-id", "ana"], "--scope-id needs --scope"),
    ):
        refused = _cli(*arguments)
        assert refused.returncode == 2 and said in refused.stderr


@pytest.mark.model
def test_an_ambiguous_key_names_the_flags_that_settle_it(target: list[str]) -> None:
    for owner in ("ana", "bruno"):
        stored = _cli(
            "store", "plan", f"{owner}'s plan", "--scope", "user", "--scope-id", owner, *target
        )
        assert stored.returncode == 0, stored.stderr
    ambiguous = _cli("get", "plan", *target)
    assert ambiguous.returncode == 1
    assert "2 owners hold a memory with key 'plan'" in ambiguous.stderr
    assert "--scope and --scope-id" in ambiguous.stderr and "scope=" not in ambiguous.stderr


def test_list_pages_through_an_owners_memories(target: list[str]) -> None:
    ana = ["--scope", "user", "--scope-id", "ana"]
    for key in ("a-tea", "a-walk", "a-book"):
        assert _cli("store", key, f"Ana note {key}", *ana, *target).returncode == 0
    assert _cli("store", "b-jazz", "Bruno likes jazz", "--scope", "user", "--scope-id", "bruno",
                *target).returncode == 0  # fmt: skip
    first = _cli("list", *ana, "--limit", "2", *target)
    assert first.returncode == 0, first.stderr
    assert "a-book" in first.stdout and "a-walk" in first.stdout  # newest first
    assert "a-tea" not in first.stdout and "b-jazz" not in first.stdout
    assert "memories 1-2; next: --page 2" in first.stderr
    second = _cli("list", *ana, "--limit", "2", "--page", "2", "--json", *target)
    assert [entry["key"] for entry in json.loads(second.stdout)] == ["a-tea"]
    everyone = _cli("list", "--order", "key", "--json", *target)
    assert [e["key"] for e in json.loads(everyone.stdout)] == [
        "a-book",
        "a-tea",
        "a-walk",
        "b-jazz",
    ]
    prefixed = _cli("list", "--prefix", "b-", "--json", *target)
    assert [entry["key"] for entry in json.loads(prefixed.stdout)] == ["b-jazz"]
    refused = _cli("list", "--limit", "0", *target)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "argument --limit: 0 is not from 1 to 10000" in refused.stderr


def test_a_server_that_is_not_there_is_reported_after_one_attempt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncpg

    from pepperpy_pg_memory import cli

    attempts = []

    async def refused(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(asyncpg, "connect", refused)
    dsn = "postgresql://nobody@127.0.0.1:1/none"
    assert cli.main(["--dsn", dsn, "stats"]) == 1
    assert len(attempts) == 1  # no retries, no backoff
    error = capsys.readouterr().err
    assert error == "error: cannot reach the server named by dsn: Connection refused\n"


def test_stats_read_as_text_one_figure_a_line() -> None:
    from pepperpy_pg_memory.cli import _figures_text

    text = _figures_text({"memories": 7, "by_type": {"long_term": 5}, "by_owner": {}})
    assert text.splitlines() == [
        "memories                 7",
        "by_type:",
        "  long_term              5",
        "by_owner: -",
    ]


def test_index_owner_builds_and_drops_one_owners_index(target: list[str]) -> None:
    ana = ["--scope", "user", "--scope-id", "ana"]
    assert _cli("store", "k", "a note about tea", *ana, *target).returncode == 0
    built = _cli("index-owner", "--json", *ana, *target)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout) == {"owner": "user:ana", "indexed": True}
    dropped = _cli("index-owner", "--drop", *ana, *target)
    assert dropped.returncode == 0 and "dropped the index of user:ana" in dropped.stderr
    again = _cli("index-owner", "--drop", "--json", *ana, *target)
    assert json.loads(again.stdout) == {"owner": "user:ana", "dropped": False}
    nobody = _cli("index-owner", *target)
    assert nobody.returncode != 0 and "needs --scope" in nobody.stderr
    assert "Traceback" not in nobody.stderr


# Values each argument must refuse, by its flag (or, for a positional, its name). "{file}" is
# a file that exists, "{missing}" a folder that does not. An argument of the parser found in
# neither this table nor FREE_TEXT fails the test below: a new option says what it refuses.
BAD_VALUES: dict[str, tuple[str, ...]] = {
    "--dsn": ("mysql://root@127.0.0.1/db", "host=127.0.0.1 dbname=x"),
    "--data-dir": ("{file}",),
    "--schema": ("x;y",),
    "--table": ("Bad-Table", "t" * 49),
    "--scope": ("planet",),
    "--scope-id": (" ", "u" * 300),
    "--type": ("nope",),
    "--metadata": ("{x", "[1]"),
    "--ttl": ("abc", "0", "-5", "1e308"),
    "--filter": ("{x", '["topic"]', '{"a": {"$bad": 1}}'),
    "--limit": ("0", "abc", "1e9"),
    "--page": ("0", "x"),
    "--order": ("nope",),
    "--index": ("nope",),
    "-k": ("0", "1001", "five"),
    "--min-score": ("abc", "7", "nan"),
    "--out": ("{missing}/out.jsonl",),
    "--distribution": ("nope",),
    "--promote-after": ("0", "abc"),
    "--merge-threshold": ("0", "1.5", "abc"),
    "--user": (" ", "a\u202eb"),
    "--http": ("nohost", "127.0.0.1:99999"),
    "--token": ("  ",),
    "--host": ("0.0.0.0",),
    "--port": ("0", "70000"),
    "key": ("", "k" * 3000),
    "query": ("", "   "),
    "version": ("0", "abc"),
    "file": ("{missing}/in.jsonl",),
    "index": ("nope",),
    "role": ("no_such_role",),
}
FREE_TEXT = {
    "value": "any text is a memory",
    "--reason": "any words",
    "--prefix": "any text; matching nothing is an answer",
    "tenant": "any name a role may act for",
}
# What a command's other positionals get, so that only the argument under test is wrong.
GOOD_POSITIONALS = {
    "key": "k",
    "value": "v",
    "query": "tea",
    "version": "1",
    "file": "{file}",
    "role": "no_such_role",
    "tenant": "acme",
    "index": "contextual",
}
CONNECTION = {"--dsn", "--data-dir", "--schema", "--table"}


def _arguments(parser: Any) -> list[tuple[str, Any]]:
    """(name, action) of each argument of ``parser`` that takes a value."""
    found = []
    for action in parser._actions:
        if action.nargs == 0 or isinstance(action, argparse._SubParsersAction):
            continue
        name = max(action.option_strings, key=len) if action.option_strings else action.dest
        found.append((name, action))
    return found


def _bad_value_cases(files: dict[str, str]) -> list[tuple[str, list[str], str]]:
    """(what is under test, the command line but for the connection, its argument's name)."""
    from pepperpy_pg_memory.cli import _parser

    parser = _parser()
    commands = next(
        action.choices
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    cases = []
    unclassified = []

    def fill(text: str) -> str:
        for name, path in files.items():
            text = text.replace("{" + name + "}", path)
        return text

    for name, _ in _arguments(parser):  # before the command
        for bad in BAD_VALUES.get(name, ()):
            cases.append((f"{name} {bad!r}", [name, fill(bad), "get", "k"], name))
    for command, sub in commands.items():
        arguments = _arguments(sub)
        positionals = [a.dest for _, a in arguments if not a.option_strings]
        for name, action in arguments:
            if name in FREE_TEXT:
                continue
            if name not in BAD_VALUES:
                unclassified.append(f"{command} {name}")
                continue
            if name in CONNECTION and command != "get":
                continue  # one command shows the shared connection options
            for bad in BAD_VALUES[name]:
                line = [command]
                for positional in positionals:
                    line.append(fill(bad if positional == name else GOOD_POSITIONALS[positional]))
                if action.option_strings:
                    line += [name, fill(bad)]
                    if name == "--scope-id":
                        line += ["--scope", "user"]
                cases.append((f"{command} {name} {bad[:20]!r}", line, name))
    assert not unclassified, f"arguments with no bad values to try: {unclassified}"
    return cases


def test_every_argument_refuses_a_bad_value_in_one_line_naming_it(
    target: list[str], tmp_path: Path
) -> None:
    """Issue 34: each option and positional of each command fed values it must refuse: a
    usage error (exit 2) or one error line (exit 1) that names the argument, no traceback,
    nothing on stdout."""
    existing = tmp_path / "empty.jsonl"
    existing.write_text("")
    files = {"file": str(existing), "missing": str(tmp_path / "no-such-folder")}
    cases = _bad_value_cases(files)
    assert len(cases) > 60

    def run(case: tuple[str, list[str], str]) -> tuple[str, str, subprocess.CompletedProcess[str]]:
        what, line, name = case
        connection = [] if name == "--data-dir" else target
        return what, name, _cli(*line, *connection)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, cases))
    wrong = []
    for what, name, done in outcomes:
        lines = done.stderr.strip().splitlines()
        last = lines[-1] if lines else ""
        fine = (
            done.returncode in (1, 2)
            and "Traceback" not in done.stderr
            and not done.stdout
            and (last.startswith("error: ") or ": error: " in last)
            and (done.returncode == 2 or len(lines) == 1)
            and name.lstrip("-") in last
        )
        if not fine:
            wrong.append(f"{what}: exit {done.returncode}, {done.stderr.strip()[-300:]!r}")
    assert not wrong, "\n".join(wrong)


def test_work_refused_before_it_starts_draws_no_progress_bar(target: list[str]) -> None:
    """A bar appears with the first progress report: a command refused first says only why."""
    refused = _cli("distribute", "--distribution", "owner", *target)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "error: --distribution: this server has no Citus extension: run this against a "
        "Citus coordinator"
    ]

"""The MCP server driven by the SDK's own client: over stdio (a real subprocess, as a desktop
host launches it) and over streamable HTTP on loopback (token, Host and Origin checks)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from helpers import wait_for_port, wait_until
from pepperpy_pg_memory import MemoryScope, PostgresConfig, PostgresStorage

pytestmark = pytest.mark.model  # the server embeds with the default model


@pytest.fixture
def target(pg_dsn: str, test_schema: str) -> list[str]:
    return ["--dsn", pg_dsn, "--schema", test_schema, "--table", f"mcp_{uuid.uuid4().hex[:8]}"]


def _server(*args: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "pepperpy_pg_memory", "mcp", *args]
    )


@asynccontextmanager
async def _stdio(*args: str) -> AsyncIterator[Client]:
    async with Client(_server(*args), read_timeout_seconds=120) as client:
        yield client


async def _call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def _error(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_tools_remember_recall_list_and_forget_over_stdio(target: list[str]) -> None:
    async with _stdio(*target) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {"remember", "recall", "forget", "list_memories"}
        remember_schema = tools["remember"].input_schema
        assert remember_schema["required"] == ["content"]
        assert {"user_id", "memory_type", "metadata", "ttl_seconds", "importance"} <= set(
            remember_schema["properties"]
        )
        assert all(tool.output_schema for tool in tools.values())

        stored = await _call(
            client,
            "remember",
            content="Ana is allergic to peanuts",
            user_id="ana",
            metadata={"topic": "health"},
            importance=0.9,
        )
        assert stored["key"].startswith("mcp:") and stored["deduplicated"] is False
        again = await _call(client, "remember", content="ana is allergic to PEANUTS", user_id="ana")
        assert again == {"key": stored["key"], "deduplicated": True}
        await _call(client, "remember", content="Ana drinks green tea", user_id="ana")
        await _call(client, "remember", content="Bruno is allergic to shellfish", user_id="bruno")
        await _call(client, "remember", content="The office closes at 6 pm")  # global

        found = await _call(client, "recall", query="what can't Ana eat?", user_id="ana")
        first = found["memories"][0]
        assert first["key"] == stored["key"] and first["content"] == "Ana is allergic to peanuts"
        assert 0 < first["score"] <= 1 and first["type"] == "long_term"
        assert first["metadata"] == {"topic": "health"}
        # One user never sees another's memories, nor the global ones.
        assert all("Bruno" not in m["content"] for m in found["memories"])
        words = await _call(
            client, "recall", query="shellfish", user_id="bruno", mode="contextual", limit=1
        )
        assert [m["content"] for m in words["memories"]] == ["Bruno is allergic to shellfish"]
        office = await _call(client, "recall", query="when does the office close?")
        assert [m["content"] for m in office["memories"]] == ["The office closes at 6 pm"]

        listed = await _call(client, "list_memories", user_id="ana")
        assert [m["content"] for m in listed["memories"]] == [
            "Ana drinks green tea",
            "Ana is allergic to peanuts",
        ]
        assert (await _call(client, "forget", key=stored["key"], user_id="ana")) == {
            "deleted": True
        }
        assert (await _call(client, "forget", key=stored["key"], user_id="ana")) == {
            "deleted": False
        }
    # The core store sees the same memories (a memory stored by MCP is a memory).
    config = PostgresConfig(dsn=target[1], schema=target[3], table=target[5])
    async with PostgresStorage[str, Any](config) as storage:
        assert await storage.count(scope=MemoryScope.USER, scope_id="ana") == 1
        bruno = await storage.list(scope=MemoryScope.USER, scope_id="bruno")
        assert [entry.value for entry in bruno] == ["Bruno is allergic to shellfish"]
        history = await storage.history(stored["key"], scope="user", scope_id="ana")
        assert [(v.operation, v.actor) for v in history[:2]] == [
            ("delete", "mcp"),
            ("reinforce", "mcp"),
        ]


async def test_bad_input_is_a_tool_error_and_the_server_keeps_serving(
    target: list[str],
) -> None:
    async with _stdio(*target, "--user", "ana") as client:
        assert "empty" in await _error(client, "recall", query="   ")
        assert "empty" in await _error(client, "remember", content="")
        assert "forever" in await _error(client, "remember", content="x", memory_type="forever")
        assert "20000" in await _error(client, "remember", content="x" * 20_001)
        assert "at most 50" in await _error(client, "recall", query="x", limit=500)
        # Bound to Ana: another user is refused, by name.
        refused = await _error(client, "recall", query="allergies", user_id="bruno")
        assert "acts for user 'ana' only" in refused
        await _call(client, "remember", content="Ana likes jazz")
        assert (await _call(client, "remember", content="Ana likes opera", user_id="ana"))["key"]
        listed = await _call(client, "list_memories")
        assert len(listed["memories"]) == 2
    async with _stdio(*target, "--user", "bruno", "--allow-any-user") as client:
        mine = await _call(client, "remember", content="Bruno likes rock")
        anas = await _call(client, "list_memories", user_id="ana")
        assert len(anas["memories"]) == 2
        ana_key = anas["memories"][0]["key"]
        # A key of another owner is not deleted, and the answer is the one a key nobody
        # holds gets: Bruno learns nothing about Ana's keys.
        assert (await _call(client, "forget", key=ana_key)) == {"deleted": False}
        assert (await _call(client, "forget", key="nobody-holds-this")) == {"deleted": False}
        assert len((await _call(client, "list_memories", user_id="ana"))["memories"]) == 2
        assert (await _call(client, "forget", key=mine["key"]))["deleted"] is True


def test_stdout_carries_protocol_messages_only(target: list[str]) -> None:
    """What a host sees on the server's stdout: JSON-RPC lines and nothing else."""
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    process = subprocess.run(
        [sys.executable, "-m", "pepperpy_pg_memory", "mcp", *target],
        input=json.dumps(hello) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    assert lines, process.stderr
    for line in lines:
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert json.loads(lines[0])["result"]["serverInfo"]["name"] == "pepperpy-memory"


# --- streamable HTTP ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def http_server(target: list[str]) -> Iterator[tuple[str, str]]:
    port, token = _free_port(), uuid.uuid4().hex
    process = subprocess.Popen(
        [sys.executable, "-m", "pepperpy_pg_memory", "mcp", *target, "--http"]
        + [f"127.0.0.1:{port}", "--user", "ana"],
        env={**os.environ, "PEPPERPY_MCP_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for_port(process, port)
    try:
        assert process.stderr is not None
        said = b""
        while b"MCP server on" not in said and select.select([process.stderr], [], [], 10)[0]:
            said += process.stderr.readline()
        # The address is printed: the CLI logs errors only, and this line is how it is found.
        assert f"MCP server on http://127.0.0.1:{port}/mcp".encode() in said
        yield f"http://127.0.0.1:{port}/mcp", token
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_http_requires_the_token_and_checks_host_and_origin(
    http_server: tuple[str, str],
) -> None:
    url, token = http_server
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient() as http:
        missing = await http.post(url, json=ping, headers=headers)
        assert missing.status_code == 401
        wrong = await http.post(url, json=ping, headers={**headers, "Authorization": "Bearer x"})
        assert wrong.status_code == 401
        auth = {**headers, "Authorization": f"Bearer {token}"}
        rebinding = await http.post(url, json=ping, headers={**auth, "Host": "evil.example:80"})
        assert rebinding.status_code in (400, 403, 421)
        foreign = await http.post(url, json=ping, headers={**auth, "Origin": "http://evil.example"})
        assert foreign.status_code in (400, 403)
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120)
    transport = streamable_http_client(url, http_client=http)
    async with http, Client(transport, read_timeout_seconds=120) as client:
        stored = await _call(client, "remember", content="Ana takes the 8:15 train")
        found = await _call(client, "recall", query="which train does Ana take?")
        assert found["memories"][0]["key"] == stored["key"]
        refused = await _error(client, "list_memories", user_id="bruno")
        assert "acts for user 'ana' only" in refused


def test_http_on_another_interface_needs_a_token(target: list[str]) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "pepperpy_pg_memory", "mcp", *target, "--http", "0.0.0.0:8765"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PEPPERPY_MCP_TOKEN"},
    )
    assert refused.returncode == 1
    assert "--token" in refused.stderr and "Traceback" not in refused.stderr


async def test_the_server_outlives_the_command_that_started_the_embedded_database(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "pg"
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from pepperpy_pg_memory import PostgresConfig, PostgresStorage, HashingEmbedder\n"
            "async def main():\n"
            f"    config = PostgresConfig(data_dir={str(data_dir)!r}, table='shared')\n"
            "    async with PostgresStorage(config, HashingEmbedder(8)):\n"
            "        print('ready', flush=True)\n"
            "        sys.stdin.readline()\n"
            "asyncio.run(main())\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None and starter.stdin is not None
    assert starter.stdout.readline().strip() == "ready"
    async with _stdio("--data-dir", str(data_dir), "--table", "mcp_shared") as client:
        await _call(client, "remember", content="Ana moved to Porto")
        starter.stdin.write("\n")
        starter.stdin.flush()
        assert starter.wait(timeout=60) == 0  # the process that started the server is gone
        found = await _call(client, "recall", query="where does Ana live?")
        assert found["memories"][0]["content"] == "Ana moved to Porto"
    # The last process out stopped the server, though another one had started it.
    postmaster = data_dir / "postmaster.pid"
    wait_until(lambda: not postmaster.exists(), 30, "the embedded server stopped")


async def test_a_server_for_a_lookalike_user_is_refused(pg_dsn: str, test_schema: str) -> None:
    """The server's user names the memories it writes: the core's rule for new owners holds
    for it too (issue 35), whoever builds the server."""
    from mcp_pepperpy import create_server

    from pepperpy_pg_memory import HashingEmbedder, MemoryValidationError

    config = PostgresConfig(dsn=pg_dsn, schema=test_schema, table=f"mcp_{uuid.uuid4().hex[:8]}")
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as storage:
        for user in ("ana\u202e", "  "):
            with pytest.raises(MemoryValidationError, match="the MCP server's user"):
                create_server(storage, user=user)
        assert create_server(storage, user="ana") is not None

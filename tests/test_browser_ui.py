"""The memory browser in a real browser: Debian's chromium driven by playwright, against
``pepperpy-memory ui`` running as a user would start it (a subprocess)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from helpers import wait_for_port
from pepperpy_pg_memory import MemoryScope, MemoryType, PostgresConfig, PostgresStorage

pytestmark = pytest.mark.model  # the browser's store embeds searches with the default model

HOSTILE = '<img src=x onerror="window.__pwned = 1"><script>window.__pwned = 2</script>'


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: run the test command (scripts/test installs it)"
    async with async_playwright() as playwright:
        # As root, chromium refuses its sandbox; the pages are our own.
        launched = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
def target(pg_dsn: str, test_schema: str) -> dict[str, str]:
    return {"dsn": pg_dsn, "schema": test_schema, "table": f"ui_{uuid.uuid4().hex[:8]}"}


async def _seed(target: dict[str, str]) -> None:
    config = PostgresConfig(**target)
    async with PostgresStorage[str, Any](config) as storage:
        user = {"scope": MemoryScope.USER}
        await storage.store_many(
            [
                {"key": f"note-{i:02d}", "value": f"Ana's note number {i}", **user}
                | {"scope_id": "ana", "type": MemoryType.SHORT_TERM}
                for i in range(27)
            ]
        )
        await storage.store("allergy", "Ana is allergic to peanuts", scope_id="ana", **user)
        await storage.store("jazz", "Bruno listens to jazz", scope_id="bruno", **user)
        await storage.store("hostile", HOSTILE, metadata={"x": "</td><b>bold</b>"})


def _start(target: dict[str, str], *extra: str, port: int | None = None) -> tuple[Any, str]:
    port = port or _free_port()
    command = [sys.executable, "-m", "pepperpy_pg_memory", "ui", "--port", str(port)]
    command += ["--dsn", target["dsn"], "--schema", target["schema"], "--table", target["table"]]
    process = subprocess.Popen(
        [*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_port(process, port)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture
async def server(target: dict[str, str]) -> AsyncIterator[str]:
    await _seed(target)
    process, url = _start(target)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_the_browser_says_where_it_is_and_what_it_shows(target: dict[str, str]) -> None:
    process, url = _start(target)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert line.startswith(f"Memory browser on {url}/ — the memories of ")
    assert f"table {target['schema']}.{target['table']}" in line
    assert "password" not in line.lower()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    opened = await context.new_page()
    yield opened
    await context.close()


def _rows(page: Page) -> Any:
    return page.get_by_role("table", name="Memories").locator("tbody tr")


async def test_lists_newest_first_in_pages_and_takes_a_screenshot(
    page: Page, server: str, target: dict[str, str], tmp_path: Path
) -> None:
    await page.goto(server)
    table = page.get_by_role("table", name="Memories")
    await expect(table).to_be_visible()
    await expect(_rows(page)).to_have_count(25)
    await expect(_rows(page).first).to_contain_text("global")  # the newest memory, stored last
    await expect(table).to_contain_text("user:ana")
    await expect(table).to_contain_text("note-26")  # keys are shown
    shown = f"table {target['schema']}.{target['table']}"
    await expect(page.locator("header")).to_contain_text(shown)
    stats = page.get_by_role("region", name="Statistics")
    await expect(stats).to_contain_text("short_term: 27")
    await expect(stats).to_contain_text("user:bruno: 1")
    await expect(stats).to_contain_text("Search indexes")
    await expect(stats).not_to_contain_text("_idx")  # no internal index names
    # (The documentation's picture is made from the demo's memories instead:
    # scripts/browser_screenshot.py.)
    await page.screenshot(path=str(tmp_path / "browser.png"), full_page=True)
    assert (tmp_path / "browser.png").stat().st_size > 10_000
    await page.get_by_role("link", name="Older memories").click()
    await expect(_rows(page)).to_have_count(5)
    await expect(page.get_by_role("link", name="Older memories")).to_have_count(0)


async def test_search_orders_by_score_and_owner_and_type_filter(page: Page, server: str) -> None:
    await page.goto(server)
    await page.get_by_role("searchbox", name="Search memories").fill("what is Ana allergic to?")
    await page.get_by_role("combobox", name="Mode").select_option("semantic")
    await page.get_by_role("button", name="Show").click()
    await expect(_rows(page).first).to_contain_text("Ana is allergic to peanuts")
    scores = [float(s) for s in await _rows(page).locator("td.score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and len(scores) > 1
    assert min(scores) > 0  # unrelated memories (score 0 or less) wait behind a link
    more = page.get_by_role("link", name=re.compile(r"Show \d+ more that score 0 or less"))
    if await more.count():
        hidden = int((await more.inner_text()).split()[1])
        await more.click()
        await expect(_rows(page)).to_have_count(len(scores) + hidden)
    await page.goto(server)
    owner = page.get_by_role("combobox", name="Owner")
    assert "user:bruno" in await owner.locator("option").all_inner_texts()
    await owner.select_option("user:bruno")
    await page.get_by_role("button", name="Show").click()
    await expect(_rows(page)).to_have_count(1)
    await expect(_rows(page).first).to_contain_text("Bruno listens to jazz")
    await page.get_by_role("combobox", name="Owner").select_option("user:ana")
    await page.get_by_role("combobox", name="Type").select_option("long_term")
    await page.get_by_role("button", name="Show").click()
    await expect(_rows(page)).to_have_count(1)
    await expect(_rows(page).first).to_contain_text("peanuts")


async def test_delete_asks_first_and_history_restores(page: Page, server: str) -> None:
    await page.goto(f"{server}/?owner=user:bruno")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await page.get_by_role("button", name="Delete").click()
    await expect(_rows(page)).to_have_count(1)  # dismissed: nothing deleted
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_role("button", name="Delete").click()
    await expect(_rows(page).first).to_contain_text("No memories")
    banner = page.get_by_role("status")
    await expect(banner).to_contain_text("Deleted jazz (user:bruno)")
    await banner.get_by_role("button", name="Undo").click()  # the deleted version comes back
    await expect(_rows(page)).to_have_count(1)
    await expect(_rows(page).first).to_contain_text("Bruno listens to jazz")
    await expect(page.get_by_role("status")).to_have_count(0)
    assert "owner=user%3Abruno" in page.url  # back on the page the row was on
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_role("button", name="Delete").click()
    await expect(_rows(page).first).to_contain_text("No memories")
    await page.goto(f"{server}/history?key=jazz&owner=user:bruno")
    versions = page.get_by_role("table", name="Versions")
    await expect(versions).to_contain_text("delete")
    await expect(versions).to_contain_text("memory browser")
    await page.get_by_role("button", name="Restore").first.click()
    await expect(page.get_by_role("table", name="Versions")).to_contain_text("restore")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_role("button", name="Invalidate").click()
    await expect(page.get_by_role("table", name="Versions")).to_contain_text("invalidate")


async def test_deleted_memories_can_be_found_and_restored(page: Page, server: str) -> None:
    await page.goto(f"{server}/?owner=user:bruno")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_role("button", name="Delete").click()
    await page.get_by_role("link", name="Deleted memories").click()
    gone = page.get_by_role("table", name="Deleted memories").locator("tbody tr")
    await expect(gone).to_have_count(1)
    await expect(gone.first).to_contain_text("Bruno listens to jazz")
    await expect(gone.first).to_contain_text("delete")
    await expect(gone.first).to_contain_text("memory browser")
    await gone.first.get_by_role("button", name="Restore").click()
    await expect(gone.first).to_contain_text("Nothing deleted")  # back on this page
    await page.goto(f"{server}/?owner=user:bruno")
    await expect(_rows(page).first).to_contain_text("Bruno listens to jazz")


async def test_an_edit_is_a_new_version(page: Page, server: str) -> None:
    await page.goto(f"{server}/history?key=allergy&owner=user:ana")
    edit = page.get_by_role("region", name="Edit")
    await edit.get_by_role("textbox", name="Value").fill(
        '"Ana is allergic to peanuts and shellfish"'
    )
    await edit.get_by_role("combobox", name="Type").select_option("semantic")
    await edit.get_by_role("textbox", name="Metadata").fill('{"topic": "health"}')
    await edit.get_by_role("textbox", name="Why").fill("she told us about shellfish")
    await edit.get_by_role("button", name="Save as a new version").click()
    versions = page.get_by_role("table", name="Versions")
    await expect(versions.locator("tbody tr")).to_have_count(2)
    await expect(versions.locator("tbody tr").first).to_contain_text("she told us about shellfish")
    await expect(versions.locator("tbody tr").first).to_contain_text("memory browser")
    await page.goto(f"{server}/?owner=user:ana&type=semantic")
    await expect(_rows(page)).to_have_count(1)
    await expect(_rows(page).first).to_contain_text("peanuts and shellfish")
    await expect(_rows(page).first).to_contain_text('"topic": "health"')
    # A value that is not JSON is refused with the reason, and changes nothing.
    await page.goto(f"{server}/history?key=allergy&owner=user:ana")
    edit = page.get_by_role("region", name="Edit")
    await edit.get_by_role("textbox", name="Value").fill("not json")
    await edit.get_by_role("button", name="Save as a new version").click()
    await expect(page.locator("main")).to_contain_text("value and metadata are JSON")
    await page.goto(f"{server}/history?key=allergy&owner=user:ana")
    await expect(page.get_by_role("table", name="Versions").locator("tbody tr")).to_have_count(2)


async def test_hostile_memory_text_is_shown_and_never_run(page: Page, server: str) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{server}/?owner=global")
    row = _rows(page).first
    await expect(row).to_contain_text('<img src=x onerror="window.__pwned = 1">')
    await expect(row).to_contain_text("</td><b>bold</b>")
    assert await page.locator("td img, td script, td b").count() == 0
    assert await page.evaluate("window.__pwned") is None
    policy = (await page.request.get(server)).headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


async def test_changes_need_the_csrf_token_and_the_right_host(server: str) -> None:
    forged = urllib.request.Request(
        f"{server}/delete", data=b"key=allergy&owner=user%3Aana", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged)
    assert refused.value.code == 400
    rebinding = urllib.request.Request(server, headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as wrong_host:
        urllib.request.urlopen(rebinding)
    assert wrong_host.value.code == 421
    cross = urllib.request.Request(
        f"{server}/delete", data=b"csrf=x", method="POST", headers={"Origin": "http://evil.example"}
    )
    with pytest.raises(urllib.error.HTTPError) as cross_origin:
        urllib.request.urlopen(cross)
    assert cross_origin.value.code == 403


async def test_a_token_guards_every_request(page: Page, target: dict[str, str]) -> None:
    token = uuid.uuid4().hex
    process, url = _start(target, "--token", token)
    try:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url)
        assert missing.value.code == 401
        await page.goto(f"{url}/?token={token}")  # kept in a cookie, dropped from the address
        await expect(page.get_by_role("table", name="Memories")).to_be_visible()
        assert "token" not in page.url
        await page.goto(f"{url}/static/app.css")
        assert (await page.locator("body").inner_text()).startswith("body")
    finally:
        process.terminate()
        process.wait(timeout=30)
    env = {k: v for k, v in os.environ.items() if k != "PEPPERPY_UI_TOKEN"}
    refused = subprocess.run(
        [sys.executable, "-m", "pepperpy_pg_memory", "ui", "--host", "0.0.0.0"]
        + ["--dsn", target["dsn"], "--schema", target["schema"], "--table", target["table"]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert refused.returncode == 1 and "--token" in refused.stderr

"""Remake docs/memory-browser.png from the demo's memories: the demo stores them in a fresh
embedded database, ``pepperpy-memory ui`` serves it, Chromium (Debian's, as the tests use)
shows a search and takes the picture.

    .venv/bin/python scripts/browser_screenshot.py
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.async_api import async_playwright

TARGET = Path(__file__).resolve().parents[1] / "docs" / "memory-browser.png"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[str]) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(
                f"the memory browser stopped: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the memory browser did not answer")


async def _shoot(url: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{url}/?q=what+should+I+avoid+cooking+for+Ana%3F&mode=hybrid")
        await page.screenshot(path=str(TARGET), full_page=True)
        await browser.close()


def main() -> int:
    data = Path(tempfile.mkdtemp(prefix="browser-shot-"))
    cli = [sys.executable, "-m", "pepperpy_pg_memory"]
    try:
        subprocess.run([*cli, "demo", "--data-dir", str(data)], check=True, capture_output=True)
        port = _free_port()
        process = subprocess.Popen(
            [*cli, "ui", "--data-dir", str(data), "--table", "demo_memories", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait(url, process)
            asyncio.run(_shoot(url))
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

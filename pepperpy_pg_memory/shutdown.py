"""A terminated command shuts down the way an interrupted one does.

Python's default SIGTERM handling ends the process on the spot: no ``finally`` blocks, no
``atexit`` hooks. For a command on the embedded database that means a PostgreSQL server left
running with nobody to stop it (the next run attaches to it and, not having started it, leaves
it running too). Raising KeyboardInterrupt instead unwinds the stack: stores close, the pool
lets its connections go, and the server this process started is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["interrupt_on_sigterm", "cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has unwound (a no-op if it is done)."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread (a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)

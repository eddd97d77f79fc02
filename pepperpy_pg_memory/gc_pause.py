"""Python's cyclic garbage collector paused over a bulk write's preparation.

Preparing a large batch makes several objects per memory that all outlive the batch's
preparation. The collector counts them as they are made and, every few tens of thousands,
walks every object the process holds: a caller's 100,000 items with their vectors are tens of
millions of references, about half a second a walk, and the preparation of such a batch
triggered seven walks that found nothing to free (`benchmarks.ingest --size 100000`). The
pause covers synchronous stretches only, so no other task runs while the collector is off.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["cyclic_gc_paused"]


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Turn the cyclic collector off for the block, back on after it unless it was off
    already (reference counting frees what it always frees)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()

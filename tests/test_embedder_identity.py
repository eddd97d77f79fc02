"""The registry records which model's vectors a table holds; another model of the same
dimension may not silently mix its vectors into the index."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from helpers import CountingEmbedder
from langchain_pepperpy import EmbedderEmbeddings
from pepperpy_pg_memory import (
    EmbedderMismatchError,
    HashingEmbedder,
    MemoryQuery,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.embeddings import LangChainEmbedder, embedder_identity
from pepperpy_pg_memory.schema import REGISTRY_MIGRATIONS, REGISTRY_VERSION_TABLE


class OtherModel(HashingEmbedder):
    """Another model with the hashing embedder's dimension (its vectors differ: reversed)."""

    name = "other-model"

    async def embed_documents(self, texts: list[str]) -> Any:
        return (await super().embed_documents(texts))[:, ::-1].copy()

    async def embed_query(self, text: str) -> Any:
        return (await super().embed_query(text))[::-1].copy()


async def _recorded(conn: asyncpg.Connection, config: PostgresConfig) -> str | None:
    value: str | None = await conn.fetchval(
        f'SELECT embedder FROM "{config.schema_name}".pepperpy_memory_tables WHERE table_name = $1',
        config.table,
    )
    return value


async def test_a_table_records_its_model_and_refuses_another(
    config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store("k", "Ana drinks oat milk")
    assert await _recorded(raw_conn, config) == "hashing/32"
    # Another embedder class of the same model (a subclass keeping its name) is welcome.
    async with PostgresStorage[str, Any](config, CountingEmbedder(32)) as store:
        assert (await store.retrieve("k")).value == "Ana drinks oat milk"
    with pytest.raises(EmbedderMismatchError) as caught:
        async with PostgresStorage[str, Any](config, OtherModel(32)):
            pass
    assert caught.value.recorded == "hashing/32" and caught.value.current == "other-model/32"
    assert "on_embedder_change='reindex'" in str(caught.value)
    assert await _recorded(raw_conn, config) == "hashing/32"


async def test_reindex_on_change_re_embeds_and_records_the_new_model(
    config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store_many([("a", "green tea in the morning"), ("b", "chess on sundays")])
        await store.store("c", "own text", passages=["black coffee at noon"])
    moving = config.model_copy(update={"on_embedder_change": "reindex"})
    async with PostgresStorage[str, Any](moving, OtherModel(32)) as store:
        hits = await store.search(MemoryQuery(query="green tea in the morning", limit=1))
        assert hits[0].entry.key == "a" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        passage = await store.search(MemoryQuery(query="black coffee at noon", limit=1))
        assert passage[0].entry.key == "c" and passage[0].score == pytest.approx(1.0, abs=1e-4)
    assert await _recorded(raw_conn, config) == "other-model/32"
    # The old model is now the stranger.
    with pytest.raises(EmbedderMismatchError):
        async with PostgresStorage[str, Any](config, HashingEmbedder(32)):
            pass


async def test_a_table_without_vectors_or_without_a_record_adopts_the_model(
    config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    async with PostgresStorage[str, Any](config, HashingEmbedder(32)) as store:
        await store.store("plain", "a key-value memory", indices=[])
    # Only plain memories: nothing to mix, so another model takes the table over.
    async with PostgresStorage[str, Any](config, OtherModel(32)) as store:
        await store.store("k", "now with vectors")
    assert await _recorded(raw_conn, config) == "other-model/32"
    # A table from before identities were recorded adopts the model that opens it.
    await raw_conn.execute(
        f'UPDATE "{config.schema_name}".pepperpy_memory_tables SET embedder = NULL '
        "WHERE table_name = $1",
        config.table,
    )
    async with PostgresStorage[str, Any](config, OtherModel(32)) as store:
        assert await store.count() == 2
    assert await _recorded(raw_conn, config) == "other-model/32"


async def test_the_registry_has_migrations_of_its_own(
    config: PostgresConfig, raw_conn: asyncpg.Connection
) -> None:
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)):
        pass
    async with PostgresStorage[str, Any](config, HashingEmbedder(16)):
        pass  # applying them again changes nothing
    rows = await raw_conn.fetch(
        f'SELECT version FROM "{config.schema_name}"."{REGISTRY_VERSION_TABLE}"'
    )
    assert [row["version"] for row in rows] == [len(REGISTRY_MIGRATIONS)]


def test_identities_name_the_model_not_the_wrapper() -> None:
    assert embedder_identity(HashingEmbedder(16), 16) == "hashing/16"
    # Our LangChain wrapper of a pepperpy embedder is that embedder.
    wrapped = LangChainEmbedder(EmbedderEmbeddings(HashingEmbedder(16)))
    assert embedder_identity(wrapped, 16) == "hashing/16"

    class RemoteEmbeddings:
        model = "text-embedding-3-small"

    assert LangChainEmbedder(RemoteEmbeddings()).name == "RemoteEmbeddings:text-embedding-3-small"

    class Anonymous:
        dimension = 8

    assert embedder_identity(Anonymous(), 8) == "Anonymous/8"

"""``PostgresStorage``: an agent's memories in PostgreSQL, recalled by meaning and by words."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import logging
import typing
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Generic, Literal, TypeVar

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from . import maintenance
from .cache import EmbeddingCache
from .config import PostgresConfig
from .embedded import EmbeddedServer, acquire_embedded, release_embedded
from .embeddings import Embedder, as_embedder
from .errors import (
    AmbiguousKeyError,
    DimensionMismatchError,
    MemoryError,
    MemoryIndexError,
    MemoryNotFoundError,
    MemoryTimeoutError,
    MemoryValidationError,
)
from .faults import backoff_delay, is_transient, translate
from .identifiers import quote_name
from .items import (
    TTL,
    MemoryItem,
    PendingWrite,
    Vector,
    as_enum,
    index_set,
    item_fields,
    resolve_expiry,
)
from .metrics import Metrics, instrumented
from .models import MemoryEntry, MemoryQuery, MemorySearchResult
from .queries import STAGING_COLUMNS, ListOrder, Restriction, Statements
from .results import MemorySearchResults
from .schema import (
    APPLICATION_NAME,
    CLIENT_SCHEMA_SETTING,
    MAX_SCOPE_ID_BYTES,
    SCHEMA_VERSION,
    TENANT_SETTING,
    TableLayout,
    migrate,
    vector_type_for,
)
from .types import Identity, MemoryIndex, MemoryScope, MemoryType
from .values import (
    EncodedJSON,
    check_bytes,
    default_text_of,
    encode_json,
    to_json_value,
    validate_key,
)

__all__ = ["PostgresStorage", "MemorySearchResults", "ProgressCallback", "MemoryItem"]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=str)
V = TypeVar("V")
T = TypeVar("T")

BULK_WRITE_ROWS = 1_000
"""A ``store_many`` of at least this many rows runs under ``config.maintenance_timeout``."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while long work runs."""


class PostgresStorage(Generic[K, V]):
    """An agent's memories in one PostgreSQL table.

    ``K`` is the key type (strings); ``V`` the value type. Values are stored as JSON; when
    ``V`` is a concrete type (a pydantic model, ``dict``, ``str`` ...) values read back are
    validated into it.

    Example:
        >>> async def main() -> None:
        ...     async with PostgresStorage[str, dict](PostgresConfig()) as storage:
        ...         await storage.store(
        ...             "pref-1",
        ...             {"content": "Ana prefers oat milk in her coffee"},
        ...             type=MemoryType.LONG_TERM,
        ...             scope=MemoryScope.USER,
        ...             scope_id="ana",
        ...         )
        ...         query = MemoryQuery(query="what does Ana drink?", scope=MemoryScope.USER,
        ...                             scope_id="ana", index_type=MemoryIndex.HYBRID)
        ...         async for hit in storage.search(query):
        ...             print(round(hit.score, 2), hit.entry.text)

    Args:
        config: where and how; ``PostgresConfig()`` (the default) reads ``PEPPERPY_PG_*``
            variables and otherwise runs an embedded server.
        embedder: an :class:`~pepperpy_pg_memory.Embedder` or a LangChain ``Embeddings``;
            None for the default all-MiniLM-L6-v2 model.
        text_of: turns a value into the text that is indexed (default:
            :func:`~pepperpy_pg_memory.values.default_text_of`).
    """

    def __init__(
        self,
        config: PostgresConfig | None = None,
        embedder: Any = None,
        *,
        text_of: Callable[[Any], str] | None = None,
    ) -> None:
        self.config = config if config is not None else PostgresConfig()
        self.embedder: Embedder = as_embedder(embedder)
        self.text_of: Callable[[Any], str] = text_of or default_text_of
        self._cache = EmbeddingCache(self.config.embedding_cache_size)
        # Part of every memory's identity; '' for a store without a tenant.
        self._tenant = self.config.tenant or ""
        self._pool: asyncpg.Pool | None = None
        self._server: EmbeddedServer | None = None
        self._layout: TableLayout | None = None
        self._sql: Statements | None = None
        self._value_adapter: TypeAdapter[Any] | None | Literal[False] = False
        self._start_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics = Metrics()

    # --- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> PostgresStorage[K, V]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def started(self) -> bool:
        return self._pool is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the store was started on (its pool belongs to it); None if closed."""
        return self._loop if self._pool is not None else None

    @property
    def layout(self) -> TableLayout:
        """The table's recorded layout (dimension, vector type, text search configuration)."""
        if self._layout is None:
            raise MemoryError("the storage is not started: await storage.start() first")
        return self._layout

    async def start(self) -> None:
        """Connect, create the extensions and the table if needed, and open the pool.

        Idempotent. On an embedded config, starts the server first (or attaches to a running
        one). Raises :class:`DimensionMismatchError` when the table holds embeddings of another
        dimension than the embedder's, unless ``config.on_dimension_mismatch == "reindex"``.
        """
        async with self._start_lock:
            if self._pool is not None:
                return
            try:
                self._loop = asyncio.get_running_loop()
                await self._start()
            except BaseException:
                await self._close()
                raise

    async def _start(self) -> None:
        config = self.config
        if config.is_embedded:
            self._server = await acquire_embedded(config.data_dir)
            await self._ensure_embedded_database(self._server)
            dsn = self._server.uri(config.database)
        else:
            dsn = config.connection_dsn()
        dimension = await asyncio.to_thread(lambda: int(self.embedder.dimension))
        wanted = TableLayout(
            schema=config.schema_name,
            table=config.table,
            dimension=dimension,
            vector_type=vector_type_for(dimension),
            text_search_config=config.text_search_config,
            hnsw_m=config.hnsw_m,
            hnsw_ef_construction=config.hnsw_ef_construction,
        )
        conn = await self._retrying("connect", lambda: self._connect(dsn))
        try:
            layout = await migrate(conn, wanted, row_level_security=config.row_level_security)
            vector_schema = await conn.fetchval(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
            )
        except asyncpg.PostgresError as exc:
            raise translate(exc, "start") from exc
        finally:
            await conn.close()
        if layout.text_search_config != config.text_search_config:
            logger.warning(
                "table %s.%s is indexed with text search configuration %r, not %r: run "
                "reindex(MemoryIndex.CONTEXTUAL) to switch",
                layout.schema,
                layout.table,
                layout.text_search_config,
                config.text_search_config,
            )
        self._layout = layout
        self._sql = Statements(layout)
        self._pool = await self._retrying(
            "open pool", lambda: self._create_pool(dsn, vector_schema)
        )
        if layout.dimension != dimension:
            if config.on_dimension_mismatch == "reindex":
                await self.reindex(MemoryIndex.SEMANTIC)
            else:
                raise DimensionMismatchError(
                    f"table {layout.schema}.{layout.table} holds {layout.dimension}-dimensional "
                    f"embeddings but the embedder produces {dimension}: start with "
                    "PostgresConfig(on_dimension_mismatch='reindex') to re-embed every memory "
                    "with the new model, or use the model the table was built with",
                    expected=layout.dimension,
                    actual=dimension,
                )
        logger.info("memory store ready on %s", config.describe_target())

    async def _connect(self, dsn: str) -> asyncpg.Connection:
        return await asyncpg.connect(dsn, timeout=self.config.connect_timeout)

    async def _ensure_embedded_database(self, server: EmbeddedServer) -> None:
        conn = await self._retrying("connect", lambda: self._connect(server.uri("postgres")))
        try:
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                self.config.database,
            )
            if not exists:
                try:
                    # CREATE DATABASE takes no parameters: the name is quoted instead.
                    await conn.execute(f"CREATE DATABASE {quote_name(self.config.database)}")
                except asyncpg.DuplicateDatabaseError:
                    pass  # another process created it first
        finally:
            await conn.close()

    async def _create_pool(self, dsn: str, vector_schema: str) -> asyncpg.Pool:
        config = self.config

        async def init(conn: asyncpg.Connection) -> None:
            await register_vector(conn, schema=vector_schema)
            # Binary jsonb (a version byte, then the text) so that COPY can carry it.
            await conn.set_type_codec(
                "jsonb",
                schema="pg_catalog",
                encoder=lambda value: b"\x01" + encode_json(value).encode(),
                decoder=lambda data: json.loads(data[1:]),
                format="binary",
            )

        pool = await asyncpg.create_pool(
            dsn,
            min_size=config.min_size,
            max_size=config.max_size,
            command_timeout=config.command_timeout,
            timeout=config.connect_timeout,
            init=init,
            reset=_keep_session,
            server_settings={
                "application_name": APPLICATION_NAME,
                # Tells the schema's guard that these connections know per-owner identity.
                CLIENT_SCHEMA_SETTING: str(SCHEMA_VERSION),
                "hnsw.ef_search": str(config.hnsw_ef_search),
                "hnsw.iterative_scan": config.hnsw_iterative_scan,
                "pg_trgm.word_similarity_threshold": str(config.trigram_threshold),
                # Memory lookups are short OLTP queries: starting parallel workers or JIT
                # compiling costs more (milliseconds) than the queries themselves.
                "max_parallel_workers_per_gather": "0",
                "jit": "off",
                # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
                # generic plan that cannot see the query vector, the limit or the filters,
                # and picks scans ten times slower. Plan each execution for its values.
                "plan_cache_mode": "force_custom_plan",
                **({TENANT_SETTING: config.tenant} if config.tenant is not None else {}),
            },
        )
        assert pool is not None
        return pool

    async def close(self) -> None:
        """Close the pool, and stop the embedded server if this store started it. Idempotent."""
        async with self._start_lock:
            await self._close()

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self.config.command_timeout)
            except (asyncio.TimeoutError, asyncpg.InterfaceError, OSError):
                pool.terminate()
        server, self._server = self._server, None
        if server is not None:
            await release_embedded(server)

    # --- running statements ------------------------------------------------------------------
    @property
    def _statements(self) -> Statements:
        if self._sql is None:
            raise MemoryError("the storage is not started: await storage.start() first")
        return self._sql

    async def _retrying(self, operation: str, attempt: Callable[[], Awaitable[T]]) -> T:
        config = self.config
        for number in range(config.retry_attempts + 1):
            try:
                return await attempt()
            except MemoryError:
                raise
            except Exception as exc:
                if number < config.retry_attempts and is_transient(exc):
                    delay = backoff_delay(number, config.retry_base_delay, config.retry_max_delay)
                    logger.warning(
                        "%s: transient fault (%s), retry %d in %.2fs",
                        operation,
                        type(exc).__name__,
                        number + 1,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                raise translate(exc, operation) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, operation: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection, retrying transient faults.

        Every caller's ``work`` is idempotent (reads, upserts, deletes by key or condition),
        so running it again after a broken connection cannot duplicate anything.
        """
        pool = self._pool
        if pool is None:
            raise MemoryError("the storage is not started: await storage.start() first")
        if asyncio.get_running_loop() is not self._loop:
            # asyncpg connections belong to the loop that opened them.
            raise MemoryError(
                f"{operation}: this store was started on another event loop; call it from "
                "that loop, or through pepperpy_pg_memory.runner.BackgroundStorage"
            )

        async def attempt() -> T:
            self.metrics.waiting += 1
            try:
                conn = await pool.acquire(timeout=self.config.pool_timeout)
            except asyncio.TimeoutError:
                raise MemoryTimeoutError(
                    f"{operation}: no free database connection within "
                    f"{self.config.pool_timeout:g}s (max_size={self.config.max_size}); raise "
                    "max_size or pool_timeout, or run fewer operations at once"
                ) from None
            finally:
                self.metrics.waiting -= 1
            try:
                return await work(typing.cast(asyncpg.Connection, conn))
            except Exception as exc:
                if is_transient(exc):
                    # Never hand a broken connection back for reuse; the pool opens a new one.
                    # (If it died on its own, asyncpg has already taken it back: nothing to do.)
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()
                raise
            finally:
                await pool.release(conn)

        return await self._retrying(operation, attempt)

    # --- values --------------------------------------------------------------------------------
    def _decode_value(self, raw: Any) -> V:
        adapter = self._value_adapter
        if adapter is False:
            adapter = self._value_adapter = self._make_value_adapter()
        if adapter is None:
            return typing.cast(V, raw)
        try:
            return typing.cast(V, adapter.validate_python(raw))
        except PydanticValidationError as exc:
            raise MemoryValidationError(
                f"a stored value does not fit the storage's value type: {exc.errors()[0]['msg']}"
            ) from None

    def _make_value_adapter(self) -> TypeAdapter[Any] | None:
        # PostgresStorage[str, Note](...) records its type arguments on the instance. Only a
        # pydantic model is rebuilt from the stored JSON; other declared types are hints, and a
        # value that does not match one is still returned rather than made unreadable.
        origin = getattr(self, "__orig_class__", None)
        args = typing.get_args(origin) if origin is not None else ()
        if len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            return TypeAdapter(args[1])
        return None

    def _entry(self, row: asyncpg.Record, embedding: bool = False) -> MemoryEntry[V]:
        vector = row["embedding"] if embedding else None
        return MemoryEntry.model_construct(
            key=row["key"],
            value=self._decode_value(row["value"]),
            text=row["content"],
            type=MemoryType(row["memory_type"]),
            scope=MemoryScope(row["scope"]),
            scope_id=row["scope_id"],
            indices=frozenset(MemoryIndex(index) for index in row["indices"]),
            metadata=row["metadata"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            expires_at=row["expires_at"],
            embedding=None if vector is None else _vector_list(vector),
        )

    # --- restricting -----------------------------------------------------------------------
    def _owner(
        self, scope: MemoryScope | str | None, scope_id: str | None
    ) -> tuple[MemoryScope | None, str | None]:
        if scope is None:
            if scope_id is not None:
                raise MemoryValidationError("scope_id needs a scope")
            return None, None
        scope = as_enum(MemoryScope, scope, "scope")
        if scope is MemoryScope.GLOBAL:
            if scope_id:
                raise MemoryValidationError("GLOBAL memories have no scope_id")
            return scope, ""
        if scope_id is None:
            return scope, self.config.default_scope_id
        if not isinstance(scope_id, str) or not scope_id:
            raise MemoryValidationError("scope_id must be a non-empty string")
        to_json_value(scope_id, "scope_id")  # NUL and surrogate check
        check_bytes(scope_id, MAX_SCOPE_ID_BYTES, "scope_id")
        return scope, scope_id

    def _restriction(
        self,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        types: Iterable[MemoryType | str] | MemoryType | None = None,
        filter: Mapping[str, Any] | None = None,
        **bounds: Any,
    ) -> Restriction:
        owner_scope, owner_id = self._owner(scope, scope_id)
        if isinstance(types, (MemoryType, str)):
            types = [types]
        type_set = (
            frozenset(as_enum(MemoryType, t, "type") for t in types) if types is not None else None
        )
        for name in ("filter", "value_filter"):
            given = filter if name == "filter" else bounds.get(name)
            if given is not None and not isinstance(given, Mapping):
                raise MemoryValidationError(f"{name} must be a mapping")
        return Restriction(
            tenant=self._tenant,
            scope=owner_scope,
            scope_id=owner_id,
            types=type_set,
            filter=filter,
            **bounds,
        )

    # --- writing ---------------------------------------------------------------------------
    def _prepare(
        self,
        key: Any,
        value: Any,
        *,
        type: MemoryType | str,
        scope: MemoryScope | str,
        scope_id: str | None,
        indices: Iterable[MemoryIndex | str] | None,
        metadata: Mapping[str, Any] | None,
        ttl: TTL,
        expires_at: datetime | None,
        embedding: Any = None,
        text: str | None = None,
    ) -> PendingWrite:
        config = self.config
        key = validate_key(key, config.max_key_length)
        memory_type = as_enum(MemoryType, type, "type")
        owner_scope, owner_id = self._owner(scope, scope_id)
        assert owner_scope is not None and owner_id is not None
        if value is None:
            raise MemoryValidationError(f"value of {key!r} is None: there is nothing to remember")
        # Encoded once: the size check and the database write share the text.
        json_text = EncodedJSON(encode_json(to_json_value(value)))
        size = len(json_text.encode())
        if size > config.max_value_bytes:
            raise MemoryValidationError(
                f"value of {key!r} is {size:,} bytes as JSON; the limit is "
                f"{config.max_value_bytes:,} (PostgresConfig.max_value_bytes)"
            )
        if metadata is None:
            json_metadata: dict[str, Any] = {}
        elif isinstance(metadata, Mapping):
            json_metadata = to_json_value(metadata, "metadata")
        else:
            raise MemoryValidationError("metadata must be a mapping")
        if text is None:
            text = self.text_of(value)
        if not isinstance(text, str):
            raise MemoryValidationError(
                f"the indexed text must be a str, not {type(text).__name__}"
            )
        to_json_value(text, "indexed text")  # NUL and surrogate check
        indices_to_write = index_set(indices)
        ttl_delta, expiry = resolve_expiry(ttl, expires_at, self.config.ttl_for(memory_type))
        vector = None
        if embedding is not None:
            if MemoryIndex.SEMANTIC not in indices_to_write:
                raise MemoryValidationError(
                    f"{key!r}: an embedding was given but SEMANTIC is not among its indices"
                )
            vector = self._one_vector(embedding)
        return PendingWrite(
            key=key,
            value=json_text,
            text=text,
            content_hash=hashlib.sha256(text.encode()).digest(),
            type=memory_type,
            scope=owner_scope,
            scope_id=owner_id,
            indices=indices_to_write,
            metadata=json_metadata,
            embedding=vector,
            ttl=ttl_delta,
            expires_at=expiry,
        )

    def _check_vectors(self, vectors: Any, count: int) -> Vector:
        array = np.asarray(vectors, dtype=np.float32)
        dimension = self.layout.dimension
        if array.ndim != 2 or array.shape[0] != count:
            raise MemoryValidationError(
                f"the embedder returned {array.shape[0] if array.ndim else 0} vectors for "
                f"{count} texts"
            )
        if array.shape[1] != dimension:
            raise DimensionMismatchError(
                f"embedding has {array.shape[1]} dimensions; this store's vectors have {dimension}",
                expected=dimension,
                actual=int(array.shape[1]),
            )
        if not np.isfinite(array).all():
            raise MemoryValidationError("embedding contains NaN or infinity")
        if (np.abs(array).max(axis=1) == 0).any():
            raise MemoryValidationError(
                "embedding is all zeros: cosine similarity is undefined for it"
            )
        return array

    async def _embed(
        self, texts: builtins.list[str], progress: ProgressCallback | None = None
    ) -> Vector:
        """Vectors for ``texts``, in batches, each distinct text embedded once."""
        unique = list(dict.fromkeys(texts))
        vectors: dict[str, Vector] = {}
        batch = self.config.embedding_batch_size
        for start in range(0, len(unique), batch):
            chunk = unique[start : start + batch]
            embedded = self._check_vectors(await self.embedder.embed_documents(chunk), len(chunk))
            vectors.update(zip(chunk, embedded, strict=True))
            if progress is not None:
                progress(min(start + batch, len(unique)), len(unique))
        if not texts:
            return np.zeros((0, self.layout.dimension), dtype=np.float32)
        return np.stack([vectors[text] for text in texts])

    def _timeout_for(self, rows: int) -> float:
        """Seconds per statement for work on ``rows`` rows at once.

        A bulk load's statements do work that grows with the batch (and may rebuild the
        index): they get the maintenance timeout, not the one meant for single reads/writes.
        """
        if rows >= BULK_WRITE_ROWS:
            return self.config.maintenance_timeout
        return self.config.command_timeout

    async def _plan_embeddings(
        self, writes: builtins.list[PendingWrite], progress: ProgressCallback | None = None
    ) -> None:
        """Give every write that needs one an embedding, embedding as little as possible.

        The cache answers texts embedded recently; a key whose stored text is unchanged keeps
        its stored vector (the upsert leaves it in place when sent NULL); only the rest reach
        the model, deduplicated, in batches.
        """
        pending = [w for w in writes if w.wants_embedding and w.embedding is None]
        missing: builtins.list[PendingWrite] = []
        for write in pending:
            cached = self._cache.get(write.content_hash)
            if cached is not None:
                write.embedding = cached
            else:
                missing.append(write)
        if missing:
            sql, args = self._statements.known_hashes(self._tenant, [w.identity for w in missing])
            timeout = self._timeout_for(len(missing))
            rows = await self._run("store", lambda conn: conn.fetch(sql, *args, timeout=timeout))
            stored = {_identity(row): bytes(row["content_hash"]) for row in rows}
            missing = [w for w in missing if stored.get(w.identity) != w.content_hash]
        if missing:
            vectors = await self._embed([w.text for w in missing], progress)
            for write, vector in zip(missing, vectors, strict=True):
                write.embedding = vector
                self._cache.put(write.content_hash, vector)

    async def _repair_embeddings(
        self, identities: builtins.list[Identity], writes: Mapping[Identity, PendingWrite]
    ) -> None:
        """Embed rows the upsert left without a vector (their text changed concurrently)."""
        todo = [writes[identity] for identity in identities if identity in writes]
        if not todo:
            return
        vectors = await self._embed([w.text for w in todo])
        sql = self._statements.set_embeddings()
        records = [
            (self._tenant, *w.identity, vector, w.content_hash)
            for w, vector in zip(todo, vectors, strict=True)
        ]
        timeout = self._timeout_for(len(records))
        await self._run("store", lambda conn: conn.executemany(sql, records, timeout=timeout))

    @instrumented("store")
    async def store(
        self,
        key: K,
        value: V,
        *,
        type: MemoryType | str = MemoryType.LONG_TERM,
        scope: MemoryScope | str = MemoryScope.GLOBAL,
        scope_id: str | None = None,
        indices: Iterable[MemoryIndex | str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: TTL = None,
        expires_at: datetime | None = None,
        embedding: Any = None,
        text: str | None = None,
    ) -> MemoryEntry[V]:
        """Store ``value`` under ``key`` for one owner, replacing what that owner held under
        the key before (an upsert). Another owner's memory under the same key is untouched.

        Args:
            key: unique per owner (at most ``config.max_key_length`` bytes in UTF-8).
            value: JSON data (dict, list, str, number, bool, None) or a pydantic model.
            type, scope: what kind of memory and whose; ``scope_id`` (at most 256 bytes)
                defaults to ``config.default_scope_id`` (GLOBAL has none).
            indices: SEMANTIC and/or CONTEXTUAL (default both); an empty set stores a plain
                key-value memory.
            metadata: a JSON object, searchable with filters.
            ttl: time-to-live (timedelta or seconds), ``"never"``, or None for the type's
                default (``config.type_ttls``). ``expires_at`` sets the moment instead.
            embedding: a precomputed vector, to skip the embedder.
            text: the text to index, instead of what ``text_of(value)`` gives.

        Returns:
            The stored entry. ``created_at`` is kept from an earlier live version of the key;
            the text is re-embedded only if it changed.
        """
        write = self._prepare(
            key,
            value,
            type=type,
            scope=scope,
            scope_id=scope_id,
            indices=indices,
            metadata=metadata,
            ttl=ttl,
            expires_at=expires_at,
            embedding=embedding,
            text=text,
        )
        await self._plan_embeddings([write])
        sql, args = self._statements.upsert_one(self._tenant, write.record())
        row = await self._run("store", lambda conn: conn.fetchrow(sql, *args))
        assert row is not None
        if row["needs_embedding"]:
            await self._repair_embeddings([write.identity], {write.identity: write})
        return MemoryEntry.model_construct(
            key=write.key,
            value=value,
            text=write.text,
            type=write.type,
            scope=write.scope,
            scope_id=write.scope_id,
            indices=write.indices,
            metadata=write.metadata,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            expires_at=row["expires_at"],
            embedding=None,
        )

    @instrumented("store_many")
    async def store_many(
        self,
        items: Iterable[MemoryItem | tuple[str, Any]],
        *,
        type: MemoryType | str = MemoryType.LONG_TERM,
        scope: MemoryScope | str = MemoryScope.GLOBAL,
        scope_id: str | None = None,
        indices: Iterable[MemoryIndex | str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: TTL = None,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Store many memories in one transaction: all of them, or (on any error) none.

        Everything is validated and embedded (in batches of ``config.embedding_batch_size``)
        before the database is touched; rows then go in through COPY and one upsert. A key
        given twice for one owner keeps its last value. ``progress(done, total)`` follows the
        embedding.

        Returns:
            How many distinct memories (owner and key) were written.
        """
        defaults = {
            "type": type,
            "scope": scope,
            "scope_id": scope_id,
            "indices": indices,
            "metadata": metadata,
            "ttl": ttl,
            "expires_at": None,
            "embedding": None,
            "text": None,
        }
        writes: dict[Identity, PendingWrite] = {}
        for position, item in enumerate(items):
            fields = item_fields(item, position)
            try:
                write = self._prepare(**{**defaults, **fields})
            except MemoryValidationError as exc:
                # Say which item, keeping the error's own class (DimensionMismatchError...).
                exc.message = f"item {position}: {exc.message}"
                raise
            # Re-inserted so that the last occurrence decides the order.
            writes.pop(write.identity, None)
            writes[write.identity] = write
        if not writes:
            return 0
        batch = list(writes.values())
        await self._plan_embeddings(batch, progress)
        statements = self._statements
        records = [write.record() for write in batch]

        bulk_rows = self.config.bulk_index_rebuild_rows
        mwm = self.config.maintenance_work_mem
        timeout = self._timeout_for(len(records))

        merge_sql, merge_args = statements.merge_staging(self._tenant)

        async def write_all(conn: asyncpg.Connection) -> builtins.list[Identity]:
            # Inserting row by row into an HNSW graph is the slowest part of a write (about
            # 1.5 ms a row at 384 dimensions); building the graph once over all rows is several
            # times faster. So a batch at least as large as the table drops the index and
            # rebuilds it, in the same transaction: readers wait for the commit, and a failure
            # rolls the index back with the rows.
            rebuild = bulk_rows > 0 and len(records) >= bulk_rows
            if rebuild:
                existing = await conn.fetchval(
                    statements.count_up_to(), len(records), timeout=timeout
                )
                rebuild = existing < len(records)
            async with conn.transaction():
                if rebuild:
                    await conn.execute(statements.drop_vector_index(), timeout=timeout)
                await conn.execute(statements.create_staging(), timeout=timeout)
                await conn.copy_records_to_table(
                    statements.staging,
                    records=records,
                    columns=list(STAGING_COLUMNS),
                    timeout=timeout,
                )
                rows = await conn.fetch(merge_sql, *merge_args, timeout=timeout)
                if rebuild:
                    for sql, args in statements.build_vector_index(mwm):
                        await conn.execute(sql, *args, timeout=timeout)
            return [_identity(row) for row in rows]

        repair = await self._run("store_many", write_all)
        await self._repair_embeddings(repair, writes)
        if len(batch) >= bulk_rows > 0:
            await self._after_bulk_load()
        return len(batch)

    async def _after_bulk_load(self) -> None:
        statements = self._statements.after_bulk_load()
        timeout = self.config.maintenance_timeout

        async def tidy(conn: asyncpg.Connection) -> None:
            for sql, args in statements:
                await conn.execute(sql, *args, timeout=timeout)

        try:
            await self._run("store_many", tidy)
        except MemoryError as exc:
            # Only an optimisation (autovacuum does the same later): the data is committed.
            logger.info("skipped post-load index maintenance: %s", exc)

    # --- reading ---------------------------------------------------------------------------
    @instrumented("retrieve")
    async def retrieve(
        self,
        key: K,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        include_embedding: bool = False,
    ) -> MemoryEntry[V]:
        """The live memory stored under ``key`` by the owner ``scope``/``scope_id``.

        Without a scope, the key is looked up across the owners this store may see: one match
        is that memory; several raise :class:`AmbiguousKeyError`.

        Raises:
            MemoryNotFoundError: no such key, it has expired, or it belongs to another
                ``(scope, scope_id)`` than the one given.
            AmbiguousKeyError: no scope was given and several owners hold the key.
        """
        checked = validate_key(key, self.config.max_key_length)
        restriction = self._restriction(scope, scope_id)
        sql, args = self._statements.retrieve(checked, restriction, include_embedding)
        rows = await self._run("retrieve", lambda conn: conn.fetch(sql, *args))
        if not rows:
            raise MemoryNotFoundError(checked)
        if len(rows) > 1:
            raise await self._ambiguous(checked, restriction)
        return self._entry(rows[0], embedding=include_embedding)

    async def _ambiguous(self, key: str, restriction: Restriction) -> AmbiguousKeyError:
        """The error for a key several owners hold, saying how many."""
        owners = await self._owners_of([key], restriction)
        return AmbiguousKeyError(key, len(owners))

    async def _owners_of(
        self, keys: builtins.list[str], restriction: Restriction
    ) -> builtins.list[Identity]:
        sql, args = self._statements.owners_of(keys, restriction)
        rows = await self._run("lookup", lambda conn: conn.fetch(sql, *args))
        return [_identity(row) for row in rows]

    async def _resolve(
        self,
        keys: builtins.list[str],
        scope: MemoryScope | str | None,
        scope_id: str | None,
    ) -> builtins.list[Identity]:
        """The memories ``keys`` name: the given owner's, or, without a scope, each key's one
        live holder among the owners this store may see (keys nobody holds are left out).

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold one of the keys.
        """
        owner_scope, owner_id = self._owner(scope, scope_id)
        if owner_scope is not None:
            assert owner_id is not None
            return [Identity(owner_scope.value, owner_id, key) for key in keys]
        found = await self._owners_of(keys, self._restriction())
        _check_unambiguous(found)
        return found

    @instrumented("retrieve_many")
    async def retrieve_many(
        self,
        keys: Iterable[K],
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
    ) -> dict[str, MemoryEntry[V]]:
        """The owner's live memories stored under ``keys``, by key; missing keys are left out.

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold one of the keys.
        """
        checked = list(dict.fromkeys(validate_key(key, self.config.max_key_length) for key in keys))
        if not checked:
            return {}
        sql, args = self._statements.retrieve_many(checked, self._restriction(scope, scope_id))
        rows = await self._run("retrieve_many", lambda conn: conn.fetch(sql, *args))
        _check_unambiguous([_identity(row) for row in rows])
        return {row["key"]: self._entry(row) for row in rows}

    @instrumented("touch")
    async def touch(
        self,
        keys: Iterable[K],
        ttl: timedelta | float | int,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
    ) -> int:
        """Give the owner's live memories under ``keys`` a new time-to-live from now (e.g. to
        keep memories that are still being read); returns how many were extended.

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold one of the keys
                (nothing is extended).
        """
        checked = list(dict.fromkeys(validate_key(key, self.config.max_key_length) for key in keys))
        delta, _ = resolve_expiry(ttl, None, self.config.ttl_for(MemoryType.LONG_TERM))
        if not checked or delta is None:
            return 0
        identities = await self._resolve(checked, scope, scope_id)
        if not identities:
            return 0
        sql, args = self._statements.touch(self._tenant, identities, delta)
        return _affected(await self._run("touch", lambda conn: conn.execute(sql, *args)))

    @instrumented("exists")
    async def exists(
        self, key: K, *, scope: MemoryScope | str | None = None, scope_id: str | None = None
    ) -> bool:
        """Whether the owner holds a live memory under ``key``.

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold the key.
        """
        checked = validate_key(key, self.config.max_key_length)
        restriction = self._restriction(scope, scope_id)
        sql, args = self._statements.exists(checked, restriction)
        found = await self._run("exists", lambda conn: conn.fetchval(sql, *args))
        if found > 1:
            raise await self._ambiguous(checked, restriction)
        return bool(found)

    @instrumented("count")
    async def count(
        self,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        types: Iterable[MemoryType | str] | MemoryType | None = None,
        filter: Mapping[str, Any] | None = None,
        value_filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
    ) -> int:
        """How many live memories match."""
        restriction = self._restriction(
            scope, scope_id, types, filter, value_filter=value_filter, key_prefix=key_prefix
        )
        sql, args = self._statements.count(restriction)
        return int(await self._run("count", lambda conn: conn.fetchval(sql, *args)))

    @instrumented("distinct_metadata")
    async def distinct_metadata(
        self,
        key: str,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        types: Iterable[MemoryType | str] | MemoryType | None = None,
        filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
        limit: int = 1_000,
    ) -> builtins.list[tuple[Any, int]]:
        """The distinct values of metadata ``key`` (dots for nested keys) among live memories,
        each with how many memories have it, in value order."""
        from .filters import key_path

        if not 1 <= limit <= 100_000:
            raise MemoryValidationError("limit must be in [1, 100000]")
        restriction = self._restriction(scope, scope_id, types, filter, key_prefix=key_prefix)
        sql, args = self._statements.distinct_metadata(key_path(key), restriction, limit)
        rows = await self._run("distinct_metadata", lambda conn: conn.fetch(sql, *args))
        return [(row["value"], int(row["memories"])) for row in rows]

    @instrumented("list")
    async def list(
        self,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        types: Iterable[MemoryType | str] | MemoryType | None = None,
        filter: Mapping[str, Any] | None = None,
        value_filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
        limit: int = 100,
        offset: int = 0,
        order_by: ListOrder = "created_at",
        descending: bool = True,
    ) -> builtins.list[MemoryEntry[V]]:
        """A page of live memories, newest first by default."""
        if not 1 <= limit <= 10_000 or not 0 <= offset:
            raise MemoryValidationError("limit must be in [1, 10000] and offset >= 0")
        if order_by not in ("created_at", "updated_at", "key"):
            raise MemoryValidationError(f"cannot order by {order_by!r}")
        sql, args = self._statements.list_page(
            self._restriction(
                scope, scope_id, types, filter, value_filter=value_filter, key_prefix=key_prefix
            ),
            limit=limit,
            offset=offset,
            order_by=order_by,
            descending=descending,
        )
        rows = await self._run("list", lambda conn: conn.fetch(sql, *args))
        return [self._entry(row) for row in rows]

    # --- deleting --------------------------------------------------------------------------
    @instrumented("delete")
    async def delete(
        self, key: K, *, scope: MemoryScope | str | None = None, scope_id: str | None = None
    ) -> bool:
        """Delete the owner's memory stored under ``key``; True if a live one was deleted.

        Without a scope, the key's one live holder is deleted (see :meth:`retrieve`).

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold the key (nothing
                is deleted).
        """
        checked = validate_key(key, self.config.max_key_length)
        if scope is None:
            if scope_id is not None:
                raise MemoryValidationError("scope_id needs a scope")
            holders = await self._resolve([checked], None, None)
            if not holders:
                return False
            scope, scope_id = holders[0].scope, holders[0].scope_id
        restriction = replace(self._restriction(scope, scope_id), include_expired=True)
        sql, args = self._statements.delete(checked, restriction)
        rows = await self._run("delete", lambda conn: conn.fetch(sql, *args))
        return any(row["live"] for row in rows)

    @instrumented("delete_many")
    async def delete_many(
        self,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        types: Iterable[MemoryType | str] | MemoryType | None = None,
        filter: Mapping[str, Any] | None = None,
        keys: Iterable[str] | None = None,
        value_filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
    ) -> int:
        """Delete every memory that matches all the criteria given; returns how many.

        At least one criterion is required, so that a forgotten argument cannot empty the
        store: use :meth:`clear` for that. ``keys`` without a scope name each key's one live
        holder, as in :meth:`delete`.

        Raises:
            AmbiguousKeyError: ``keys`` without a scope, and several owners hold one of them
                (nothing is deleted).
        """
        if (
            scope is None
            and types is None
            and not filter
            and not value_filter
            and keys is None
            and not key_prefix
        ):
            raise MemoryValidationError(
                "delete_many needs a scope, types, filter, keys or key_prefix; "
                "use clear() to delete all"
            )
        key_set = identities = None
        if keys is not None:
            key_set = frozenset(validate_key(k, self.config.max_key_length) for k in keys)
            if scope is None:
                identities = frozenset(await self._resolve(sorted(key_set), None, None))
                if not identities:
                    return 0
        restriction = replace(
            self._restriction(
                scope, scope_id, types, filter, value_filter=value_filter, key_prefix=key_prefix
            ),
            keys=key_set,
            identities=identities,
            include_expired=True,
        )
        sql, args = self._statements.delete_many(restriction)
        # Its work grows with the rows matched, which nothing bounds.
        timeout = self.config.maintenance_timeout
        status = await self._run(
            "delete_many", lambda conn: conn.execute(sql, *args, timeout=timeout)
        )
        return _affected(status)

    @instrumented("clear")
    async def clear(self) -> int:
        """Delete every memory of this store's tenant; returns how many."""
        sql, args = self._statements.delete_many(
            Restriction(tenant=self._tenant, include_expired=True)
        )
        timeout = self.config.maintenance_timeout
        status = await self._run("clear", lambda conn: conn.execute(sql, *args, timeout=timeout))
        self._cache.clear()
        return _affected(status)

    async def scan(
        self,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        types: Iterable[MemoryType | str] | MemoryType | None = None,
        filter: Mapping[str, Any] | None = None,
        page_size: int = 1_000,
    ) -> AsyncIterator[MemoryEntry[V]]:
        """Every live memory that matches, in owner-then-key order, read a page at a time.

        Pages follow the last memory read (a keyset), so each costs the same however far the
        scan has gone, and memories written or deleted meanwhile never shift the pages: for
        exports and migrations of any size.
        """
        if not 1 <= page_size <= 10_000:
            raise MemoryValidationError("page_size must be in [1, 10000]")
        restriction = self._restriction(scope, scope_id, types, filter)
        after: Identity | None = None
        while True:
            sql, args = self._statements.scan_page(restriction, after, page_size)
            rows = await self._run("scan", partial(_fetch, sql, args))
            for row in rows:
                yield self._entry(row)
            if len(rows) < page_size:
                return
            after = _identity(rows[-1])

    # --- searching -------------------------------------------------------------------------
    def search(self, query: MemoryQuery) -> MemorySearchResults[V]:
        """Memories matching ``query``, best first (see :class:`MemoryQuery` for scores).

        Use ``async for result in storage.search(query)`` or ``await storage.search(query)``.
        """
        if not isinstance(query, MemoryQuery):
            raise MemoryValidationError("search takes a MemoryQuery")
        return MemorySearchResults(lambda: self._search(query))

    async def _query_vector(self, query: MemoryQuery) -> Vector:
        if query.embedding is not None:
            return self._one_vector(query.embedding)
        assert query.query is not None
        content_hash = hashlib.sha256(query.query.encode()).digest()
        cached = self._cache.get(content_hash)
        if cached is not None:
            return cached
        vector = self._one_vector(await self.embedder.embed_query(query.query))
        self._cache.put(content_hash, vector)
        return vector

    def _one_vector(self, raw: Any) -> Vector:
        vector: Vector = self._check_vectors(np.asarray([raw], dtype=np.float32), 1)[0]
        return vector

    @instrumented("search")
    async def _search(self, query: MemoryQuery) -> builtins.list[MemorySearchResult[V]]:
        statements = self._statements
        restriction = self._restriction(
            query.scope,
            query.scope_id,
            query.types,
            query.filter,
            value_filter=query.value_filter,
            keys=query.keys,
            key_prefix=query.key_prefix,
            created_after=query.created_after,
            created_before=query.created_before,
            updated_after=query.updated_after,
            updated_before=query.updated_before,
        )
        index = query.index_type
        if index is MemoryIndex.SEMANTIC:
            vector = await self._query_vector(query)
            sql, args = statements.semantic_search(
                vector,
                restriction,
                limit=query.limit,
                offset=query.offset,
                min_score=query.min_score,
                include_embedding=query.include_embedding,
            )
        elif index is MemoryIndex.CONTEXTUAL:
            assert query.query is not None
            sql, args = statements.contextual_search(
                query.query,
                restriction,
                limit=query.limit,
                offset=query.offset,
                min_score=query.min_score,
            )
        elif index is MemoryIndex.HYBRID:
            assert query.query is not None
            vector = await self._query_vector(query)
            sql, args = statements.hybrid_search(
                query.query,
                vector,
                restriction,
                candidates=self.config.hybrid_candidates,
                rrf_k=self.config.rrf_k,
                limit=query.limit,
                offset=query.offset,
                min_score=query.min_score,
            )
        else:
            sql, args = statements.temporal_search(
                query.query,
                restriction,
                limit=query.limit,
                offset=query.offset,
                min_score=query.min_score,
            )
        rows = await self._run("search", lambda conn: conn.fetch(sql, *args))
        return [
            MemorySearchResult.model_construct(
                entry=self._entry(row, embedding=query.include_embedding),
                score=float(row["score"]),
                index_type=index,
                semantic_score=_optional_float(row, "semantic_score"),
                contextual_score=_optional_float(row, "contextual_score"),
            )
            for row in rows
        ]

    def similar(
        self,
        key: K,
        limit: int = 5,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        types: Iterable[MemoryType | str] | MemoryType | None = None,
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> MemorySearchResults[V]:
        """The memories nearest in meaning to the one stored under ``key`` (itself excluded).

        Uses the stored embedding; nothing is re-embedded. With a scope given, both ``key`` and
        the results must belong to that owner; without one, ``key`` names its one live holder
        and the results may come from any owner. Scores are cosine similarities.

        Raises:
            MemoryNotFoundError: ``key`` is missing, expired or outside the given owner.
            MemoryIndexError: ``key`` was stored without the SEMANTIC index.
            AmbiguousKeyError: no scope was given and several owners hold ``key``.
        """
        checked = validate_key(key, self.config.max_key_length)
        if not 1 <= limit <= 1_000:
            raise MemoryValidationError("limit must be in [1, 1000]")
        if min_score is not None and not -1.0 <= min_score <= 1.0:
            raise MemoryValidationError("min_score must be in [-1, 1] (cosine similarity)")
        restriction = self._restriction(scope, scope_id, types, filter)
        return MemorySearchResults(
            lambda: self._similar(checked, scope, scope_id, restriction, limit, min_score)
        )

    @instrumented("similar")
    async def _similar(
        self,
        key: str,
        scope: MemoryScope | str | None,
        scope_id: str | None,
        restriction: Restriction,
        limit: int,
        min_score: float | None,
    ) -> builtins.list[MemorySearchResult[V]]:
        statements = self._statements
        holders = await self._resolve([key], scope, scope_id)
        if not holders:
            raise MemoryNotFoundError(key)
        target = holders[0]
        sql, args = statements.similar(target, restriction, limit=limit, min_score=min_score)
        rows = await self._run("similar", lambda conn: conn.fetch(sql, *args))
        if not rows:
            probe_sql, probe_args = statements.probe_state(self._tenant, target)
            state = await self._run("similar", lambda conn: conn.fetchrow(probe_sql, *probe_args))
            if state is None:
                raise MemoryNotFoundError(key)
            if not state["has_embedding"]:
                raise MemoryIndexError(
                    f"memory {key!r} has no embedding: it was stored without the SEMANTIC index"
                )
        return [
            MemorySearchResult.model_construct(
                entry=self._entry(row),
                score=float(row["score"]),
                index_type=MemoryIndex.SEMANTIC,
                semantic_score=float(row["score"]),
                contextual_score=None,
            )
            for row in rows
        ]

    # --- maintenance -------------------------------------------------------------------------
    @instrumented("cleanup_expired")
    async def cleanup_expired(
        self,
        *,
        scope: MemoryScope | str | None = None,
        scope_id: str | None = None,
        batch_size: int | None = None,
    ) -> int:
        """Delete expired memories in bounded batches; returns how many were deleted.

        Expired memories are already invisible to every read; this reclaims their space.
        """
        batch = batch_size or self.config.maintenance_batch_size
        restriction = replace(self._restriction(scope, scope_id), include_expired=True)
        sql, args = self._statements.delete_expired_batch(restriction, batch)
        total = 0
        while True:
            status = await self._run("cleanup_expired", lambda conn: conn.execute(sql, *args))
            deleted = _affected(status)
            total += deleted
            if deleted < batch:
                return total

    @instrumented("reindex")
    async def reindex(
        self,
        index: MemoryIndex | str = MemoryIndex.SEMANTIC,
        *,
        batch_size: int | None = None,
        resume: bool = True,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Rebuild an index; returns how many memories it covers.

        SEMANTIC re-embeds every live memory with the current embedder, in batches walked by
        key (keyset pagination). An interrupted run leaves its position in the registry and,
        with ``resume=True``, the next call continues from there. If the embedder's dimension
        differs from the table's, the column is converted first (this is how a store moves to
        a new model). CONTEXTUAL rebuilds the full-text and trigram indexes, switching the
        text search configuration to ``config.text_search_config`` if it changed.
        """
        index = as_enum(MemoryIndex, index, "index")
        if index is MemoryIndex.SEMANTIC:
            return await self._reindex_semantic(batch_size, resume, progress)
        if index is MemoryIndex.CONTEXTUAL:
            return await self._reindex_contextual(progress)
        raise MemoryValidationError(f"{index.name} is a query mode, not an index to rebuild")

    async def _reindex_semantic(
        self, batch_size: int | None, resume: bool, progress: ProgressCallback | None
    ) -> int:
        batch = batch_size or self.config.embedding_batch_size * 4
        dimension = await asyncio.to_thread(lambda: int(self.embedder.dimension))
        if dimension != self.layout.dimension:
            await self._convert_dimension(dimension)
            resume = False
        statements = self._statements
        table = self.layout.table
        tenant = self._tenant
        cursor: Identity | None = None
        if resume:
            saved = await self._run(
                "reindex",
                lambda conn: conn.fetchval(statements.load_reindex_cursor(), table),
            )
            cursor = maintenance.decode_cursor(saved, tenant)
        total = int(
            await self._run(
                "reindex", lambda conn: conn.fetchval(statements.count_semantic(), tenant)
            )
        )
        done = 0
        if cursor:
            logger.info("resuming an interrupted semantic reindex of %s", table)
        self._cache.clear()  # vectors from the previous model must not be reused
        # Each re-embedded row would go through the HNSW graph (about 1 ms a row); without the
        # index the updates are plain writes and the graph is built once at the end. Semantic
        # searches meanwhile scan exactly (correct, slower); if the run is interrupted, the
        # next start() or reindex() builds the index again.
        rebuild = not cursor and 0 < self.config.bulk_index_rebuild_rows <= total
        if rebuild:
            await self._run("reindex", lambda conn: conn.execute(statements.drop_vector_index()))
        while True:
            rows = await self._run(
                "reindex",
                partial(maintenance.fetch_reindex_batch, statements, tenant, cursor, batch),
            )
            if not rows:
                break
            vectors = await self._embed([row["content"] for row in rows])
            records = [
                (tenant, *_identity(row), vector, row["content_hash"])
                for row, vector in zip(rows, vectors, strict=True)
            ]
            cursor = _identity(rows[-1])
            saved_cursor = maintenance.encode_cursor(tenant, cursor)
            await self._run(
                "reindex",
                partial(maintenance.write_reindexed, statements, table, records, saved_cursor),
            )
            done += len(rows)
            if progress is not None:
                progress(min(done, total), total)
        await self._run(
            "reindex", lambda conn: conn.execute(statements.save_reindex_cursor(), table, None)
        )
        if rebuild:
            await self._run(
                "reindex",
                partial(
                    maintenance.build_vector_index,
                    statements,
                    self.config.maintenance_work_mem,
                    self.config.maintenance_timeout,
                ),
            )
        return done

    async def _convert_dimension(self, dimension: int) -> None:
        """Retype the embedding column for a new model; every stored vector is dropped."""
        old = self.layout
        new = replace(old, dimension=dimension, vector_type=vector_type_for(dimension))
        logger.warning(
            "converting %s.%s embeddings from %d to %d dimensions; every memory is re-embedded",
            old.schema,
            old.table,
            old.dimension,
            dimension,
        )

        await self._run(
            "reindex",
            partial(maintenance.convert_dimension, old, new, self.config.maintenance_timeout),
        )
        self._layout = new
        self._sql = Statements(new)
        # Cached statements describe the old column type.
        assert self._pool is not None
        await self._pool.expire_connections()

    async def _reindex_contextual(self, progress: ProgressCallback | None) -> int:
        layout = self.layout
        wanted = self.config.text_search_config
        count = await self._run(
            "reindex",
            partial(
                maintenance.rebuild_contextual,
                layout,
                wanted,
                self._tenant,
                self.config.maintenance_timeout,
            ),
        )
        if layout.text_search_config != wanted:
            self._layout = replace(layout, text_search_config=wanted)
            self._sql = Statements(self._layout)
        if progress is not None:
            progress(count, count)
        return count

    async def stats(self) -> dict[str, Any]:
        """Figures for monitoring (the design document's list).

        ``memories`` and ``expired_not_cleaned``; ``table_bytes``, ``total_bytes`` and
        ``index_bytes`` per index; ``pool`` (size, in use, idle, waiting, max); ``operations``
        (count, errors, mean and bucketed p50/p95 latency, histogram) per operation;
        ``errors`` by class; ``embedding_cache`` (entries, hits, misses, hit rate).
        """
        figures = await self._run(
            "stats", partial(maintenance.table_figures, self._statements, self._tenant)
        )
        pool = self._pool
        assert pool is not None
        figures["pool"] = {
            "size": pool.get_size(),
            "idle": pool.get_idle_size(),
            "in_use": pool.get_size() - pool.get_idle_size(),
            "waiting": self.metrics.waiting,
            "max_size": pool.get_max_size(),
        }
        figures["operations"] = {
            name: stats.as_dict() for name, stats in sorted(self.metrics.operations.items())
        }
        figures["errors"] = dict(self.metrics.errors)
        lookups = self._cache.hits + self._cache.misses
        figures["embedding_cache"] = {
            "entries": len(self._cache),
            "hits": self._cache.hits,
            "misses": self._cache.misses,
            "hit_rate": self._cache.hits / lookups if lookups else None,
        }
        figures["dimension"] = self.layout.dimension
        return figures


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to undo. asyncpg rolls back any open transaction itself, and
    this store keeps no session state (no LISTEN, session SETs or session advisory locks), so
    the default RESET ALL round trip on every release would only cost latency."""


def _vector_list(vector: Any) -> builtins.list[float]:
    # pgvector >= 0.4 decodes to Vector/HalfVector objects, 0.3 to numpy arrays.
    values = vector.to_list() if hasattr(vector, "to_list") else np.asarray(vector).tolist()
    return [float(x) for x in values]


async def _fetch(
    sql: str, args: builtins.list[Any], conn: asyncpg.Connection
) -> builtins.list[asyncpg.Record]:
    rows: builtins.list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows


def _identity(row: asyncpg.Record) -> Identity:
    return Identity(row["scope"], row["scope_id"], row["key"])


def _check_unambiguous(identities: Iterable[Identity]) -> None:
    """Raise :class:`AmbiguousKeyError` for the first key held by several owners."""
    owners: dict[str, int] = {}
    for identity in identities:
        owners[identity.key] = owners.get(identity.key, 0) + 1
    for key, count in owners.items():
        if count > 1:
            raise AmbiguousKeyError(key, count)


def _affected(status: str) -> int:
    # "DELETE 42" -> 42
    return int(status.rsplit(" ", 1)[-1])


def _optional_float(row: asyncpg.Record, column: str) -> float | None:
    try:
        value = row[column]
    except KeyError:
        return None
    return None if value is None else float(value)

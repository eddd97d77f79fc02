"""``PostgresStorage``: an agent's memories in PostgreSQL, recalled by meaning and by words.

A facade: each public method checks its arguments, calls one operation of
:mod:`.operations` (a function of the :class:`~.operations.started.Started` context that
``start()`` builds) and returns. Below the operations: :mod:`.items` checks input (pure),
:mod:`.queries` and :mod:`.search_sql` build statements, :mod:`.database` runs them (pool,
retries, errors), :mod:`.vectors` embeds (model, cache, checks), :mod:`.bulk` and
:mod:`.maintenance` hold the steps that need one connection of their own.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Generic, TextIO, TypeVar

from pydantic import BaseModel

from .cache import EmbeddingCache
from .config import PostgresConfig
from .database import Runner
from .embeddings import Embedder
from .errors import MemoryError, MemoryValidationError
from .metrics import instrumented
from .models import (
    MAX_LIST_PAGE,
    MAX_ROWS_PER_READ,
    ConsolidationReport,
    ImportReport,
    MemoryEntry,
    MemoryOwner,
    MemoryQuery,
    MemoryVersion,
    StoredCount,
    StoredValue,
    Turn,
)
from .operations import (
    conversing,
    deleting,
    lifecycle,
    reads,
    search,
    transfer,
    upkeep,
    versions,
    writing,
)
from .operations.rows import declared_value_type
from .operations.started import Services, Started, Types
from .results import MemorySearchResults
from .schema import TableLayout
from .types import (
    CONVERSATION_RECORDS,
    TTL,
    ArrayPattern,
    Distribution,
    Identity,
    ListOrder,
    MemoryIndex,
    MemoryItem,
    MemoryScope,
    MemoryType,
    ProgressCallback,
    Scope,
    Summarizer,
)
from .vectors import Vector

__all__ = ["PostgresStorage", "MemorySearchResults", "ProgressCallback", "MemoryItem"]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=str)
V = TypeVar("V")


class PostgresStorage(Generic[K, V]):
    """An agent's memories in one PostgreSQL table.

    ``K`` is the key type (strings); ``V`` the value type. Values are stored as JSON; when the
    value type is a pydantic model (``value_type=Note``, or ``PostgresStorage[str, Note]``),
    values read back are validated into it.

    Examples:
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
        value_type: the pydantic model values are read back as; by default the ``V`` of
            ``PostgresStorage[str, V]`` (or of a subclass's base) when it is one.
    """

    def __init__(
        self,
        config: PostgresConfig | None = None,
        embedder: Any = None,
        *,
        text_of: Callable[[Any], str] | None = None,
        value_type: type[BaseModel] | None = None,
    ) -> None:
        self.config = config if config is not None else PostgresConfig()
        services = Services.create(self.config, embedder, text_of, lambda: self.layout)
        self.text_of: Callable[[Any], str] = services.text_of
        self.metrics = services.metrics
        self.database = services.database
        """The pool and how statements run on it (for monitoring and tests)."""
        self._services = services
        self._vectors, self._term_stats, self._access = (
            services.vectors,
            services.term_stats,
            services.access,
        )
        # The embedded server, replicas and their router, when start() opened them.
        self._attached = lifecycle.Attachments()
        # Part of every memory's identity; '' for a store without a tenant.
        self._tenant = self.config.tenant or ""
        # What the operations share, built by start() (see operations/started.py).
        self._started: Started[V] | None = None
        self._value_type = value_type
        self._start_lock = asyncio.Lock()
        self._identity = ""  # the embedder's name and dimension, known once started
        # Concurrent store() calls are written in batches (see writing.store_queue).
        self._store_calls = writing.store_queue(
            self.config, lambda calls: writing.store_batch(self._ready, calls)
        )

    # --- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> PostgresStorage[K, V]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def reads(self) -> Runner:
        """Where the reads a replica may serve run: the primary, or a :class:`ReadRouter`
        over the replicas when there are any."""
        router = self._attached.router
        return self.database.reading if router is None else router

    @property
    def started(self) -> bool:
        return self.database.is_open

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the store was started on (its pool belongs to it); None if closed."""
        return self.database.loop

    @property
    def embedder(self) -> Embedder:
        return self._vectors.embedder

    @property
    def embedding_cache(self) -> EmbeddingCache:
        """Recently embedded texts' vectors (``clear()`` it to force re-embedding)."""
        return self._vectors.cache

    @property
    def layout(self) -> TableLayout:
        """The table's recorded layout (dimension, vector type, text search configuration)."""
        return self._ready.layout

    async def start(self) -> None:
        """Connect, create the extensions and the table if needed, and open the pool.

        Idempotent. On an embedded config, starts the server first (or attaches to a running
        one). When the table holds another model's vectors (the registry records the model's
        name and dimension), raises :class:`EmbedderMismatchError` — or
        :class:`DimensionMismatchError` when the dimensions differ — unless
        ``config.on_embedder_change == "reindex"``, which re-embeds every memory (resumable).
        A table without vectors simply adopts the current model.
        """
        async with self._start_lock:
            if self.database.is_open:
                return
            try:
                await self._start()
            except BaseException:
                await self._close()
                raise

    async def _start(self) -> None:
        config, attached = self.config, self._attached
        dsn = await lifecycle.attach_server(config, attached)
        dimension = await self._vectors.model_dimension()
        wanted = lifecycle.wanted_layout(config, self._vectors.embedder, dimension)
        self._identity = str(wanted.embedder)
        layout, vectors_in, dsn = await lifecycle.prepare_table(
            config, dsn, wanted, self._tenant, attached
        )
        self._use_layout(layout)
        settings = lifecycle.session_settings(config, self._tenant)
        await self.database.open(dsn, vectors_in, settings)
        self.database.transaction_settings = lifecycle.transaction_settings(
            config, self._tenant, layout
        )
        router = await lifecycle.open_replicas(
            config, self.database, self.metrics, attached, vectors_in, settings
        )
        if router is not None:
            self._use_layout(layout)  # reads go through it from now on
        await lifecycle.check_embedder(self._ready, dimension, self._use_layout)
        pending = await lifecycle.pending_backfills(self._ready)
        self._set_backfilling(any(item.searched for item in pending))
        if pending and config.background_backfill:
            attached.backfill = lifecycle.in_background(
                self.complete_backfills(), f"the online backfill of {layout.table}"
            )
        await self._term_stats.start()
        logger.info("memory store ready on %s", config.describe_target())

    async def grant_tenant(self, role: str, tenant: str) -> None:
        """Bind the database role ``role`` to ``tenant`` and grant it the use of this store's
        tables: under row-level security its sessions then see and write only that tenant's
        memories, whatever ``pepperpy.tenant`` they set. Run as the tables' owner (a store
        started as the owner, with ``row_level_security=True``); ``role`` must exist and not be
        a superuser or BYPASSRLS role (see docs/multi-tenant-deployments.md)."""
        await lifecycle.grant_tenant(self._ready, role, tenant)

    async def distribute(
        self, distribution: Distribution, *, progress: ProgressCallback | None = None
    ) -> None:
        """Distribute this store's tables across a Citus cluster by ``distribution``
        ("owner": each owner's memories on one node; "tenant": each tenant's), converting
        a store created without it (``pepperpy-memory distribute``). Each table moves in
        its own transaction, and a table already placed is skipped: an interrupted run
        resumes. Stop every other process using the store first; start them again with
        ``distribution`` configured. ``progress`` gets (tables done, tables in all)."""
        layout = await lifecycle.distribute(self._ready, distribution, progress)
        self._use_layout(layout)
        self.database.transaction_settings = lifecycle.transaction_settings(
            self.config, self._tenant, layout
        )

    @property
    def backfill_pending(self) -> bool:
        """Whether an upgrade's online backfill may still be under way (see
        :meth:`complete_backfills`): rows written before the upgrade may lack what it adds."""
        return self._started is None or self._started.backfilling

    async def complete_backfills(self, *, progress: ProgressCallback | None = None) -> int:
        """Run the pending online backfills of this tenant's memories to the end; returns
        how many memories they changed.

        An upgrade that changes every existing memory (e.g. the contextual terms of schema
        6, the history's copies of vectors dropped by 27) does it after start(), in batches of
        ``maintenance_batch_size`` that resume after a crash; with ``background_backfill``
        (the default) start() runs them in the background, and searches stay correct
        meanwhile. Call this (or ``pepperpy-memory backfill``) to wait for them, with progress.
        """
        changed = await lifecycle.run_backfills(self._ready, progress)
        if self._ready.backfilling:
            self._set_backfilling(False)
            self._term_stats.note_writes(max(changed, 1))
        return changed

    async def refresh_term_statistics(self) -> None:
        """Recount the term statistics contextual ranking uses, now.

        They are refreshed in the background once writes since the last count reach a
        quarter of the memories, so a search right after a large load may rank by stale
        figures for a moment; call this after bulk loads when the next search matters.
        """
        await self._term_stats.settle()
        await self._term_stats.refresh_now()

    async def flush_access_counts(self) -> None:
        """Write the read counts noted so far now, instead of within
        ``access_flush_interval`` seconds (``close()`` writes them too)."""
        await self._access.flush()

    def _set_backfilling(self, backfilling: bool) -> None:
        self._started = replace(self._ready, backfilling=backfilling)

    def _use_layout(self, layout: TableLayout) -> Started[V]:
        """Build the operations' context for ``layout`` (and the current reads), keep it and
        return it: at start, and whenever the layout changes (see upkeep.Relayout)."""
        if self._started is None:
            self._started = Started.build(
                self._services,
                self.config,
                layout,
                backfilling=True,  # until start() has looked
                reads=self.reads,
                value_type=self._value_type or declared_value_type(self, PostgresStorage),
                text_of=self.text_of,  # as set now: callers may replace it before start()
                embedder_identity=self._identity,
            )
        else:
            self._started = replace(self._started, layout=layout, reads=self.reads)
        self._access.layout = layout
        self._vectors.dimension = layout.dimension
        return self._started

    async def close(self) -> None:
        """Finish the writes under way, close the pool, and stop the embedded server if this
        store started it. Idempotent."""
        await self._store_calls.drain()
        async with self._start_lock:
            await self._close()

    async def _close(self) -> None:
        await lifecycle.stop_background(self._attached)
        await self._term_stats.stop()
        await self._access.stop()
        await lifecycle.release(self._attached, self.database)
        if self._started is not None:
            self._started = replace(self._started, reads=self.reads)

    @property
    def _ready(self) -> Started[V]:
        if self._started is None:
            raise MemoryError("the storage is not started: await storage.start() first")
        return self._started

    # --- writing ---------------------------------------------------------------------------
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
        passages: Sequence[str] | None = None,
        importance: float = 0.5,
        dedupe: bool | float | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> MemoryEntry[V]:
        """Store ``value`` under ``key`` for one owner, replacing what that owner held under
        the key before (an upsert). Another owner's memory under the same key is untouched.

        Args:
            key: unique per owner (at most ``config.max_key_length`` bytes in UTF-8).
            value: JSON data (dict, list, str, number, bool, None) or a pydantic model.
            type: what kind of memory.
            scope: whose; ``scope_id`` (at most 256 bytes) defaults to
                ``config.default_scope_id`` (GLOBAL has none).
            scope_id: the owner within ``scope``.
            indices: SEMANTIC and/or CONTEXTUAL (default both); an empty set stores a plain
                key-value memory.
            metadata: a JSON object, searchable with filters.
            ttl: time-to-live (timedelta or seconds), ``"never"``, or None for the type's
                default (``config.type_ttls``). ``expires_at`` sets the moment instead.
            embedding: a precomputed vector, to skip the embedder.
            text: the text to index, instead of what ``text_of(value)`` gives.
            passages: more texts to embed one by one (at most 64), e.g. the fields of a
                record: a semantic search scores the memory by the best match among its
                text and its passages. A write replaces the memory's passages (none given:
                it has none).
            importance: in [0, 1]; weighs in searches with a ``Ranking`` (a store sets it:
                0.5 unless given).
            dedupe: ``True``: if the owner holds a live, valid memory under another key
                with the same text (case and spacing aside), reinforce it instead of adding
                one: importance the larger, metadata merged (this write's keys winning), a
                read counted, and a ``reinforce`` version whose reason keeps this write's
                key and text; the returned entry is that memory, ``deduplicated=True``. A
                number in (0, 1] also takes a cosine at least that high — never between
                texts whose identifiers or numbers differ (``A-77812`` and ``A-77813``).
                ``False``: never. None: ``config.dedupe_threshold`` (None: never).
            actor: who makes the change, recorded with the version it makes (see
                :meth:`history`).
            reason: why, recorded likewise.

        Returns:
            The stored entry. ``created_at`` is kept from an earlier live version of the key;
            the text is re-embedded only if it changed. Storing over a fact whose validity
            has closed starts a new fact (valid from now).
        """
        write = self._ready.prepare(
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
            passages=passages,
            importance=importance,
        )
        write.change = self._ready.change(None, actor, reason)
        return await writing.store(self._ready, self._store_calls, write, value, dedupe)

    @instrumented("store_many")
    async def store_many(
        self,
        items: Iterable[MemoryItem | Mapping[str, Any] | tuple[str, Any]],
        *,
        type: MemoryType | str = MemoryType.LONG_TERM,
        scope: MemoryScope | str = MemoryScope.GLOBAL,
        scope_id: str | None = None,
        indices: Iterable[MemoryIndex | str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: TTL = None,
        progress: ProgressCallback | None = None,
        dedupe: bool | float | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> StoredCount:
        """Store many memories in one transaction: all of them, or (on any error) none.

        Everything is validated and embedded (in batches of ``config.embedding_batch_size``)
        before the database is touched; rows then go in through COPY and one upsert. A key
        given twice for one owner keeps its last value. ``progress(done, total)`` follows the
        embedding. ``actor`` and ``reason`` are recorded with every version the call makes.
        ``dedupe`` is :meth:`store`'s, per item: an item repeating a memory its owner holds,
        or an earlier item of the batch, reinforces that memory instead of adding one.

        Returns:
            How many distinct memories (owner and key) were written, an ``int`` whose
            ``deduplicated`` says how many more items were folded into other memories.
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
            "passages": None,
        }
        change = self._ready.change(None, actor, reason)
        return await writing.store_items(self._ready, items, defaults, change, dedupe, progress)

    @instrumented("store_conversation")
    async def store_conversation(
        self,
        session_id: str,
        turns: Sequence[Turn | Mapping[str, Any]],
        *,
        scope: MemoryScope | str = MemoryScope.USER,
        scope_id: str | None = None,
        type: MemoryType | str = MemoryType.LONG_TERM,
        metadata: Mapping[str, Any] | None = None,
        ttl: TTL = None,
        actor: str | None = None,
        reason: str | None = None,
        managed_by: str = CONVERSATION_RECORDS,
    ) -> StoredCount:
        """Store the turns of one session of a conversation, each a memory of the owner
        found by what it is about.

        Each :class:`Turn` becomes a memory keyed by its id, whose value is the turn (speaker,
        text, ``at``, session) unless the turn gives its own. It is indexed with its context:
        the session's date, the turns just before it (a reply is found by the question it
        answers) and the relative dates it mentions resolved against its date ("yesterday"
        becomes the day), and its vector leans on the turn and less on that context (see
        :mod:`pepperpy_pg_memory.conversations`). ``entry.text`` is that indexed text.

        Turns go after the session's turns already stored, so a chat can be stored as it
        goes; storing a turn id again replaces that turn in its place. A turn without
        ``at`` takes the moment of the turn before it (or now). An id given twice raises
        :class:`MemoryValidationError` with nothing written; the turns are written in one
        transaction, all or none. ``metadata`` goes on every turn (a turn's own over it);
        ``conversation.session_id``, ``conversation.at`` and ``conversation.position`` are
        kept there for filters.

        Turns are a transcript's records: never folded into one another as duplicates (a
        repeated "yes" stays), left alone by consolidation and, like the chat adapters'
        messages, not counted by ``max_memories_per_owner``. ``managed_by`` is for the
        adapters that write through this method.

        Returns:
            How many turns were written.
        """
        scope_id = conversing.session_owner(scope, scope_id, session_id)
        items = await conversing.turn_items(
            self._ready,
            session_id,
            turns,
            scope=scope,
            scope_id=scope_id,
            metadata=metadata,
            managed_by=managed_by,
        )
        return await self.store_many(
            items,
            type=type,
            scope=scope,
            scope_id=scope_id,
            ttl=ttl,
            dedupe=False,
            actor=actor,
            reason=reason,
        )

    # --- reading ---------------------------------------------------------------------------
    @instrumented("retrieve")
    async def retrieve(
        self,
        key: K,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        include_embedding: bool = False,
        as_of: datetime | None = None,
        include_invalid: bool = False,
    ) -> MemoryEntry[V]:
        """The live, valid memory stored under ``key`` by the owner ``scope``/``scope_id``.

        Without a scope, the key is looked up across the owners this store may see: one match
        is that memory; several raise :class:`AmbiguousKeyError`. With ``as_of`` (a
        timezone-aware moment), the memory as it was stored and valid then, from its
        history; ``include_invalid`` also returns a fact whose validity has closed.

        Raises:
            MemoryNotFoundError: no such key, it has expired, its validity has closed, or it
                belongs to another ``(scope, scope_id)`` than the one given.
            AmbiguousKeyError: no scope was given and several owners hold the key.
        """
        return await reads.retrieve(
            self._ready, key, scope, scope_id, include_embedding, as_of, include_invalid
        )

    async def retrieve_many(
        self, keys: Iterable[K], *, scope: Scope = None, scope_id: str | None = None
    ) -> dict[str, MemoryEntry[V]]:
        """The owner's live memories stored under ``keys``, by key; missing keys are left out.

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold one of the keys.
        """
        restriction = self._ready.restriction(scope, scope_id)
        return await reads.retrieve_many(self._ready, self._ready.keys(keys), restriction)

    async def retrieve_by_owner(
        self, names: Iterable[tuple[MemoryScope | str, str | None, K]]
    ) -> dict[Identity, MemoryEntry[V]]:
        """Live memories of several owners in one round trip: ``names`` are ``(scope,
        scope_id, key)`` triples (``scope_id`` as in :meth:`store`); the result maps each
        found memory's :class:`~pepperpy_pg_memory.types.Identity` to it (an identity's
        ``scope_id`` is ``''`` for GLOBAL); missing ones are left out."""
        return await reads.retrieve_by_owner(self._ready, names)

    async def values_by_owner(
        self,
        names: Iterable[tuple[MemoryScope | str, str | None, K]],
        *,
        touch: timedelta | float | int | None = None,
        touch_metadata: Mapping[str, Any] | None = None,
    ) -> dict[Identity, StoredValue]:
        """:meth:`retrieve_by_owner` as :class:`~pepperpy_pg_memory.models.StoredValue`
        tuples (value, metadata, moments), for adapters answering bursts of reads. With
        ``touch`` (a TTL), those read whose metadata matches the filter ``touch_metadata``
        get it anew from now, as :meth:`touch_by_owner` gives it, in the read's statement
        (on the primary; on a Citus cluster, a touch then the read)."""
        return await reads.values_by_owner(self._ready, names, touch, touch_metadata)

    async def touch(
        self,
        keys: Iterable[K],
        ttl: timedelta | float | int,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
    ) -> int:
        """Give the owner's live memories under ``keys`` a new time-to-live from now (e.g. to
        keep memories that are still being read); returns how many were extended. A memory
        whose expiry is already within ``PostgresConfig.ttl_refresh_slack`` (1%) of the TTL
        of the new one is left as it is and not counted.

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold one of the keys
                (nothing is extended).
        """
        return await reads.touch(self._ready, keys, ttl, scope, scope_id)

    async def touch_by_owner(
        self,
        names: Iterable[tuple[MemoryScope | str, str | None, K]],
        ttl: timedelta | float | int,
    ) -> int:
        """:meth:`touch` of memories named with their owners, ``(scope, scope_id, key)``,
        any number of owners in one statement (one per owner on a Citus cluster)."""
        return await reads.touch_by_owner(self._ready, names, ttl)

    async def exists(self, key: K, *, scope: Scope = None, scope_id: str | None = None) -> bool:
        """Whether the owner holds a live memory under ``key``.

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold the key.
        """
        checked = self._ready.key(key)
        return await reads.exists(self._ready, checked, self._ready.restriction(scope, scope_id))

    async def count(
        self,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        types: Types = None,
        filter: Mapping[str, Any] | None = None,
        value_filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
    ) -> int:
        """How many live memories match."""
        restriction = self._ready.restriction(
            scope, scope_id, types, filter, value_filter=value_filter, key_prefix=key_prefix
        )
        return await reads.count(self._ready, restriction)

    async def distinct_metadata(
        self,
        key: str,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        types: Types = None,
        filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
        limit: int = 1_000,
    ) -> builtins.list[tuple[Any, int]]:
        """The distinct values of metadata ``key`` (dots for nested keys) among live memories,
        each with how many memories have it, in value order."""
        if not 1 <= limit <= MAX_ROWS_PER_READ:
            raise MemoryValidationError(f"limit must be in [1, {MAX_ROWS_PER_READ}]")
        restriction = self._ready.restriction(scope, scope_id, types, filter, key_prefix=key_prefix)
        return await reads.distinct_metadata(self._ready, key, restriction, limit)

    async def owners(
        self,
        scope: MemoryScope | str | None = None,
        *,
        types: Types = None,
        filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
        limit: int = 1_000,
        after: tuple[MemoryScope | str, str] | None = None,
    ) -> builtins.list[MemoryOwner]:
        """The owners holding live memories that match, each with how many, in (scope,
        scope_id) order: at most ``limit``, after the owner ``after`` (pass the last one
        listed to get the next page). Counted in the database, without reading memories.

        ``scope`` lists every owner of that scope (there is no ``scope_id`` here: elsewhere a
        scope without one names the scope's default owner).
        """
        if not 1 <= limit <= MAX_ROWS_PER_READ:
            raise MemoryValidationError(f"limit must be in [1, {MAX_ROWS_PER_READ}]")
        restriction = self._ready.restriction(None, None, types, filter, key_prefix=key_prefix)
        return await reads.owners(self._ready, scope, restriction, limit, after)

    async def distinct_metadata_arrays(
        self,
        key: str,
        *,
        patterns: Iterable[ArrayPattern] = (),
        depth: int | None = None,
        scope: Scope = None,
        scope_id: str | None = None,
        filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[builtins.list[str]]:
        """The distinct arrays of strings stored at metadata ``key`` among live memories that
        match every pattern (e.g. ``ArrayPattern(("users", None))``: first element "users",
        any second), cut to their first ``depth`` elements, in element-wise order, paged in
        the database (for listings such as LangGraph's namespaces)."""
        if not 1 <= limit <= MAX_ROWS_PER_READ or not 0 <= offset:
            raise MemoryValidationError(
                f"limit must be in [1, {MAX_ROWS_PER_READ}] and offset >= 0"
            )
        if depth is not None and depth < 1:
            raise MemoryValidationError("depth must be at least 1")
        restriction = self._ready.restriction(scope, scope_id, None, filter, key_prefix=key_prefix)
        return await reads.distinct_arrays(
            self._ready, key, restriction, list(patterns), depth, limit, offset
        )

    async def list(
        self,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        types: Types = None,
        filter: Mapping[str, Any] | None = None,
        value_filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
        keys: Iterable[str] | None = None,
        limit: int = 100,
        offset: int = 0,
        order_by: ListOrder = "created_at",
        descending: bool = True,
        after: MemoryEntry[Any] | None = None,
    ) -> builtins.list[MemoryEntry[V]]:
        """A page of live memories, newest first by default; with ``keys``, only those.

        For the next page, pass the last entry of this one as ``after`` (a keyset: every page
        costs the same, and writes meanwhile do not shift the pages); ``offset`` skips rows.
        """
        if not 1 <= limit <= MAX_LIST_PAGE or not 0 <= offset:
            raise MemoryValidationError(f"limit must be in [1, {MAX_LIST_PAGE}] and offset >= 0")
        if order_by not in ("created_at", "updated_at", "key"):
            raise MemoryValidationError(f"cannot order by {order_by!r}")
        restriction = self._ready.restriction(
            scope,
            scope_id,
            types,
            filter,
            value_filter=value_filter,
            key_prefix=key_prefix,
            keys=None if keys is None else frozenset(self._ready.keys(keys)),
        )
        return await reads.list_page(
            self._ready,
            restriction,
            limit=limit,
            offset=offset,
            order_by=order_by,
            descending=descending,
            after=after,
        )

    async def scan(
        self,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        types: Types = None,
        filter: Mapping[str, Any] | None = None,
        keys: Iterable[str] | None = None,
        page_size: int = 1_000,
        include_embedding: bool = False,
        include_invalid: bool = False,
    ) -> AsyncIterator[MemoryEntry[V]]:
        """Every live, valid memory that matches (with ``include_invalid``, the facts whose
        validity has closed too; with ``keys``, only those), in owner-then-key order, read a
        page at a time.

        Pages follow the last memory read (a keyset), so each costs the same however far the
        scan has gone, and memories written or deleted meanwhile never shift the pages: for
        exports and migrations of any size.
        """
        if not 1 <= page_size <= 10_000:
            raise MemoryValidationError("page_size must be in [1, 10000]")
        restriction = self._ready.restriction(
            scope,
            scope_id,
            types,
            filter,
            include_invalid=include_invalid,
            keys=None if keys is None else frozenset(self._ready.keys(keys)),
        )
        async for entry in reads.scan(self._ready, restriction, page_size, include_embedding):
            yield entry

    # --- backups ---------------------------------------------------------------------------
    async def export_jsonl(
        self,
        out: TextIO | str | os.PathLike[str],
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        with_embeddings: bool = False,
        with_history: bool = False,
    ) -> int:
        """Write the live memories (of one owner, if given), closed facts included, to ``out``
        in the export format (:mod:`pepperpy_pg_memory.backup`), paged by keyset; returns how
        many.

        ``with_embeddings`` includes each vector, so that an import into a table of the same
        dimension need not embed anything. ``with_history`` adds every recorded version
        (deleted memories' too), which an import into a table without those memories
        restores as they were.
        """
        return await transfer.export_jsonl(
            self._ready,
            out,
            scope=scope,
            scope_id=scope_id,
            with_embeddings=with_embeddings,
            with_history=with_history,
        )

    async def import_jsonl(
        self,
        source: TextIO | str | os.PathLike[str],
        *,
        batch_size: int = 500,
        progress: ProgressCallback | None = None,
    ) -> ImportReport:
        """Restore memories from an export (or a release 0.1 export), streaming the file.

        Every field comes back as exported: owner, type, metadata, indices, text,
        ``created_at``, ``updated_at`` and the expiry (or none). Vectors in the file are used
        when their dimension is the table's; the rest are embedded. Importing a file twice
        changes nothing. The whole file is checked first: a line that is not a memory, a
        memory that may not be stored (bad fields, another tenant's), or a history line for a
        memory this table holds with another history means that nothing of the file is
        written, and the returned :class:`~pepperpy_pg_memory.backup.ImportReport` names
        every such line. ``progress(memories_written, memories)`` follows the writing.

        Raises:
            MemoryQuotaError: with ``max_memories_per_owner`` set, an owner would hold more
                memories after the file than the limit (nothing is written).
        """
        return await transfer.import_jsonl(
            self._ready, source, batch_size=batch_size, progress=progress
        )

    # --- deleting --------------------------------------------------------------------------
    async def delete(
        self,
        key: K,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Delete the owner's memory stored under ``key``; True if a live one was deleted.

        Without a scope, the key's one live holder is deleted (see :meth:`retrieve`). The
        history keeps what it was (a ``delete`` version, with ``actor`` and ``reason``):
        :meth:`restore` brings it back.

        Raises:
            AmbiguousKeyError: no scope was given and several owners hold the key (nothing
                is deleted).
        """
        checked = self._ready.key(key)
        change = self._ready.change(None, actor, reason)
        return await deleting.delete(self._ready, checked, scope, scope_id, change)

    async def delete_many(
        self,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        types: Types = None,
        filter: Mapping[str, Any] | None = None,
        keys: Iterable[str] | None = None,
        value_filter: Mapping[str, Any] | None = None,
        key_prefix: str | tuple[str, ...] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Delete every memory that matches all the criteria given; returns how many (each
        leaves a ``delete`` version in the history, with ``actor`` and ``reason``).

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
        change = self._ready.change(None, actor, reason)
        criteria = self._ready.restriction(
            scope, scope_id, types, filter, value_filter=value_filter, key_prefix=key_prefix
        )
        key_set = None if keys is None else frozenset(self._ready.keys(keys))
        return await deleting.delete_many(
            self._ready, criteria, key_set, owner_given=scope is not None, change=change
        )

    async def clear(self) -> int:
        """Delete every memory of this store's tenant; returns how many."""
        return await deleting.clear(self._ready)

    # --- memory over time ---------------------------------------------------------------------
    async def history(
        self,
        key: K,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        limit: int | None = None,
        include_embedding: bool = False,
    ) -> builtins.list[MemoryVersion[V]]:
        """Every recorded version of the owner's memory under ``key``, newest first (also
        of a deleted one; empty if the owner never stored it). Without a scope, the key
        names its one holder, now or in the history.

        Raises:
            MemoryNotFoundError: no scope was given and nobody holds or held the key.
            AmbiguousKeyError: no scope was given and several owners hold or held it.
        """
        checked = self._ready.key(key)
        if limit is not None and (isinstance(limit, bool) or not 1 <= limit <= MAX_ROWS_PER_READ):
            raise MemoryValidationError(f"limit must be None or in [1, {MAX_ROWS_PER_READ}]")
        identity = await versions.named(self._ready, checked, scope, scope_id)
        return await versions.history(self._ready, identity, limit, include_embedding)

    async def deleted(
        self, *, scope: Scope = None, scope_id: str | None = None, limit: int = 50
    ) -> builtins.list[MemoryVersion[V]]:
        """The memories deleted (or whose expiry was reclaimed, or that the quota evicted)
        and not stored again, latest first, within the owner if one is given: for each, its
        last version (``operation`` says which; its value, text and metadata are the memory
        as it was). ``restore(key, version.version - 1, ...)`` brings one back."""
        if isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise MemoryValidationError("limit must be in [1, 10000]")
        owner = self._ready.restriction(scope, scope_id).owner
        return await versions.gone(self._ready, owner, limit)

    async def restore(
        self,
        key: K,
        version: int,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> MemoryEntry[V]:
        """Make ``version`` of the memory under ``key`` current again, as a new version (a
        deleted memory comes back). Its value, text, type, metadata, validity and expiry
        are the version's (an expiry that has passed gives the type's time-to-live from now);
        the text is re-embedded only if it differs from the current one. Passages are not
        versioned: the restored memory has none.

        Raises:
            MemoryNotFoundError: the memory has no such version.
        """
        checked = self._ready.key(key)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise MemoryValidationError("version must be a positive integer")
        change = self._ready.change("restore", actor, reason)
        identity = await versions.named(self._ready, checked, scope, scope_id)
        return await versions.restore(self._ready, identity, version, change)

    async def supersede(
        self,
        key: K,
        value: V,
        *,
        new_key: K | None = None,
        scope: Scope = None,
        scope_id: str | None = None,
        reason: str | None = None,
        actor: str | None = None,
        **store_kwargs: Any,
    ) -> MemoryEntry[V]:
        """Replace a fact that stopped being true by a new one, keeping both.

        The live, valid memory under ``key`` stops being valid now, and ``value`` is stored
        valid from now: as a new version of ``key``, or under ``new_key`` (same owner), in
        which case the old memory stays, closed, with ``superseded_by=new_key`` (searches see
        it with ``MemoryQuery(include_invalid=True)``, and ``as_of`` an earlier moment). The
        new memory's ``supersedes`` is ``key``. ``store_kwargs`` are :meth:`store`'s (the
        type defaults to the old memory's). One transaction.

        Raises:
            MemoryNotFoundError: no live, valid memory under ``key`` for that owner.
        """
        checked = self._ready.key(key)
        return await versions.supersede(
            self._ready, checked, value, new_key, scope, scope_id, actor, reason, store_kwargs
        )

    async def invalidate(
        self,
        key: K,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        at: datetime | None = None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> MemoryEntry[V]:
        """Say that the fact under ``key`` stopped being true at ``at`` (default: now), with
        no successor. The memory stays (reads see it with ``include_invalid=True``, or
        ``as_of`` an earlier moment); storing the key again starts a new fact.

        Raises:
            MemoryNotFoundError: no live, valid memory under ``key`` for that owner.
            MemoryValidationError: ``at`` is before the fact became valid.
        """
        checked = self._ready.key(key)
        change = self._ready.change("invalidate", actor, reason)
        return await versions.invalidate(self._ready, checked, scope, scope_id, at, change)

    # --- searching -------------------------------------------------------------------------
    def search(self, query: MemoryQuery) -> MemorySearchResults[V]:
        """Memories matching ``query``, best first (see :class:`MemoryQuery` for scores).

        Use ``async for result in storage.search(query)`` or ``await storage.search(query)``.
        """
        if not isinstance(query, MemoryQuery):
            raise MemoryValidationError("search takes a MemoryQuery")
        return MemorySearchResults(lambda: search.search(self._ready, query))

    async def query_vector(self, text: str) -> Vector:
        """The vector a search for ``text`` uses: the embedder's query embedding, checked
        against the table's dimension and cached (adapters that rank by vectors themselves,
        e.g. for MMR, take it from here)."""
        return await self._vectors.query(text)

    def similar(
        self,
        key: K,
        limit: int = 5,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        types: Types = None,
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
        checked = self._ready.key(key)
        if not 1 <= limit <= 1_000:
            raise MemoryValidationError("limit must be in [1, 1000]")
        if min_score is not None and not -1.0 <= min_score <= 1.0:
            raise MemoryValidationError("min_score must be in [-1, 1] (cosine similarity)")
        restriction = self._ready.restriction(scope, scope_id, types, filter)
        return MemorySearchResults(
            lambda: search.similar(
                self._ready, checked, scope, scope_id, restriction, limit, min_score
            )
        )

    # --- maintenance -------------------------------------------------------------------------
    @instrumented("consolidate")
    async def consolidate(
        self,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        promote_after: int = 3,
        merge_threshold: float = 0.92,
        summarize: Summarizer | None = None,
        dry_run: bool = False,
        include_managed: bool = False,
        actor: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ConsolidationReport:
        """Tidy each owner's memories (the given owner's, or every owner's), keeping every
        change in the history. Per owner, in one transaction:

        1. short-term, working and medium-term memories read at least ``promote_after``
           times become long-term, with no expiry (a ``promote`` version);
        2. near-duplicates — the same text, or a cosine of at least ``merge_threshold``
           between texts with the same identifiers and numbers — merge into the most
           important, most recently read one: the others stop being valid, superseded by
           it with reason "merged" (``history`` shows them, ``restore`` brings one back);
        3. with ``summarize`` (``async (entries) -> str``, or an object with an async
           ``ainvoke``, such as a LangChain chat model), each session's short-term
           memories that no summary covers yet become one episodic memory in the session,
           whose ``metadata["sources"]`` lists their keys (they expire as before).

        Adapters' records (see ``MANAGED_FIELD``) are left alone unless
        ``include_managed``. Running it again changes nothing; ``dry_run`` reports what it
        would do and changes nothing (without calling ``summarize``).
        ``progress(done, owners)`` follows the owners.
        """
        await self.flush_access_counts()  # promotion counts every read so far
        return await upkeep.consolidate(
            self._ready,
            self._ready.restriction(scope, scope_id),
            promote_after=promote_after,
            merge_threshold=merge_threshold,
            summarize=summarize,
            dry_run=dry_run,
            include_managed=include_managed,
            actor=actor,
            progress=progress,
        )

    async def cleanup_expired(
        self,
        *,
        scope: Scope = None,
        scope_id: str | None = None,
        batch_size: int | None = None,
    ) -> int:
        """Delete expired memories in bounded batches; returns how many were deleted.

        Expired memories are already invisible to every read; this reclaims their space
        (each leaves an ``expire`` version in the history). Then, when
        ``history_max_versions`` or ``history_max_age`` is set, the history of this store's
        tenant is trimmed to them.
        """
        batch = batch_size or self.config.maintenance_batch_size
        restriction = self._ready.restriction(
            scope, scope_id, include_expired=True, include_invalid=True
        )
        return await upkeep.cleanup_expired(self._ready, restriction, batch)

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

        SEMANTIC re-embeds every live memory with the current embedder, in batches walked in
        identity order (keyset pagination). An interrupted run leaves its position in the
        registry and, with ``resume=True``, the next call continues from there. If the
        embedder's dimension differs from the table's, the column is converted first (this is
        how a store moves to a new model). CONTEXTUAL rebuilds the full-text and trigram
        indexes, switching the text search configuration to ``config.text_search_config`` if
        it changed.
        """
        return await upkeep.reindex(
            self._ready, index, batch_size, resume, progress, self._use_layout
        )

    async def index_owner(self, scope: MemoryScope | str, scope_id: str | None = None) -> bool:
        """Give one owner's memories a vector index of their own, built without blocking
        writes (idempotent; True once it is there and valid): its semantic and hybrid
        searches then walk it instead of the table's, finding a large owner's nearest
        memories as a table of its own would (see docs/scaling.md). Needs the table's owner
        role; costs what an HNSW index of that owner's memories costs on disk and in writes."""
        return await upkeep.index_owner(self._ready, scope, scope_id)

    async def drop_owner_index(self, scope: MemoryScope | str, scope_id: str | None = None) -> bool:
        """Drop the index :meth:`index_owner` built for that owner; whether there was one."""
        return await upkeep.index_owner(self._ready, scope, scope_id, drop=True)

    async def stats(self) -> dict[str, Any]:
        """Figures for monitoring (the design document's list).

        ``memories`` and ``expired_not_cleaned``; live memories ``by_type`` and ``by_owner``
        (``user:ana``, ``global``; the 200 largest owners); ``table_bytes``, ``total_bytes`` and
        ``index_bytes`` per index; ``pool`` (size, in use, idle, waiting, max); ``operations``
        (count, errors, mean and bucketed p50/p95 latency, histogram) per operation;
        ``errors`` by class; ``embedding_cache`` (entries, hits, misses, hit rate);
        ``dimension`` and ``embedder`` (the model the table's vectors come from, as the
        registry records it); ``passages`` (the tenant's), ``queued_stores`` (concurrent
        ``store()`` calls waiting for their batch) and ``backfill_pending`` (whether an
        upgrade's online backfill may still be under way, see :meth:`complete_backfills`).
        With read replicas, ``replicas`` lists each one's ``name`` (no password),
        ``healthy``, ``lag_seconds``, ``reads``, ``errors``, ``last_error``, ``in_flight``,
        ``waits`` (reads that waited for it to replay this store's writes) and ``operations``
        (reads by operation); ``primary_reads`` counts the routed reads the primary served.
        Without replicas, ``replicas`` is empty and ``primary_reads`` None. The table
        figures come from whichever server served the read.
        """
        return await upkeep.stats(
            self._ready, self._store_calls.queued, self._ready.backfilling, self._attached.router
        )

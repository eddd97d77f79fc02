"""``PepperpyStore``: LangGraph's long-term memory ``BaseStore`` over pepperpy-pg-memory.

How LangGraph's namespaces map onto memories:

* an item ``(namespace, key)`` is the memory with key ``lg:<label1>/<label2>/.../#<key>``,
  so a namespace prefix is a key prefix. Only ``%``, ``/`` and ``#`` are escaped (as ``%25``,
  ``%2F``, ``%23``): a key in any script costs its UTF-8 bytes, not three times as many;
* its scope comes from the namespace's first label: ``users``/``user`` → USER,
  ``sessions``/``session``/``threads``/``thread`` → SESSION, ``agents``/``agent``/
  ``assistants``/``assistant`` → AGENT, each with the second label as ``scope_id``;
  anything else is GLOBAL. Items of two users never share a memory, whatever their keys;
* limits, in UTF-8 bytes: the owner label (the second label of a users/sessions/agents
  namespace) at most 256, like every ``scope_id``; the namespace's labels and the key together
  at most 2,000 (up to 17 escaped characters besides: the encoded key is at most 2,048 bytes);
* its type is LONG_TERM; ``ttl`` (minutes, as in LangGraph) becomes the memory's expiry;
* the value is stored as is. The fields named by the put's ``index`` (else the store's
  ``index={"fields": [...]}``; default ``["$"]``, the whole value) are indexed, with
  LangGraph's path syntax (``a.b``, ``a[0]``, ``a[*].b``, ``{a,b}``): each field's text is
  embedded apart, as a passage of the memory, and a semantic search scores the item by its
  best field, as LangGraph's stores do; the fields joined are the memory's text, searched
  by words too. ``index=False`` stores the item unindexed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import re
import threading
import typing
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, unquote

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)
from langgraph.store.base.embed import ensure_embeddings, get_text_at_path

from pepperpy_pg_memory import (
    MANAGED_FIELD,
    ArrayPattern,
    MemoryConfigurationError,
    MemoryEntry,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.coalesce import BatchFunction, Coalescer, together_or_alone
from pepperpy_pg_memory.items import MAX_PASSAGES
from pepperpy_pg_memory.runner import BackgroundStorage, running_loop
from pepperpy_pg_memory.schema import DISTANCES, MAX_KEY_BYTES
from pepperpy_pg_memory.types import Identity
from pepperpy_pg_memory.values import INVISIBLE, UNSEEN, default_text_of

__all__ = ["PepperpyStore", "namespace_scope", "texts_for"]

logger = logging.getLogger(__name__)

CALLS_PER_BATCH = 16_384
"""The most concurrent batch()/abatch() calls run together. An agent host's burst is mostly
calls of one op on a few items, which collapse (puts of one item into the last, equal reads
into one): one batch of the whole burst does the least work, as LangGraph's stores do. What
reaches the database is bounded apart: :data:`ITEMS_PER_WRITE`, :data:`SEARCHES_AT_ONCE`."""
ITEMS_PER_WRITE = 256
"""Items written by one store_many of a batch (distinct items: a burst of new ones)."""
WRITES_AT_ONCE = 4
"""Chunks of :data:`ITEMS_PER_WRITE` items of one batch written at once."""
SEARCHES_AT_ONCE = 8
"""Distinct searches of one batch in flight at once (each holds a pooled connection)."""
READ_PARTS = 4
"""The most parts a batch's gets are read in, at once (see :func:`_owner_parts`)."""
GETS_PER_PART = 512
"""The fewest gets worth a part of their own: a round trip more costs less than they take."""
SWEEP_WAIT_SECONDS = 60.0
"""How long ``close()`` waits for a TTL sweep under way to finish."""
REFRESHING_FILLFACTOR = 50
"""The ``PostgresConfig.fillfactor`` a store opened with ``refresh_on_read`` on a Citus
cluster gives its table when the configuration names none (see :meth:`PepperpyStore.create`)."""
CLOCK_MARGIN = timedelta(seconds=5)
"""How far the server's clock may run ahead of this process's: a read item is left out of a
refresh only when the server, too, would leave it."""
PREFIX = "lg:"
NAMESPACE_FIELD = "lg_namespace"
TTL_FIELD = "lg_ttl_minutes"
MANAGED_BY = "langgraph-store"
Call = Op | list[Op]
"""What one caller queued: the op of an ``aget``/``aput``/``adelete``/``asearch``, or the ops
of a ``batch``/``abatch`` (a list), whose outcome is then a list of results."""
Outcome = Result | list[Result]
_SCOPES = {
    "user": MemoryScope.USER,
    "users": MemoryScope.USER,
    "session": MemoryScope.SESSION,
    "sessions": MemoryScope.SESSION,
    "thread": MemoryScope.SESSION,
    "threads": MemoryScope.SESSION,
    "agent": MemoryScope.AGENT,
    "agents": MemoryScope.AGENT,
    "assistant": MemoryScope.AGENT,
    "assistants": MemoryScope.AGENT,
}


class _NoTTL:
    """``aput`` given no ``ttl``: the store's default applies (None is "never expires")."""


_NO_TTL: Any = _NoTTL()


def _check_labels(namespace: tuple[str, ...]) -> None:
    """LangGraph's rules for a namespace's labels: strings, not empty, no ``.`` (its path
    separator) and no NUL."""
    for label in namespace:
        if not isinstance(label, str):
            raise InvalidNamespaceError(
                f"Invalid namespace label {label!r} in {namespace}: labels are strings, "
                f"not {type(label).__name__}"
            )
        if not label:
            raise InvalidNamespaceError(f"Empty namespace label in {namespace}")
        if "." in label or "\x00" in label:
            raise InvalidNamespaceError(
                f"Invalid namespace label {label!r} in {namespace}: labels contain no '.' "
                "and no NUL"
            )


def _checked(ops: Iterable[Op]) -> list[Op]:
    """``ops`` as a list, each op's namespace labels checked as BaseStore's own calls check
    them: ops given to batch()/abatch() bypass those calls, and a batch with one bad label
    must fail before any of its ops runs."""
    checked = list(ops)
    for op in checked:
        if isinstance(op, GetOp | PutOp):
            _check_labels(op.namespace)
        elif isinstance(op, SearchOp):
            _check_labels(op.namespace_prefix)
        elif isinstance(op, ListNamespacesOp):
            for condition in op.match_conditions or ():
                _check_labels(condition.path)
    return checked


def namespace_scope(namespace: tuple[str, ...]) -> tuple[MemoryScope, str | None]:
    """The (scope, scope_id) a namespace's memories get (see the module docstring)."""
    if len(namespace) >= 2 and namespace[0] in _SCOPES:
        return _SCOPES[namespace[0]], _owner_id(namespace[1])
    return MemoryScope.GLOBAL, None


def _reads_under(prefix: tuple[str, ...], *, legacy: bool = False) -> dict[str, Any]:
    """The owner restriction of every read under a namespace prefix: the owner (or the scope)
    the prefix maps to, and this adapter's records only. A key shaped like an item's, stored
    by another owner or through another door, is never read as one.

    ``legacy``: an upgrade's backfill has not yet marked the items earlier releases wrote
    (they carry only their namespace field): those of the owner count too, meanwhile."""
    mine: dict[str, Any] = {MANAGED_FIELD: MANAGED_BY}
    if legacy:
        unmarked = {NAMESPACE_FIELD: {"$exists": True}, MANAGED_FIELD: {"$exists": False}}
        mine = {"$or": [mine, unmarked]}
    where: dict[str, Any] = {"filter": mine}
    if len(prefix) >= 2 or (prefix and prefix[0] not in _SCOPES):
        # Every namespace under the prefix maps to this one owner. (Under ("users",) alone
        # are both the namespace ("users",), a global one, and every user's.)
        scope, scope_id = namespace_scope(prefix)
        where["scope"] = scope
        if scope_id is not None:
            where["scope_id"] = scope_id
    return where


def _namespace_of(entry: MemoryEntry[Any]) -> tuple[str, ...] | None:
    """The namespace of a record read back, or None (with a warning) when the record is not
    one this adapter wrote for that namespace's owner."""
    labels = entry.metadata.get(NAMESPACE_FIELD)
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        logger.warning("skipped memory %r: it has no LangGraph namespace", entry.key)
        return None
    namespace, key = tuple(labels), _item_key(entry.key)
    scope, scope_id = namespace_scope(namespace)
    if (entry.scope, entry.scope_id or None) != (scope, scope_id) or entry.key not in (
        memory_key(namespace, key),
        legacy_memory_key(namespace, key),
    ):
        logger.warning("skipped memory %r: its namespace is not its owner's", entry.key)
        return None
    return namespace


ANN_SETTINGS = {
    "vector_type": "vector_type",
    "m": "hnsw_m",
    "ef_construction": "hnsw_ef_construction",
}
"""LangGraph's ``index["ann_index_config"]`` entries and the PostgresConfig fields they set."""


def _ann_settings(index: IndexConfig | None) -> dict[str, Any]:
    """The PostgresConfig fields LangGraph's ``ann_index_config`` asks for. Its HNSW index
    is this store's too; another kind of index, or bit vectors, it cannot build."""
    ann: Any = typing.cast(dict[str, Any], index or {}).get("ann_index_config") or {}
    if not isinstance(ann, Mapping):
        raise MemoryConfigurationError("index['ann_index_config'] must be a dict", field="index")
    kind = ann.get("kind", "hnsw")
    if kind != "hnsw":
        raise MemoryConfigurationError(
            f"index['ann_index_config']['kind'] is {kind!r}: this store indexes vectors with "
            "HNSW (and reads a small owner's memories exactly); leave `kind` out or give "
            "'hnsw'",
            field="index",
        )
    if ann.get("vector_type", "vector") not in ("vector", "halfvec"):
        raise MemoryConfigurationError(
            f"index['ann_index_config']['vector_type'] is {ann['vector_type']!r}: this store "
            "keeps float vectors, 'vector' or 'halfvec'",
            field="index",
        )
    return {field: ann[name] for name, field in ANN_SETTINGS.items() if name in ann}


def _without_embed(index: IndexConfig | None) -> IndexConfig | None:
    if index is None:
        return None
    rest = dict(index)
    rest.pop("embed", None)
    return typing.cast(IndexConfig, rest)


def _check_index(index: IndexConfig | None, storage: PostgresStorage[Any, Any]) -> list[str]:
    """The default fields of ``index``, once it is checked against the store's table."""
    if index is None:
        return ["$"]
    if index.get("embed") is not None:
        # Only create() can choose the embedder: this store's table already has one.
        raise MemoryConfigurationError(
            "index['embed'] differs from the embedder of the storage given: one table holds "
            "the vectors of one model. Use PepperpyStore.create(index=...) with a table of "
            "its own, or leave `embed` out",
            field="index",
        )
    distance = typing.cast(dict[str, Any], index).get("distance_type", "cosine")
    if distance != storage.layout.distance:
        # The table's indexes compare by one distance: another would be silently ignored.
        raise MemoryConfigurationError(
            f"index['distance_type'] is {distance!r}, but this store's table compares vectors "
            f"by {storage.layout.distance!r} (its indexes' operator class): give that, or "
            "PepperpyStore.create(index=...) on a table of its own",
            field="index",
        )
    wanted_type = _ann_settings(index).get("vector_type")
    if wanted_type is not None and wanted_type != storage.layout.vector_type:
        raise MemoryConfigurationError(
            f"index['ann_index_config']['vector_type'] is {wanted_type!r}, but this store's "
            f"table stores {storage.layout.vector_type!r}: give that, or "
            "PepperpyStore.create(index=...) on a table of its own",
            field="index",
        )
    dims = index.get("dims")
    if dims is not None and dims != storage.layout.dimension:
        raise MemoryConfigurationError(
            f"index['dims'] is {dims} but the store's vectors have "
            f"{storage.layout.dimension} dimensions (the embedder's)",
            field="index",
        )
    fields: Any = index.get("fields") or ["$"]
    if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
        raise MemoryConfigurationError("index['fields'] must be a list of paths", field="index")
    return list(fields)


def _escape(text: str) -> str:
    # '%' first, so that the escapes themselves are not escaped again. Characters the core
    # refuses in a key (control, invisible and bidirectional ones), which LangGraph's stores
    # accept, are percent-encoded too: the item's key and labels come back exactly.
    escaped = text.replace("%", "%25").replace("/", "%2F").replace("#", "%23")
    return UNSEEN.sub(_percent_encoded, escaped)


def _percent_encoded(found: re.Match[str]) -> str:
    return quote(found.group(), safe="")


def _owner_id(label: str) -> str:
    """A namespace label as the owner's id: as it is, but for the invisible characters a
    new scope id may not hold, percent-encoded (and so '%' before them)."""
    if INVISIBLE.search(label) is None:
        return label
    return INVISIBLE.sub(_percent_encoded, label.replace("%", "%25"))


def _legacy_escape(text: str) -> str:
    # Releases up to 0.1 percent-encoded everything but ASCII letters, digits and "_.-~".
    return quote(text, safe="")


# Agents read and write a few namespaces over and over: their paths are computed once.
@functools.lru_cache(maxsize=4096)
def _namespace_path(namespace: tuple[str, ...], escape: Any = _escape) -> str:
    return PREFIX + "".join(escape(label) + "/" for label in namespace)


@functools.lru_cache(maxsize=4096)
def _plain_labels(namespace: tuple[str, ...]) -> bool:
    return all(_UNESCAPED.fullmatch(label) for label in namespace)


def memory_key(namespace: tuple[str, ...], key: str) -> str:
    return f"{_namespace_path(namespace)}#{_escape(key)}"


# A longer legacy key cannot be named by this release (its encoded keys are ASCII, one byte
# a character); 0.1 refused keys over 512 characters unless configured otherwise.
_LEGACY_MAX_KEY = MAX_KEY_BYTES
_UNESCAPED = re.compile(r"[A-Za-z0-9_.~-]*")


def legacy_memory_key(namespace: tuple[str, ...], key: str) -> str | None:
    """The key releases up to 0.1 gave the item, when it differs from :func:`memory_key` (a
    label or the key has characters other than ASCII letters, digits and ``_.-~``) and could
    have been stored. Such items are still found under it, and move to the current key when
    next written."""
    if _UNESCAPED.fullmatch(key) and _plain_labels(namespace):
        return None  # neither encoding changes these characters: the keys are the same
    legacy = f"{_namespace_path(namespace, _legacy_escape)}#{_legacy_escape(key)}"
    if legacy == memory_key(namespace, key) or len(legacy) > _LEGACY_MAX_KEY:
        return None
    return legacy


def _keys(namespace: tuple[str, ...], key: str) -> list[str]:
    """Every key the item may be stored under: the current one first."""
    legacy = legacy_memory_key(namespace, key)
    return [memory_key(namespace, key)] + ([legacy] if legacy is not None else [])


def _prefixes(namespace: tuple[str, ...]) -> str | tuple[str, ...]:
    """The key prefixes of a namespace's items: the current one, and the legacy one when
    they differ."""
    current, legacy = _namespace_path(namespace), _namespace_path(namespace, _legacy_escape)
    return current if current == legacy else (current, legacy)


def _item_key(memory: str) -> str:
    # Both encodings decode the same way: '%' never stands for itself in either.
    return unquote(memory.rsplit("#", 1)[1])


def texts_for(value: dict[str, Any], fields: list[str]) -> tuple[str, list[str]]:
    """The memory text and passages of an item indexed on ``fields``: ``$`` alone is the
    whole value as one text (no passages); otherwise each field's texts are passages (when
    there are several) and, joined, the text."""
    if fields == ["$"]:
        return default_text_of(value), []
    texts = [text for field in fields for text in get_text_at_path(value, field)]
    if len(texts) > MAX_PASSAGES:
        logger.warning(
            "an item has %d indexed texts; the first %d are embedded apart",
            len(texts),
            MAX_PASSAGES,
        )
    return "\n".join(texts), texts[:MAX_PASSAGES] if len(texts) > 1 else []


def _owner_parts(gets: list[GetOp]) -> list[list[int]]:
    """The positions of ``gets`` in at most :data:`READ_PARTS` parts of whole namespaces (so
    that a part names each of its items alone), none under :data:`GETS_PER_PART` gets but
    the last: a small batch is one part."""
    if len(gets) < 2 * GETS_PER_PART:
        return [list(range(len(gets)))]
    by_namespace: dict[tuple[str, ...], list[int]] = {}
    for index, op in enumerate(gets):
        by_namespace.setdefault(op.namespace, []).append(index)
    size = max(GETS_PER_PART, -(-len(gets) // READ_PARTS))
    parts: list[list[int]] = [[]]
    for positions in by_namespace.values():
        if len(parts[-1]) >= size:
            parts.append([])
        parts[-1].extend(positions)
    return parts


class _Refreshes(dict[float, dict[Identity, datetime | None]]):
    """The items reads found whose TTL starts again, by TTL in minutes (each item once, with
    its expiry as read): refreshed in one statement per TTL once the reads are done.

    An item whose expiry is already within ``slack`` of its TTL of the new one is left out
    (the refresh statement would leave it: ``PostgresConfig.ttl_refresh_slack``), so that
    reads of items refreshed a moment ago send no statement at all."""

    def __init__(self, slack: float) -> None:
        super().__init__()
        self._slack = slack

    def note(
        self, identity: Identity, metadata: Mapping[str, Any], expires_at: datetime | None
    ) -> None:
        minutes = metadata.get(TTL_FIELD)
        if minutes is not None:
            self.setdefault(float(minutes), {})[identity] = expires_at

    def due(self) -> list[tuple[timedelta, list[Identity]]]:
        """Each TTL with the items to refresh now: those the refresh statement would not
        leave, judged by this process's clock (:data:`CLOCK_MARGIN` later, so that an item
        is left out only when the server, too, would leave it)."""
        soon = datetime.now(timezone.utc) + CLOCK_MARGIN
        groups = []
        for minutes, expiries in self.items():
            ttl = timedelta(minutes=minutes)
            if self._slack > 0:
                fresh_after = soon + ttl * (1 - self._slack)
                items = [i for i, at in expiries.items() if at is None or at < fresh_after]
            else:
                items = list(expiries)
            if items:
                groups.append((ttl, items))
        return groups


POOL_SETTINGS = ("min_size", "max_size")
"""The keys of LangGraph's ``PoolConfig`` that ``from_conn_string`` takes (the pool's sizes)."""


class StoreOpening:
    """What :meth:`PepperpyStore.from_conn_string` returns: the store opened on entering a
    ``with`` or ``async with`` block and closed on leaving it, as LangGraph's stores are."""

    def __init__(self, open_store: Callable[[], PepperpyStore]) -> None:
        self._open = open_store
        self._store: PepperpyStore | None = None

    def __enter__(self) -> PepperpyStore:
        self._store = self._open()
        return self._store

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._store is not None:
            self._store.close()

    async def __aenter__(self) -> PepperpyStore:
        # Opening starts the store's own loop and migrates the table: not on the caller's.
        self._store = await asyncio.to_thread(self._open)
        return self._store

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._store is not None:
            await self._store.aclose()


class _Done:
    """An awaitable with nothing to wait for: what ``setup()`` returns, so that both
    ``store.setup()`` and ``await store.setup()`` (LangGraph's sync and async stores) work."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


class PepperpyStore(BaseStore):
    """LangGraph ``BaseStore`` on pepperpy-pg-memory: put/get/delete/search/list_namespaces,
    semantic search through the core's HNSW index, filters on values, TTLs in minutes.

    Examples:
        >>> store = PepperpyStore.create(PostgresConfig(data_dir="/tmp/memories"))
        >>> store.put(("users", "ana"), "coffee", {"text": "Ana drinks oat milk lattes"})
        >>> store.search(("users", "ana"), query="what does Ana drink?")[0].key
        'coffee'
    """

    supports_ttl = True

    def __init__(
        self,
        storage: PostgresStorage[Any, Any] | BackgroundStorage[Any, Any],
        *,
        ttl: TTLConfig | None = None,
        index: IndexConfig | None = None,
    ) -> None:
        self._handle = (
            storage if isinstance(storage, BackgroundStorage) else BackgroundStorage.share(storage)
        )
        self.ttl_config = ttl
        self.index_config = index
        self._fields = _check_index(index, self._handle.storage)
        self._calls = self._coalescer(self._run_calls)
        self._calls_from: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, Coalescer[Call, Outcome]
        ] = weakref.WeakKeyDictionary()
        # The last caller's loop and its coalescer: a burst comes from one loop, and a weak
        # dictionary lookup per call is a measurable part of a call's cost.
        self._last_caller: (
            tuple[weakref.ref[asyncio.AbstractEventLoop], Coalescer[Call, Outcome]] | None
        ) = None
        self._sweeper: concurrent.futures.Future[None] | None = None
        self._sweeper_stop: asyncio.Event | None = None
        self._sweeper_lock = threading.Lock()
        # The sweeper as each caller's loop awaits it (start_ttl_sweeper from async code):
        # the sweeper's concurrent future and its asyncio twin on that loop.
        self._sweeper_futures: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            tuple[concurrent.futures.Future[None], asyncio.Future[None]],
        ] = weakref.WeakKeyDictionary()

    @classmethod
    def create(
        cls,
        config: PostgresConfig | None = None,
        embedding: Any = None,
        ttl: TTLConfig | None = None,
        index: IndexConfig | None = None,
    ) -> PepperpyStore:
        """A store opened on ``config`` (embedded by default); ``embedding`` is a LangChain
        ``Embeddings`` or a pepperpy embedder, None for the default model.

        ``index`` takes LangGraph's ``IndexConfig``: ``fields`` are the default fields to
        embed; ``embed`` may name the embedder instead of ``embedding`` (a LangChain
        ``Embeddings``, a function, or a ``"provider:model"`` string); ``dims`` must be its
        dimension; ``distance_type`` ("cosine", "l2" or "inner_product") is how the table
        compares vectors, with LangGraph's scores (1 - cosine distance, minus the Euclidean
        distance, the inner product). A table holds the vectors of one model: to use another,
        open a store on another table.
        """
        embed = (index or {}).get("embed")
        if embed is not None:
            if embedding is not None and embedding is not embed:
                raise MemoryConfigurationError(
                    "give the embedder once: as `embedding` or as index['embed']",
                    field="index",
                )
            embedding = ensure_embeddings(embed)
        config = config if config is not None else PostgresConfig()
        distance = typing.cast(dict[str, Any], index or {}).get("distance_type")
        if distance is not None:
            if distance not in DISTANCES:
                raise MemoryConfigurationError(
                    f"index['distance_type'] is {distance!r}: this store compares float "
                    f"vectors by one of {', '.join(DISTANCES)}",
                    field="index",
                )
            # A new table is created comparing by it (an existing one must already).
            config = config.model_copy(update={"distance": distance})
        table_settings = _ann_settings(index)
        if table_settings:
            # A new table is created so (an existing one keeps its vector type: a different
            # one is refused when the store starts).
            config = PostgresConfig.model_validate({**config.model_dump(), **table_settings})
        refreshing = ttl and ttl.get("refresh_on_read", True)
        if refreshing and config.distribution is not None and config.fillfactor is None:
            # On a cluster a read rewrites its item's row to move its expiry (one server
            # keeps refreshes beside the rows): pages keep room for each row's next version,
            # so that a refresh rewrites no index (10,000 gets of items due for a refresh:
            # 0.6 s against 1.4 s at the core's 70%; about one row a page).
            config = config.model_copy(update={"fillfactor": REFRESHING_FILLFACTOR})
        handle = BackgroundStorage.create(config, embedding)
        try:
            store = cls(handle, ttl=ttl, index=_without_embed(index))
        except BaseException:
            handle.close()
            raise
        store.index_config = index  # as given, `embed` included (it chose the embedder)
        return store

    @classmethod
    def from_conn_string(
        cls,
        conn_string: str,
        *,
        pipeline: bool = False,
        pool_config: Mapping[str, Any] | None = None,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        embedding: Any = None,
        **config: Any,
    ) -> StoreOpening:
        """LangGraph's way to open its Postgres stores, for code written for them: ``with
        PepperpyStore.from_conn_string(url) as store:`` or ``async with …``. ``url`` is a
        ``postgresql://`` URI; ``pool_config`` takes the pool's ``min_size`` and
        ``max_size``; ``index`` and ``ttl`` are as in :meth:`create`; further keywords are
        :class:`PostgresConfig` fields (``table=…``). ``pipeline`` is accepted and changes
        nothing: concurrent calls are batched anyway."""
        pool = dict(pool_config or {})
        unknown = sorted(set(pool) - set(POOL_SETTINGS))
        if unknown:
            raise MemoryConfigurationError(
                f"pool_config takes {' and '.join(POOL_SETTINGS)}, not {', '.join(unknown)}",
                field="pool_config",
            )
        settings = PostgresConfig(dsn=conn_string, **{**pool, **config})
        return StoreOpening(lambda: cls.create(settings, embedding, ttl=ttl, index=index))

    def setup(self) -> _Done:
        """Nothing to do: the store's tables are created and migrated when it starts. Kept
        for code written for LangGraph's stores, which call ``setup()`` (or await it) once."""
        return _Done()

    @property
    def storage(self) -> PostgresStorage[Any, Any]:
        """The core store underneath (it runs on its own event loop: ``storage.loop``)."""
        return self._handle.storage

    def close(self) -> None:
        sweeper = self._tell_sweeper_to_stop()
        loop = self._handle.loop
        if sweeper is not None and loop.is_running() and running_loop() is not loop:
            # A sweep under way finishes before the store under it closes.
            concurrent.futures.wait([sweeper], timeout=SWEEP_WAIT_SECONDS)
        if loop.is_running():
            self._handle.call(lambda s: self._calls.drain())
        self._handle.close()

    async def aclose(self) -> None:
        await self._sweeper_stopped(self._tell_sweeper_to_stop(), None)
        calls = self._calls_from.get(asyncio.get_running_loop())
        if calls is not None:
            await calls.drain()
        await self._handle.acall(lambda s: self._calls.drain())
        await self._handle.aclose()

    # --- expired items (the TTL sweeper calls of LangGraph's stores) --------------------------
    # LangGraph's PostgresStore has them as plain methods (the sweeper a thread, its handle a
    # concurrent Future), AsyncPostgresStore as coroutines (the sweeper a task). One class
    # serves both here: called from async code (a running event loop) each returns an
    # awaitable, as AsyncPostgresStore's; otherwise it does its work and returns the result,
    # as PostgresStore's. The sweeper itself runs on the store's own loop either way.
    def sweep_ttl(self) -> Any:
        """Delete the expired memories of this store's table, every owner's (as
        ``PostgresStorage.cleanup_expired``: each leaves an ``expire`` version in the
        history); how many. Expired items are invisible to reads already: this frees their
        space."""
        if running_loop() is not None:
            return self._handle.acall(lambda s: s.cleanup_expired())
        return self._handle.call(lambda s: s.cleanup_expired())

    def start_ttl_sweeper(self, sweep_interval_minutes: int | float | None = None) -> Any:
        """Sweep expired items every ``sweep_interval_minutes`` (else the TTL config's
        ``sweep_interval_minutes``, else 5) until :meth:`stop_ttl_sweeper` or closing. Returns
        the sweeper's ``concurrent.futures.Future``, done once it stops; from async code, an
        awaitable of the same as an asyncio future (one per loop while it runs). Without a
        TTL config there is nothing to sweep: an already finished future."""
        sweeper = self._start_sweeper(sweep_interval_minutes)
        if running_loop() is None:
            return sweeper
        return self._sweeper_on_loop(sweeper)

    def stop_ttl_sweeper(self, timeout: float | None = None) -> Any:
        """Stop the sweeper; False if it was still sweeping after ``timeout`` seconds (from
        async code, an awaitable of that)."""
        sweeper = self._tell_sweeper_to_stop()
        if running_loop() is not None:
            return self._sweeper_stopped(sweeper, timeout)
        if sweeper is None:
            return True
        try:
            sweeper.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    def _start_sweeper(self, minutes_given: int | float | None) -> concurrent.futures.Future[None]:
        with self._sweeper_lock:
            if self._sweeper is not None and not self._sweeper.done():
                return self._sweeper
            if not self.ttl_config:
                nothing: concurrent.futures.Future[None] = concurrent.futures.Future()
                nothing.set_result(None)
                return nothing
            minutes = float(minutes_given or self.ttl_config.get("sweep_interval_minutes") or 5)
            stop = self._sweeper_stop = asyncio.Event()

            async def sweep_until_stopped() -> None:
                while True:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=minutes * 60)
                        return
                    except asyncio.TimeoutError:
                        pass
                    try:
                        swept = await self.storage.cleanup_expired()
                    except Exception:  # the next sweep tries again; a dead sweeper would not
                        logger.exception("the TTL sweep failed")
                    else:
                        if swept:
                            logger.info("TTL sweep: %d expired items deleted", swept)

            self._sweeper = asyncio.run_coroutine_threadsafe(
                sweep_until_stopped(), self._handle.loop
            )
            return self._sweeper

    async def _sweeper_on_loop(
        self, sweeper: concurrent.futures.Future[None]
    ) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        known = self._sweeper_futures.get(loop)
        if known is not None and known[0] is sweeper and not known[1].done():
            return known[1]
        waiting = asyncio.wrap_future(sweeper, loop=loop)
        self._sweeper_futures[loop] = (sweeper, waiting)
        return waiting

    def _tell_sweeper_to_stop(self) -> concurrent.futures.Future[None] | None:
        with self._sweeper_lock:
            sweeper, stop = self._sweeper, self._sweeper_stop
        if sweeper is None or stop is None or sweeper.done():
            return None
        if not self._handle.loop.is_closed():
            self._handle.loop.call_soon_threadsafe(stop.set)
        return sweeper

    async def _sweeper_stopped(
        self, sweeper: concurrent.futures.Future[None] | None, timeout: float | None
    ) -> bool:
        if sweeper is None:
            return True
        waiting = await self._sweeper_on_loop(sweeper)
        try:
            await asyncio.wait_for(asyncio.shield(waiting), timeout=timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # --- batching ---------------------------------------------------------------------------
    # Concurrent batch()/abatch() calls (an agent host serving many threads, or LangGraph's
    # own put/get, each a batch of one) are run together: their operations, in call order,
    # as one batch. Their puts become one store_many, their gets one retrieve_many per owner.
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        operations: Call = _checked(ops)
        outcome = self._handle.call(lambda s: self._calls.submit(operations))
        return typing.cast("list[Result]", outcome)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return typing.cast("list[Result]", await self._queue(_checked(ops)))

    # LangGraph's single-item calls, queued as they are: a burst of thousands allocates a
    # coroutine and a list less per call than through abatch, and so wakes the garbage
    # collector (whose full passes walk every object of the process) less often. Each checks
    # and fills in its op as BaseStore's does. (Casts name their types as strings: written
    # out, `Item | None` is a new object that every waiting call holds until it is answered.)
    async def aget(
        self, namespace: tuple[str, ...], key: str, *, refresh_ttl: bool | None = None
    ) -> Item | None:
        _check_labels(namespace)
        op = GetOp(namespace, str(key), self._refreshes(refresh_ttl))
        return typing.cast("Item | None", await self._queue(op))

    async def asearch(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        _check_labels(namespace_prefix)
        refresh = self._refreshes(refresh_ttl)
        op = SearchOp(namespace_prefix, filter, limit, offset, query, refresh)
        return typing.cast("list[SearchItem]", await self._queue(op))

    async def aput(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | None | Any = _NO_TTL,
    ) -> None:
        if not namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        _check_labels(namespace)
        if namespace[0] == "langgraph":
            raise InvalidNamespaceError(
                f'Root label for namespace cannot be "langgraph". Got: {namespace}'
            )
        if ttl is _NO_TTL or not isinstance(ttl, int | float | type(None)):
            ttl = (self.ttl_config or {}).get("default_ttl")
        await self._queue(PutOp(namespace, str(key), value, index=index, ttl=ttl))

    async def adelete(self, namespace: tuple[str, ...], key: str) -> None:
        _check_labels(namespace)
        await self._queue(PutOp(namespace, str(key), None))

    def _refreshes(self, refresh_ttl: bool | None) -> bool:
        if refresh_ttl is not None:
            return refresh_ttl
        return bool((self.ttl_config or {}).get("refresh_on_read", True))

    def _queue(self, call: Call) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        if loop is self._handle.loop:
            return self._calls.enqueue(call)
        # Gathered on the caller's loop too, so that a burst crosses to the store's thread in
        # a few hops instead of one per call.
        last = self._last_caller
        if last is not None and last[0]() is loop:
            return last[1].enqueue(call)
        calls = self._calls_from.get(loop)
        if calls is None:
            calls = self._calls_from[loop] = self._coalescer(self._hop)
        self._last_caller = (weakref.ref(loop), calls)
        return calls.enqueue(call)

    async def _hop(self, calls: list[Call]) -> list[Outcome | BaseException]:
        return await self._handle.acall(lambda s: self._run_calls(calls))

    def _coalescer(self, run: BatchFunction[Call, Outcome]) -> Coalescer[Call, Outcome]:
        config = self._handle.storage.config
        return Coalescer(
            "LangGraph store batch",
            run,
            lanes=max(1, config.max_size // 2),
            max_batch=CALLS_PER_BATCH,
            wait_timeout=config.pool_timeout,
        )

    async def _run_calls(self, calls: list[Call]) -> list[Outcome | BaseException]:
        storage = self.storage

        async def together(batch: list[Call]) -> list[Outcome]:
            # Calls made at once may take effect in any order; one op each (aput, aget,
            # asearch, adelete), they run as every write, in call order, then every read.
            # A call of several ops keeps its own order, so then all keep call order.
            if not any(isinstance(call, list) for call in batch):
                ops = typing.cast("list[Op]", batch)
                return typing.cast("list[Outcome]", await self._execute(storage, ops, True))
            flat: list[Op] = []
            for call in batch:
                if isinstance(call, list):
                    flat.extend(call)
                else:
                    flat.append(call)
            independent = all(not isinstance(call, list) or len(call) == 1 for call in batch)
            results = await self._execute(storage, flat, writes_first=independent)
            out: list[Outcome] = []
            start = 0
            for call in batch:
                if isinstance(call, list):
                    out.append(results[start : start + len(call)])
                    start += len(call)
                else:
                    out.append(results[start])
                    start += 1
            return out

        async def alone(call: Call) -> Outcome:
            if isinstance(call, list):
                return await self._execute(storage, call)
            return (await self._execute(storage, [call]))[0]

        return await together_or_alone("LangGraph store batch", calls, together, alone)

    async def _execute(
        self, storage: PostgresStorage[Any, Any], ops: list[Op], writes_first: bool = False
    ) -> list[Result]:
        if writes_first:
            # Every write (puts of one item collapse into the last), then each distinct read
            # once: after the same writes, equal reads have equal answers. One pass: a
            # burst's batch holds thousands of ops.
            last_puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
            reads: list[Op] = []
            first_read: dict[Op, int] = {}
            answered_by: list[int] = []  # per op: its read's place in `reads`, -1 for a put
            for op in ops:
                if isinstance(op, PutOp):
                    last_puts[(op.namespace, op.key)] = op
                    answered_by.append(-1)
                    continue
                index = len(reads)
                try:
                    index = first_read.setdefault(op, index)
                except TypeError:  # an op holding a filter dict is its own read
                    pass
                if index == len(reads):
                    reads.append(op)
                answered_by.append(index)
            answers = await self._execute(storage, [*last_puts.values(), *reads])
            read_answers = answers[len(last_puts) :]
            return [None if index < 0 else read_answers[index] for index in answered_by]
        results: list[Result] = [None] * len(ops)
        puts: dict[str, PutOp] = {}
        # (Positions apart from the ops: a burst's batch holds thousands, and every tuple is
        # an object more for the garbage collector to walk.)
        get_positions: list[int] = []
        gets: list[GetOp] = []
        searches: list[tuple[int, SearchOp]] = []

        # The items the searches found that start their TTL again: refreshed once, after
        # all the searches that ran together (one statement per TTL, not one per search).
        refresh = _Refreshes(storage.config.ttl_refresh_slack)

        async def read_items() -> None:
            # A burst's gets are read in parts, each refreshing what it found as soon as it
            # has it: one part's refresh is written while another part is read.
            async def read(part: list[int]) -> None:
                found_here = _Refreshes(storage.config.ttl_refresh_slack)
                found = await self._get(storage, [gets[i] for i in part], found_here)
                for i, item in zip(part, found, strict=True):
                    results[get_positions[i]] = item
                if found_here:
                    await self._refresh(storage, found_here)

            await asyncio.gather(*(read(part) for part in _owner_parts(gets)))

        async def read_searches() -> None:
            # Reads that do not see each other: a few at a time, each on a connection.
            room = asyncio.Semaphore(SEARCHES_AT_ONCE)

            async def search(op: SearchOp) -> list[SearchItem]:
                async with room:
                    return await self._search(storage, op, refresh)

            found = await asyncio.gather(*(search(op) for _, op in searches))
            for (position, _), items in zip(searches, found, strict=True):
                results[position] = items

        async def flush() -> None:
            if puts:
                await self._put(storage, list(puts.values()))
                puts.clear()
            # The gets and searches queued have no write between them: they run at once.
            if gets and searches:
                await asyncio.gather(read_items(), read_searches())
            elif gets:
                await read_items()
            elif searches:
                await read_searches()
            gets.clear()
            get_positions.clear()
            searches.clear()
            if refresh:
                await self._refresh(storage, refresh)
                refresh.clear()

        # Consecutive puts go to the database as one batch, and so do consecutive gets; any
        # other kind of op first flushes them, so every op sees the writes before it.
        for position, op in enumerate(ops):
            if isinstance(op, PutOp):
                if gets or searches:
                    await flush()
                puts[memory_key(op.namespace, op.key)] = op
                continue
            if isinstance(op, GetOp):
                if puts:
                    await flush()
                get_positions.append(position)
                gets.append(op)
                continue
            if isinstance(op, SearchOp):
                if puts:
                    await flush()
                searches.append((position, op))
                continue
            await flush()
            if isinstance(op, ListNamespacesOp):
                results[position] = await self._list_namespaces(storage, op)
            else:
                raise TypeError(f"unknown store operation {op!r}")
        await flush()
        return results

    # --- operations -------------------------------------------------------------------------
    async def _refresh(self, storage: PostgresStorage[Any, Any], refresh: _Refreshes) -> None:
        """Reading an item with a TTL starts its TTL again (LangGraph's refresh_ttl): one
        statement per TTL, whatever the items' owners (a refresh never waits for a row lock,
        so refreshes running together cannot wait on each other)."""
        for ttl, items in refresh.due():
            await storage.touch_by_owner(items, ttl)

    async def _put(self, storage: PostgresStorage[Any, Any], ops: list[PutOp]) -> None:
        # Keys to delete per owner: deleted items, and the legacy keys of items written anew.
        deletes: dict[tuple[MemoryScope, str | None], list[str]] = {}
        for op in ops:
            owner = namespace_scope(op.namespace)
            current, *legacy = _keys(op.namespace, op.key)
            deletes.setdefault(owner, []).extend(
                legacy if op.value is not None else [current, *legacy]
            )
        items: list[dict[str, Any]] = []
        for op in ops:
            if op.value is None:
                continue
            scope, scope_id = namespace_scope(op.namespace)
            # BaseStore.put has already applied ttl_config's default to a put without a ttl;
            # what reaches a PutOp is final, and None means the item never expires.
            minutes = op.ttl
            value = dict(op.value)
            fields = list(op.index) if isinstance(op.index, list) else self._fields
            text, passages = texts_for(value, fields)
            items.append(
                {
                    "key": memory_key(op.namespace, op.key),
                    "value": value,
                    "text": text,
                    "passages": passages,
                    "type": MemoryType.LONG_TERM,
                    "scope": scope,
                    "scope_id": scope_id,
                    "indices": [MemoryIndex.CONTEXTUAL]
                    if op.index is False
                    else [MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL],
                    "metadata": {
                        NAMESPACE_FIELD: list(op.namespace),
                        TTL_FIELD: minutes,
                    },
                    "managed_by": MANAGED_BY,
                    "ttl": timedelta(minutes=minutes) if minutes is not None else "never",
                }
            )
        # An item is what LangGraph put, under its key: never folded into another. Distinct
        # items (one per key by now) are written in chunks in identity order, a few at once:
        # chunks hold disjoint keys, locked in one order.
        items.sort(key=lambda item: (item["scope"].value, item["scope_id"] or "", item["key"]))
        room = asyncio.Semaphore(WRITES_AT_ONCE)

        async def write(chunk: list[dict[str, Any]]) -> None:
            async with room:
                await storage.store_many(chunk, dedupe=False)

        await asyncio.gather(
            *(
                write(items[start : start + ITEMS_PER_WRITE])
                for start in range(0, len(items), ITEMS_PER_WRITE)
            )
        )
        # After the writes: a failure in between leaves an item under both keys (reads prefer
        # the current one), never under neither.
        for (scope, scope_id), keys in deletes.items():
            if keys:
                await storage.delete_many(keys=keys, scope=scope, scope_id=scope_id)

    async def _get(
        self, storage: PostgresStorage[Any, Any], gets: list[GetOp], refresh: _Refreshes
    ) -> list[Item | None]:
        """The items ``gets`` name, in order, in one round trip; those whose TTL a get
        refreshes are noted in ``refresh``."""
        owners: dict[tuple[str, ...], tuple[str, str]] = {}  # the namespaces' owners, once each
        names: list[Identity] = []  # per get, the item's identity
        legacy_names: dict[int, Identity] = {}  # per get whose item may have a legacy key
        for index, op in enumerate(gets):
            owner = owners.get(op.namespace)
            if owner is None:
                scope, scope_id = namespace_scope(op.namespace)
                owner = owners[op.namespace] = (scope.value, scope_id or "")
            if _UNESCAPED.fullmatch(op.key) and _plain_labels(op.namespace):
                # Nothing to escape, and no legacy key (the common case, made cheap: a burst
                # names thousands of items).
                names.append(Identity(*owner, f"{_namespace_path(op.namespace)}#{op.key}"))
                continue
            names.append(Identity(*owner, memory_key(op.namespace, op.key)))
            legacy = legacy_memory_key(op.namespace, op.key)
            if legacy is not None:
                legacy_names[index] = Identity(*owner, legacy)
        # Items of the default TTL are refreshed by the read itself, when every get of the
        # batch refreshes (as every get does under a TTL config that refreshes on read):
        # one statement instead of a read and a refresh. Others are refreshed after it.
        default = (self.ttl_config or {}).get("default_ttl")
        touch: dict[str, Any] = {}
        if default is not None and all(op.refresh_ttl for op in gets):
            touch = {"touch": timedelta(minutes=default), "touch_metadata": {TTL_FIELD: default}}
        found = await storage.values_by_owner(
            itertools.chain(names, legacy_names.values()), **touch
        )
        items: list[Item | None] = []
        for index, op in enumerate(gets):
            identity = names[index]
            stored = found.get(identity)
            if stored is None and index in legacy_names:  # stored by an earlier release
                identity = legacy_names[index]
                stored = found.get(identity)
            if stored is None:
                items.append(None)
                continue
            if op.refresh_ttl and not (touch and stored.metadata.get(TTL_FIELD) == default):
                refresh.note(identity, stored.metadata, stored.expires_at)
            # The op names the item: nothing to decode from the memory's key.
            items.append(
                Item(
                    value=stored.value,
                    key=op.key,
                    namespace=op.namespace,
                    created_at=stored.created_at,
                    updated_at=stored.updated_at,
                )
            )
        return items

    async def _search(
        self, storage: PostgresStorage[Any, Any], op: SearchOp, refresh: _Refreshes
    ) -> list[SearchItem]:
        """The items ``op`` finds; those whose TTL it refreshes are noted in ``refresh``."""
        # LangGraph's own stores take a prefix given as a list too.
        namespace_prefix = tuple(op.namespace_prefix)
        prefix = _prefixes(namespace_prefix)
        where = _reads_under(namespace_prefix, legacy=storage.backfill_pending)
        scored: list[tuple[MemoryEntry[Any], float | None]]
        if op.query:
            query = MemoryQuery(
                query=op.query,
                index_type=MemoryIndex.SEMANTIC,
                key_prefix=prefix,
                value_filter=op.filter,
                limit=op.limit,
                offset=op.offset,
                **where,
            )
            scored = [(r.entry, r.score) for r in await storage.search(query)]
        else:
            entries = await storage.list(
                key_prefix=prefix,
                value_filter=op.filter,
                limit=op.limit,
                offset=op.offset,
                order_by="updated_at",
                descending=True,
                **where,
            )
            scored = [(entry, None) for entry in entries]
        found = [(e, score, ns) for e, score in scored if (ns := _namespace_of(e)) is not None]
        if op.refresh_ttl:
            for entry, _, _ in found:
                identity = Identity(entry.scope.value, entry.scope_id, entry.key)
                refresh.note(identity, entry.metadata, entry.expires_at)
        return [
            SearchItem(
                namespace=namespace,
                key=_item_key(entry.key),
                value=entry.value,
                created_at=entry.created_at,
                updated_at=entry.updated_at,
                score=score,
            )
            for entry, score, namespace in found
        ]

    async def _list_namespaces(
        self, storage: PostgresStorage[Any, Any], op: ListNamespacesOp
    ) -> list[tuple[str, ...]]:
        literal: tuple[str, ...] = ()
        patterns = []
        for condition in op.match_conditions or ():
            labels = tuple(None if label == "*" else label for label in condition.path)
            at: Literal["start", "end"] = "start" if condition.match_type == "prefix" else "end"
            patterns.append(ArrayPattern(labels, at=at))
            if at == "start":
                # Its literal part (up to the first wildcard) narrows the scan by key.
                head = tuple(itertools.takewhile(lambda label: label is not None, labels))
                literal = max(literal, typing.cast(tuple[str, ...], head), key=len)
        found = await storage.distinct_metadata_arrays(
            NAMESPACE_FIELD,
            patterns=patterns,
            depth=op.max_depth,
            key_prefix=_prefixes(literal),
            limit=op.limit,
            offset=op.offset,
            **_reads_under(literal, legacy=storage.backfill_pending),
        )
        return [tuple(namespace) for namespace in found]

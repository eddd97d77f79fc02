"""``Started``: what a started store's operations share, built by ``start()``."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from ..access import AccessTracker
from ..config import PostgresConfig
from ..database import Database, Runner
from ..embeddings import as_embedder
from ..history import Change, HistoryStatements, change_of
from ..items import PendingWrite, Scope, prepare_write, restriction
from ..metrics import Metrics
from ..queries import Restriction, Statements
from ..schema import TableLayout
from ..search_sql import SearchStatements
from ..term_stats import TermStatistics
from ..types import MemoryType
from ..values import default_text_of, validate_key
from ..vectors import EmbeddingPipeline
from .rows import RowMapper

__all__ = ["Started", "SearchState", "Services", "Types"]

V = TypeVar("V")

Types = Iterable[MemoryType | str] | MemoryType | None


@dataclass
class SearchState:
    """What searches learn as they go, for the store's lifetime."""

    passages_seen: bool = False
    """Whether any memory has passages: once true, vector searches look at them (see
    :func:`.search.vector_rows`)."""

    turns_seen: bool = False
    """Whether a conversation's turns were written or found: once true, searches fetch a
    few more candidates, so that turns asking questions can yield their places (see
    :func:`.search.search`)."""


@dataclass(frozen=True)
class Services:
    """What a store has from its construction, started or not: the pool and how statements
    run, the embedding pipeline, the term statistics and read counts kept in the background."""

    metrics: Metrics
    database: Database
    vectors: EmbeddingPipeline
    term_stats: TermStatistics
    access: AccessTracker
    text_of: Callable[[Any], str]
    """How a value becomes the text that is indexed."""

    @classmethod
    def create(
        cls,
        config: PostgresConfig,
        embedder: Any,
        text_of: Callable[[Any], str] | None,
        layout: Callable[[], TableLayout],
    ) -> Services:
        """The services of a store of ``config`` whose table's layout ``layout`` tells once
        started (``text_of`` None: :func:`~pepperpy_pg_memory.values.default_text_of`)."""
        metrics = Metrics()
        database = Database(config, metrics)
        tenant = config.tenant or ""
        return cls(
            metrics=metrics,
            database=database,
            vectors=EmbeddingPipeline(
                as_embedder(embedder, config.embedding_backend),
                cache_size=config.embedding_cache_size,
                batch_size=config.embedding_batch_size,
            ),
            term_stats=TermStatistics(
                database, layout, tenant, per_owner=config.term_statistics == "owner"
            ),
            access=AccessTracker(
                database, tenant, config.access_flush_interval, enabled=config.track_access
            ),
            text_of=text_of or default_text_of,
        )


@dataclass(frozen=True)
class Started(Generic[V]):
    """A started store: its configuration and tenant, the table's layout with the statements
    built for it, where statements run, the embedding pipeline and how rows become models.

    Frozen: when the layout changes (a new embedder recorded, a backfill finished) or reads
    move to replicas, the store builds another with ``dataclasses.replace`` (the statements
    are rebuilt, the services and ``state`` shared); what searches learn is in ``state``.
    """

    config: PostgresConfig
    tenant: str
    """Part of every memory's identity; '' for a store without a tenant."""
    layout: TableLayout
    backfilling: bool
    """Whether an online backfill may still leave rows without terms (word searches then
    parse those rows' text as they read them)."""
    database: Database
    reads: Runner
    """Where the reads a replica may serve run."""
    vectors: EmbeddingPipeline
    term_stats: TermStatistics
    access: AccessTracker
    rows: RowMapper[V]
    metrics: Metrics
    text_of: Callable[[Any], str]
    embedder_identity: str
    """The current embedder's name and dimension (the layout records the table's)."""
    state: SearchState = field(default_factory=SearchState)
    statements: Statements = field(init=False)
    statements_as_of: Statements = field(init=False)
    searches: SearchStatements = field(init=False)
    searches_as_of: SearchStatements = field(init=False)
    history: HistoryStatements = field(init=False)

    def __post_init__(self) -> None:
        layout, config = self.layout, self.config
        searches = partial(
            SearchStatements,
            layout,
            match=config.contextual_match,
            term_statistics=config.term_statistics,
            backfilling=self.backfilling,
            filtered_ef_search=(
                config.hnsw_ef_search_filtered
                if config.hnsw_ef_search_filtered != config.hnsw_ef_search
                else None
            ),
        )
        built = {
            "statements": Statements(layout),
            "statements_as_of": Statements(layout, as_of=True),
            "searches": searches(),
            "searches_as_of": searches(as_of=True),
            "history": HistoryStatements(layout),
        }
        for name, value in built.items():
            object.__setattr__(self, name, value)

    @classmethod
    def build(
        cls,
        services: Services,
        config: PostgresConfig,
        layout: TableLayout,
        *,
        backfilling: bool,
        reads: Runner,
        value_type: Any,
        text_of: Callable[[Any], str],
        embedder_identity: str,
    ) -> Started[V]:
        """The context of a store that has just started on ``layout``."""
        return cls(
            config=config,
            tenant=config.tenant or "",
            layout=layout,
            backfilling=backfilling,
            database=services.database,
            reads=reads,
            vectors=services.vectors,
            term_stats=services.term_stats,
            access=services.access,
            rows=RowMapper(value_type),
            metrics=services.metrics,
            text_of=text_of,
            embedder_identity=embedder_identity,
        )

    # --- input ---------------------------------------------------------------------------
    def restriction(
        self,
        scope: Scope = None,
        scope_id: str | None = None,
        types: Types = None,
        filter: Mapping[str, Any] | None = None,
        **bounds: Any,
    ) -> Restriction:
        """The rows a call may touch: this tenant's, of the owner, types and filter given."""
        return restriction(self.config, self.tenant, scope, scope_id, types, filter, **bounds)

    def key(self, key: Any) -> str:
        """``key`` checked (a string of at most ``max_key_length`` bytes, nothing invisible)."""
        return validate_key(key, self.config.max_key_length)

    def change(self, operation: str | None, actor: str | None, reason: str | None) -> Change:
        """What the versions a call makes record: its ``actor`` and ``reason`` checked."""
        return change_of(operation, actor, reason)

    def keys(self, keys: Iterable[str]) -> builtins.list[str]:
        """``keys`` checked, each once, in order."""
        return list(dict.fromkeys(validate_key(key, self.config.max_key_length) for key in keys))

    def prepare(self, key: Any, value: Any, **fields: Any) -> PendingWrite:
        """A write of ``value`` under ``key``, checked and ready but for its embedding."""
        return prepare_write(self.config, self.text_of, self.layout.dimension, key, value, **fields)

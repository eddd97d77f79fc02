"""``PostgresConfig``: where the memories live and how the store behaves.

Every field can also be set from the environment with the prefix ``PEPPERPY_PG_``
(``PEPPERPY_PG_HOST``, ``PEPPERPY_PG_SCHEMA``, ...). With neither ``dsn`` nor ``host`` set, the
store runs on an embedded PostgreSQL whose files live in ``data_dir``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import platformdirs
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import MemoryConfigurationError
from .filters import FieldKind, key_path
from .identifiers import TEXT_SEARCH_CONFIG_PATTERN, check_identifier
from .limits import MAX_KEY_BYTES, MAX_SCOPE_ID_BYTES, MAX_TENANT_BYTES
from .types import MemoryType

__all__ = ["PostgresConfig", "DEFAULT_TYPE_TTLS", "default_data_dir"]

DEFAULT_TYPE_TTLS: dict[MemoryType, timedelta | None] = {
    MemoryType.SHORT_TERM: timedelta(days=1),
    MemoryType.WORKING: timedelta(hours=1),
    MemoryType.MEDIUM_TERM: timedelta(days=30),
    MemoryType.LONG_TERM: None,
    MemoryType.EPISODIC: None,
    MemoryType.SEMANTIC: None,
    MemoryType.PROCEDURAL: None,
}


# Fields that may not be below another: later field -> the one it bounds from below.
_ORDERED_PAIRS = {"max_size": "min_size", "retry_max_delay": "retry_base_delay"}


def default_data_dir() -> Path:
    """Where the embedded server keeps its files unless ``data_dir`` says otherwise."""
    return Path(platformdirs.user_data_dir("pepperpy-pg-memory")) / "postgres"


class PostgresConfig(BaseSettings):
    """Connection and behaviour settings of a :class:`PostgresStorage`.

    Validated once at construction; an invalid value raises
    :class:`~pepperpy_pg_memory.MemoryConfigurationError` naming the field. The object is frozen.

    Examples:
        >>> config = PostgresConfig(host="localhost", database="pepperpy", user="postgres")
        >>> config.is_embedded
        False
        >>> PostgresConfig(data_dir="/tmp/agent-memory").is_embedded
        True
    """

    model_config = SettingsConfigDict(
        env_prefix="PEPPERPY_PG_",
        frozen=True,
        extra="forbid",
        populate_by_name=True,
    )

    # --- where -----------------------------------------------------------------------------
    dsn: SecretStr | None = Field(
        default=None, description="A full postgresql:// URL; wins over host/port/user/password."
    )
    host: str | None = Field(default=None, description="Server host; unset means embedded.")
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(default="pepperpy", min_length=1, max_length=63)
    user: str = Field(default="postgres", min_length=1)
    password: SecretStr | None = None
    schema_name: str = Field(
        default="public",
        # Every alias is also an environment variable's name, unprefixed: only prefixed ones
        # are given, so that a stray SCHEMA=... cannot move the store. The constructor's
        # schema= is mapped in __init__.
        validation_alias=AliasChoices("PEPPERPY_PG_SCHEMA", "PEPPERPY_PG_SCHEMA_NAME"),
        description=(
            "PostgreSQL schema holding the table (created if missing); pass it as schema= "
            "or schema_name=, read it as .schema_name."
        ),
    )
    table: str = Field(default="memories", description="Table holding this store's memories.")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Embedded server's data folder; memories persist there across runs.",
    )

    # --- pool and timeouts -------------------------------------------------------------------
    min_size: int = Field(default=1, ge=0, le=1000)
    max_size: int = Field(default=10, ge=1, le=1000)
    command_timeout: float = Field(default=30.0, gt=0, description="Seconds per statement.")
    maintenance_timeout: float = Field(
        default=3_600.0,
        gt=0,
        description=(
            "Seconds per statement whose work grows with the data: store_many batches of "
            "1,000 rows or more, delete_many, clear, index builds, reindex and dimension "
            "changes."
        ),
    )
    connect_timeout: float = Field(default=10.0, gt=0)
    pool_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a free pooled connection."
    )
    retry_attempts: int = Field(
        default=6,
        ge=0,
        le=20,
        description=(
            "Retries of idempotent operations on transient faults. With the default delays "
            "they span 3.5 to 7 seconds: enough for a server restart."
        ),
    )
    retry_base_delay: float = Field(default=0.2, ge=0)
    retry_max_delay: float = Field(default=2.0, ge=0)

    # --- read replicas -------------------------------------------------------------------------
    read_replicas: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description=(
            "postgresql:// URLs of streaming replicas of the server; reads (searches, "
            "retrieve, list, count, similar, stats) go to a healthy one, everything else to "
            "the primary. From the environment: PEPPERPY_PG_READ_REPLICAS, comma-separated."
        ),
    )
    read_your_writes: bool = Field(
        default=True,
        description=(
            "A read after this store's write waits for the replica to replay it (up to "
            "replica_wait_timeout), else reads from the primary. False accepts replica lag."
        ),
    )
    replica_wait_timeout: float = Field(
        default=0.5, ge=0, description="Seconds a read waits for a replica to catch up."
    )
    replica_max_lag: float = Field(
        default=10.0,
        gt=0,
        description="Seconds behind the primary past which a replica is taken out of rotation.",
    )
    replica_check_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between health and lag checks of the replicas (and re-checks of "
        "those out of rotation).",
    )
    embedded_replicas: int = Field(
        default=0,
        ge=0,
        le=8,
        description=(
            "Local streaming replicas of the embedded server to start and read from (to try "
            "an application's replica behaviour on one machine)."
        ),
    )

    # --- multi-tenancy -------------------------------------------------------------------------
    tenant: str | None = Field(
        default=None,
        min_length=1,
        description=(
            f"Tenant this store's sessions act for (the pepperpy.tenant setting); part of every "
            f"memory's identity. At most {MAX_TENANT_BYTES} bytes in UTF-8."
        ),
    )
    row_level_security: bool = Field(
        default=False,
        description=(
            "Enable PostgreSQL row-level security on the table at start(): every session sees "
            "only its tenant's rows, even through SQL that bypasses this library."
        ),
    )

    distribution: Literal["owner", "tenant"] | None = Field(
        default=None,
        description=(
            "On a Citus coordinator: distribute the store's tables across the workers by the "
            "owner ('owner': each scope_id's memories on one node) or by the tenant "
            "('tenant'). start() creates a new store distributed, and refuses a server "
            "without Citus or an existing store not yet distributed (`pepperpy-memory "
            "distribute` converts it). None: ordinary tables."
        ),
    )

    # --- memories ------------------------------------------------------------------------------
    default_scope_id: str = Field(
        default="default",
        min_length=1,
        description=(
            f"scope_id used when a SESSION/USER/AGENT call omits it (at most "
            f"{MAX_SCOPE_ID_BYTES} bytes in UTF-8, like every scope_id)."
        ),
    )
    type_ttls: dict[MemoryType, timedelta | None] = Field(
        default_factory=lambda: dict(DEFAULT_TYPE_TTLS),
        description="Default time-to-live per memory type; None never expires.",
    )
    ttl_refresh_slack: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        description=(
            "A TTL refresh (touch; LangGraph's refresh_on_read) leaves a memory whose expiry "
            "is already within this share of the TTL of the new one: one read many times in "
            "a row is refreshed once per slack x TTL, not on every read (it may expire that "
            "much sooner than a refresh on every read would keep it). 0: every refresh "
            "writes."
        ),
    )
    max_key_length: int = Field(
        default=MAX_KEY_BYTES,
        ge=1,
        le=MAX_KEY_BYTES,
        description=(
            "Longest key accepted, in UTF-8 bytes. The maximum is what the primary key's "
            "index holds beside the longest owner."
        ),
    )
    max_value_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest JSON-encoded value accepted."
    )
    max_metadata_bytes: int = Field(
        default=65_536,
        ge=1,
        description=(
            "Largest JSON-encoded metadata accepted (metadata is read with every result and "
            "indexed; values are what may be large)."
        ),
    )

    # --- indexing and search -----------------------------------------------------------------
    text_search_config: str = Field(
        default="english", description="PostgreSQL text search configuration (language)."
    )
    hnsw_m: int = Field(default=16, ge=2, le=100)
    hnsw_ef_construction: int = Field(default=64, ge=4, le=1000)
    hnsw_ef_search: int = Field(default=100, ge=1, le=1000)
    hnsw_ef_search_filtered: int = Field(
        default=200,
        ge=1,
        le=1000,
        description=(
            "ef_search of semantic and hybrid searches and similar() with a metadata or value "
            "filter: of the candidates the graph walk finds, only those the filter lets "
            "through count, so a wider walk keeps recall (at 100k and 50% selectivity, 0.94 "
            "with 100)."
        ),
    )
    hnsw_iterative_scan: Literal["off", "relaxed_order", "strict_order"] = Field(
        default="relaxed_order",
        description="pgvector 0.8 iterative scans, so filtered searches still fill `limit`.",
    )
    distance: Literal["cosine", "l2", "inner_product"] = Field(
        default="cosine",
        description=(
            "How a new table compares vectors (its HNSW indexes' operator class): 'cosine' "
            "(score 1 - cosine distance), 'l2' (score: minus the Euclidean distance) or "
            "'inner_product' (score: the inner product). An existing table keeps its own; "
            "starting it with another raises MemoryConfigurationError."
        ),
    )
    vector_type: Literal["vector", "halfvec"] | None = Field(
        default=None,
        description=(
            "How a new table stores vectors: 'vector' (4-byte floats) or 'halfvec' (2-byte "
            "floats: half the vectors' space; scores agree to about 1e-3). None: 'vector' "
            "up to 2,000 dimensions, "
            "'halfvec' above (what pgvector's HNSW can index). An existing table keeps its "
            "own; starting it with another raises MemoryConfigurationError."
        ),
    )
    fillfactor: int | None = Field(
        default=None,
        ge=10,
        le=100,
        description=(
            "How full new pages of the memory table are filled, in percent; the rest is room "
            "for a row's next version on its page, so that an update of no indexed column "
            "rewrites no index. None: the table's own (100 on one server since schema 28, "
            "70 where Citus is installed). 50 leaves every "
            "row room (about one row a page at 384 dimensions): for stores on a Citus cluster "
            "that refresh TTLs on every read (a refresh rewrites the row there; one server "
            "keeps refreshes beside it). Applied when the store starts, to pages written from "
            "then on."
        ),
    )
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal-rank-fusion constant.")
    hybrid_candidates: int = Field(
        default=50, ge=1, le=1000, description="Candidates each index contributes to HYBRID."
    )
    contextual_match: Literal["any", "all"] = Field(
        default="any",
        description=(
            "How CONTEXTUAL (and HYBRID's word side) matches a query: 'any' of its terms, "
            "ranked by BM25 (rare terms and identifiers weigh most), or 'all' of its words "
            "(web-search syntax, ranked by ts_rank_cd: how earlier releases matched)."
        ),
    )
    term_statistics: Literal["owner", "tenant"] = Field(
        default="owner",
        description=(
            "Whose memories BM25's term weights count when a search is within one owner: "
            "'owner' (that owner's only, so no user's scores depend on another's words) or "
            "'tenant' (every memory of the tenant; one statistics table less to refresh). "
            "Searches across owners always count the tenant's."
        ),
    )
    indexed_metadata: dict[str, Literal["numeric", "text"]] = Field(
        default_factory=dict,
        description=(
            "Metadata fields filtered by range often, e.g. {'priority': 'numeric', 'due': "
            "'text'}: start() adds an expression index for each (recorded, never dropped "
            "automatically), and range filters on them use it."
        ),
    )
    background_backfill: bool = Field(
        default=True,
        description=(
            "Run pending online backfills (work on every existing row after an upgrade) in "
            "the background after start(); otherwise run them with complete_backfills() or "
            "`pepperpy-memory backfill`."
        ),
    )
    dedupe_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "store() without dedupe= deduplicates at this cosine (and the same normalised "
            "text always); None: only when a store() asks for it."
        ),
    )
    max_memories_per_owner: int | None = Field(
        default=None,
        ge=1,
        description=(
            "The most memories one owner (scope and scope id) may hold, adapters' records "
            "aside. At the limit a new memory evicts the owner's lowest-ranked memory that "
            "is not long-term (lowest importance, then least recently read or created), "
            "recorded in its history; if all are long-term, MemoryQuotaError and nothing "
            "is written. None: no limit."
        ),
    )
    track_access: bool = Field(
        default=True,
        description="Count reads (retrieve and searches) per memory, for ranking by recency.",
    )
    access_flush_interval: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description=(
            "Seconds between writes of read counts (access_count, last_accessed_at): reads "
            "are counted in memory and written at most once a memory per interval."
        ),
    )
    history: bool = Field(
        default=True,
        description=(
            "Record every change to a memory as a version (history(), restore(), searches "
            "as_of a moment). Off, this store's writes record none."
        ),
    )
    history_max_versions: int | None = Field(
        default=None,
        ge=1,
        description="cleanup_expired() keeps at most this many versions per memory (None: all).",
    )
    history_max_age: timedelta | None = Field(
        default=None,
        description=(
            "cleanup_expired() drops versions older than this, never a memory's newest "
            "(None: keep them all)."
        ),
    )
    trigram_threshold: float = Field(
        default=0.5, gt=0, le=1, description="word_similarity needed for a fuzzy text match."
    )
    embedding_batch_size: int = Field(default=64, ge=1, le=4096)
    embedding_cache_size: int = Field(default=10_000, ge=0)
    maintenance_batch_size: int = Field(default=1_000, ge=1, le=100_000)
    bulk_index_rebuild_rows: int = Field(
        default=1_000,
        ge=0,
        description=(
            "A store_many of at least this many rows into a table holding fewer rows rebuilds "
            "the vector index instead of growing it row by row (0 never does)."
        ),
    )
    maintenance_work_mem: str = Field(
        default="512MB", pattern=r"^[0-9]{1,7}(kB|MB|GB)$", description="For index builds."
    )
    embedding_backend: Literal["onnx", "onnx-int8", "torch"] = Field(
        default="onnx",
        description=(
            "How the default model runs when no embedder is given: onnxruntime (its graph "
            "built from the packaged weights on first use; no torch) or sentence-transformers "
            "on torch (the [torch] extra), which give the same vectors; or onnx-int8, the "
            "graph quantised to 8 bits (about twice as fast, close vectors: another model for "
            "the table)."
        ),
    )
    on_embedder_change: Literal["error", "reindex"] = Field(
        default="error",
        description=(
            "What start() does when the table holds another model's vectors (by name and "
            "dimension): raise EmbedderMismatchError (DimensionMismatchError when only the "
            "dimension tells), or re-embed every memory with the new model (resumable)."
        ),
    )
    on_dimension_mismatch: Literal["error", "reindex"] = Field(
        default="error",
        description="Older name of on_embedder_change: 'reindex' here re-embeds as well.",
    )

    def __init__(self, **values: Any) -> None:
        if "schema" in values:
            if "schema_name" in values:
                raise MemoryConfigurationError(
                    "give either schema or schema_name, not both", field="schema_name"
                )
            values["schema_name"] = values.pop("schema")
        try:
            super().__init__(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or None
            where = f"PostgresConfig.{field}" if field else "PostgresConfig"
            raise MemoryConfigurationError(
                f"invalid {where}: {first['msg']}", field=field
            ) from None

    @field_validator("schema_name", "table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return check_identifier(value)

    @field_validator("read_replicas", mode="before")
    @classmethod
    def _replica_list(cls, value: Any) -> Any:
        # The environment gives one string: "postgresql://a/db,postgresql://b/db".
        if isinstance(value, (str, SecretStr)):
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("read_replicas")
    @classmethod
    def _replica_urls(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for number, dsn in enumerate(value, 1):
            if not dsn.get_secret_value().startswith(("postgresql://", "postgres://")):
                raise ValueError(f"replica {number} is not a postgresql:// URL")
        return value

    @field_validator("embedded_replicas")
    @classmethod
    def _replicas_of_embedded(cls, value: int, info: ValidationInfo) -> int:
        if value and (info.data.get("dsn") is not None or info.data.get("host") is not None):
            raise ValueError(
                "embedded replicas copy the embedded server; with your own server, list its "
                "replicas in read_replicas"
            )
        return value

    @field_validator("indexed_metadata")
    @classmethod
    def _metadata_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            key_path(key)  # raises with the reason
        return value

    @property
    def indexed_fields(self) -> tuple[tuple[tuple[str, ...], FieldKind], ...]:
        """``indexed_metadata`` as (path, kind) pairs, in a stable order."""
        return tuple(
            (tuple(key_path(key)), kind) for key, kind in sorted(self.indexed_metadata.items())
        )

    @field_validator("tenant", "default_scope_id")
    @classmethod
    def _owner_text(cls, value: str | None, info: Any) -> str | None:
        limit = MAX_TENANT_BYTES if info.field_name == "tenant" else MAX_SCOPE_ID_BYTES
        if value is not None:
            if "\x00" in value:
                raise ValueError("must not contain NUL")
            if len(value.encode("utf-8", "surrogatepass")) > limit:
                raise ValueError(f"is longer than {limit} bytes in UTF-8")
        return value

    @field_validator("text_search_config")
    @classmethod
    def _text_search_config(cls, value: str) -> str:
        if not TEXT_SEARCH_CONFIG_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a text search configuration name")
        return value

    @field_validator("type_ttls", mode="before")
    @classmethod
    def _merge_ttls(cls, value: Any) -> Any:
        # A partial mapping overrides the built-in defaults instead of dropping the rest.
        if isinstance(value, dict):
            return {**DEFAULT_TYPE_TTLS, **value}
        return value

    @field_validator("type_ttls")
    @classmethod
    def _positive_ttls(
        cls, value: dict[MemoryType, timedelta | None]
    ) -> dict[MemoryType, timedelta | None]:
        for memory_type, ttl in value.items():
            if ttl is not None and ttl <= timedelta(0):
                raise ValueError(f"TTL of {memory_type.name} must be positive, got {ttl}")
        return value

    @field_validator("history_max_age")
    @classmethod
    def _positive_age(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError(f"history_max_age must be positive, got {value}")
        return value

    # Checked on the later field of each pair, so that the error names a field (a model-level
    # check has no location) and the earlier value is already validated.
    @field_validator(*_ORDERED_PAIRS)
    @classmethod
    def _not_below(cls, value: float, info: ValidationInfo) -> float:
        lower_name = _ORDERED_PAIRS[str(info.field_name)]
        lower = info.data.get(lower_name)
        if lower is not None and lower > value:
            raise ValueError(f"{lower_name} ({lower}) exceeds {info.field_name} ({value})")
        return value

    @property
    def is_embedded(self) -> bool:
        """True when no server is named, so the store runs its own embedded PostgreSQL."""
        return self.dsn is None and self.host is None

    def connection_dsn(self) -> str:
        """The URL to connect to an external server (not for embedded configs)."""
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        if self.host is None:
            raise MemoryConfigurationError("an embedded config has no fixed DSN", field="host")
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password.get_secret_value(), safe="")
        return f"postgresql://{auth}@{quote(self.host, safe='')}:{self.port}/{quote(self.database)}"

    def ttl_for(self, memory_type: MemoryType) -> timedelta | None:
        """Default time-to-live of ``memory_type``."""
        return self.type_ttls.get(memory_type)

    def describe_target(self) -> str:
        """Where the store connects, safe to log: never includes a password."""
        if self.is_embedded:
            return f"embedded PostgreSQL at {self.data_dir}"
        if self.host is not None and self.dsn is None:
            return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"
        return "the server named by dsn"

"""The objects callers exchange with the store: entries, queries, search results, the turns
of a conversation, and the reports of imports and consolidations."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Generic, NamedTuple, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import MemoryValidationError
from .types import Identity, MemoryIndex, MemoryScope, MemoryType

__all__ = [
    "MemoryEntry",
    "MemoryVersion",
    "MemoryQuery",
    "MemorySearchResult",
    "Ranking",
    "StoredCount",
    "StoredValue",
    "Turn",
    "ImportReport",
    "ConsolidationReport",
    "OwnerConsolidation",
    "score_range",
    "trusted",
]

V = TypeVar("V")
M = TypeVar("M", bound=BaseModel)

MAX_LIMIT = 1_000
MAX_OFFSET = 100_000
MAX_LIST_PAGE = 10_000
"""The most memories one ``list()`` page holds."""
MAX_ROWS_PER_READ = 100_000
"""The most rows ``history()``, ``distinct_metadata()``, ``owners()`` and
``distinct_arrays()`` return in one call (a read answers in one message)."""


class MemoryEntry(BaseModel, Generic[V]):
    """One stored memory.

    Attributes:
        key: unique within the store's table.
        value: what was stored (JSON data, or the model type the storage was declared with).
        text: what the indices were built from (see ``PostgresStorage.text_of``).
        type, scope, scope_id: what kind of memory and whose (``scope_id`` is ``""`` for GLOBAL).
        indices: the indices the entry is in.
        metadata: free-form JSON object, searchable with filters.
        created_at: first stored; unchanged by later upserts of the same key.
        updated_at: last stored.
        expires_at: when it stops being visible; ``None`` never.
        embedding: only filled when asked for (``retrieve(..., include_embedding=True)``).
        version: 1 when first stored, one more with every change (see ``history``).
        valid_from, valid_to: when the fact became true and stopped being true
            (``valid_to`` None: still true); see ``supersede`` and ``invalidate``.
        supersedes, superseded_by: the key of the fact this one replaced, or that replaced it.
        importance: in [0, 1], as stored (0.5 by default); weighs in a ``Ranking``.
        access_count, last_accessed_at: how often ``retrieve`` and searches returned it, and
            when last (counted off the read path: up to ``access_flush_interval`` late).
            ``access_count`` is None when the call that returned the entry did not read the
            counts: a search, unless ``MemoryQuery(include_access_counts=True)`` or its
            ``ranking`` weighs recency; a write's entry on a Citus cluster.
        deduplicated: set on what ``store(..., dedupe=...)`` returns when the write
            duplicated this memory (which was reinforced instead; see ``store``).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    key: str
    value: V
    text: str
    type: MemoryType
    scope: MemoryScope
    scope_id: str
    indices: frozenset[MemoryIndex]
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    embedding: list[float] | None = None
    version: int = 1
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    supersedes: str | None = None
    superseded_by: str | None = None
    importance: float = 0.5
    access_count: int | None = 0
    last_accessed_at: datetime | None = None
    deduplicated: bool = False


class MemoryVersion(BaseModel, Generic[V]):
    """One version of a memory, as its history recorded it (see ``PostgresStorage.history``).

    Attributes:
        version: 1, 2, … gapless per memory, in commit order.
        operation: what made it: ``create``, ``update``, ``delete``, ``supersede``,
            ``invalidate``, ``restore``, ``reinforce`` (a duplicate write; its ``reason``
            holds the duplicate's key and text) or ``expire`` (reclaimed by
            ``cleanup_expired``).
            A ``delete``/``expire`` version holds what the memory was when it ended.
        actor, reason: as given to the call that made it.
        at: when it was recorded.
        The other fields are the memory's as of that version (see :class:`MemoryEntry`).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    key: str
    scope: MemoryScope
    scope_id: str
    version: int
    operation: str
    value: V
    text: str
    type: MemoryType
    indices: frozenset[MemoryIndex]
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    supersedes: str | None = None
    superseded_by: str | None = None
    actor: str | None = None
    reason: str | None = None
    at: datetime
    embedding: list[float] | None = None
    importance: float = 0.5


class MemorySearchResult(BaseModel, Generic[V]):
    """One hit of a search.

    ``score`` depends on the index used (see :class:`MemoryQuery`); higher is always better.
    ``semantic_score`` and ``contextual_score`` show the parts a HYBRID score was fused from.
    With a :class:`Ranking`, ``score`` is the ranked score and ``relevance_score``,
    ``recency_score`` and ``importance_score`` (each in [0, 1]) the parts it was weighed from.
    """

    model_config = ConfigDict(frozen=True)

    entry: MemoryEntry[V]
    score: float
    index_type: MemoryIndex
    semantic_score: float | None = None
    contextual_score: float | None = None
    relevance_score: float | None = None
    recency_score: float | None = None
    importance_score: float | None = None


class MemoryOwner(NamedTuple):
    """An owner holding memories, with how many (what ``PostgresStorage.owners`` lists)."""

    scope: MemoryScope
    scope_id: str
    memories: int


class StoredValue(NamedTuple):
    """A live memory's value and moments, without the rest of its entry: what
    ``PostgresStorage.values_by_owner`` maps each found memory to. A tuple, so that a read of
    thousands makes one object per memory (an entry is a model with its own dict)."""

    value: Any
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


class StoredCount(int):
    """What ``store_many`` returns: how many distinct memories it wrote (an ``int``, as
    before), and in ``deduplicated`` how many more items it folded into memories they
    repeat."""

    deduplicated: int

    def __new__(cls, written: int, *, deduplicated: int = 0) -> StoredCount:
        count = super().__new__(cls, written)
        count.deduplicated = deduplicated
        return count

    def __repr__(self) -> str:
        return f"StoredCount({int(self)}, deduplicated={self.deduplicated})"

    # int takes str() from repr(): printed, the count shows as the number it is.
    __str__ = int.__repr__


class Ranking(BaseModel):
    """How a search weighs what it found (the Generative Agents retrieval score).

    score = relevance x the index's score mapped to [0, 1] (a cosine c as (1 + c) / 2)
          + recency x 0.5 ** (age / half_life), age since the memory was last read (else
            since it was created)
          + importance x the memory's importance.

    Computed in the database over the index's candidates (four times what is asked for).

    Examples:
        >>> Ranking(relevance=1.0, recency=0.5, importance=0.5).half_life.days
        7
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    relevance: float = Field(default=1.0, ge=0, le=1_000)
    recency: float = Field(default=0.0, ge=0, le=1_000)
    importance: float = Field(default=0.0, ge=0, le=1_000)
    half_life: timedelta = timedelta(days=7)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "weights"
            raise MemoryValidationError(f"invalid Ranking.{where}: {first['msg']}") from None

    @model_validator(mode="after")
    def _weighs_something(self) -> Ranking:
        if self.relevance + self.recency + self.importance <= 0:
            raise ValueError("at least one weight must be positive")
        if self.half_life <= timedelta(0):
            raise ValueError("half_life must be positive")
        return self


def score_range(index: MemoryIndex) -> tuple[float, float]:
    """The scores a search of ``index`` gives: a cosine for SEMANTIC, [0, 1] for the others."""
    return (-1.0 if index is MemoryIndex.SEMANTIC else 0.0), 1.0


class _Invalid(ValueError):
    """A check across fields failed; ``field`` is the one to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class MemoryQuery(BaseModel):
    """What to search for, where, and how much.

    Scores by ``index_type`` (``min_score`` is compared with the same number):

    * SEMANTIC: cosine similarity of the embeddings, in [-1, 1] (1 is identical meaning).
    * CONTEXTUAL: in (0, 1]. Full-text matches score 0.5 + 0.5 x the ``ts_rank_cd`` rank
      normalised as rank/(rank+1); matches found only by trigram similarity (a misspelling)
      score 0.5 x their word similarity, so they rank below every exact-word match.
    * HYBRID: reciprocal-rank fusion of both lists, scaled so that an entry ranked first by both
      indices scores 1.
    * TEMPORAL: newest first; score 1 / (1 + age in hours). ``query`` is optional.

    Examples:
        >>> MemoryQuery(query="coffee preferences", index_type=MemoryIndex.HYBRID, limit=5).limit
        5
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: str | None = None
    embedding: list[float] | None = Field(
        default=None, description="Search by this vector instead of embedding `query`."
    )
    index_type: MemoryIndex = MemoryIndex.SEMANTIC
    min_score: float | None = None
    limit: int = Field(default=10, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    types: frozenset[MemoryType] | None = None
    scope: MemoryScope | None = None
    scope_id: str | None = None
    filter: dict[str, Any] | None = None
    value_filter: dict[str, Any] | None = Field(
        default=None, description="The filter language applied to JSON-object values."
    )
    keys: frozenset[str] | None = Field(default=None, description="Only these keys.")
    key_prefix: str | tuple[str, ...] | None = Field(
        default=None, description="Only keys starting with this (or with any of these)."
    )
    include_embedding: bool = Field(
        default=False, description="Fill entry.embedding (SEMANTIC queries only)."
    )
    include_access_counts: bool = Field(
        default=False,
        description="Read each entry's access_count and last_accessed_at (a look-up per "
        "result; otherwise access_count is None, unless the ranking weighs recency).",
    )
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    as_of: datetime | None = Field(
        default=None,
        description="Search the memories as they were stored and valid at this moment "
        "(timezone-aware; needs the history, see PostgresConfig.history).",
    )
    include_invalid: bool = Field(
        default=False,
        description="Also return facts whose validity has closed (superseded or invalidated).",
    )
    ranking: Ranking | None = Field(
        default=None,
        description="Weigh relevance with recency and importance (None: the index's order).",
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            cause = first.get("ctx", {}).get("error")
            # A check across fields has no location: it says which field it is about.
            where = ".".join(str(part) for part in first["loc"]) or getattr(cause, "field", "")
            message = str(cause) if isinstance(cause, _Invalid) else first["msg"]
            raise MemoryValidationError(f"invalid MemoryQuery.{where}: {message}") from None

    @model_validator(mode="after")
    def _consistent(self) -> MemoryQuery:
        index = self.index_type
        if self.query is not None and not self.query.strip():
            raise _Invalid("query", "query is empty")
        if self.query is not None and "\x00" in self.query:
            raise _Invalid("query", "query contains a NUL character")
        if index is MemoryIndex.SEMANTIC:
            if self.query is None and self.embedding is None:
                raise _Invalid("query", "a SEMANTIC query needs `query` text or an `embedding`")
        elif index in (MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID):
            if self.query is None:
                raise _Invalid("query", f"a {index.name} query needs `query` text")
        if self.embedding is not None and index not in (MemoryIndex.SEMANTIC, MemoryIndex.HYBRID):
            raise _Invalid("embedding", "`embedding` is only used by SEMANTIC and HYBRID queries")
        if self.min_score is not None:
            low, high = score_range(index)
            if not low <= self.min_score <= high:
                raise _Invalid(
                    "min_score",
                    f"min_score {self.min_score} is outside the {index.name} score range "
                    f"[{low:g}, {high:g}]",
                )
        if self.include_embedding and index is not MemoryIndex.SEMANTIC:
            raise _Invalid(
                "include_embedding", "include_embedding is only available for SEMANTIC queries"
            )
        if self.scope_id is not None and self.scope is None:
            raise _Invalid("scope_id", "scope_id needs a scope")
        if self.as_of is not None and self.as_of.tzinfo is None:
            raise _Invalid("as_of", "as_of must be a timezone-aware datetime")
        if self.scope is MemoryScope.GLOBAL and self.scope_id not in (None, ""):
            raise _Invalid("scope_id", "GLOBAL memories have no scope_id")
        return self


_FIELD_NAMES: dict[type[BaseModel], frozenset[str]] = {}


def trusted(model: type[M], **values: Any) -> M:
    """An instance of ``model`` from values this library made itself (already valid), every
    field given.

    It is what ``model.model_construct(**values)`` builds, without the per-field default and
    alias handling that costs about 8 µs an object: a search or a batch read builds one or two
    per row, which made row mapping the largest cost of a fast query.
    """
    return trusted_from(model, values)


def trusted_from(model: type[M], values: dict[str, Any]) -> M:
    """:func:`trusted` for values already in a dict of their own, which the instance keeps
    (the caller must not change it afterwards)."""
    fields = _FIELD_NAMES.get(model)
    if fields is None:
        # (Reading model_fields on the class goes through a descriptor: a few µs a row.)
        fields = _FIELD_NAMES[model] = frozenset(model.model_fields)
    if values.keys() != fields:
        return model.model_construct(**values)
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", values)
    object.__setattr__(instance, "__pydantic_fields_set__", set(values))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


class Turn(BaseModel):
    """One turn of a conversation, as a caller gives it.

    ``id`` becomes the memory's key (unique within the owner); ``at``, when the turn was said
    (a date or a moment; None: when it is stored).
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1)
    speaker: str = Field(min_length=1)
    text: str
    at: datetime | date | None = None
    value: Any = None
    """The memory's value; None stores the turn itself (speaker, text, at, session_id)."""
    metadata: dict[str, Any] | None = None
    """This turn's own metadata, over the call's."""

    @field_validator("speaker")
    @classmethod
    def _one_line(cls, speaker: str) -> str:
        if "\n" in speaker or "\r" in speaker:
            raise ValueError("a speaker's name is one line")
        return speaker


@dataclass
class ImportReport:
    """What an import did. ``errors`` holds ``(line number, message)`` for every line that was
    skipped (not a memory) or failed (a memory that may not be stored); nothing of those lines
    was written."""

    stored: int = 0
    """Memories written (new, changed or left as they were)."""
    unchanged: int = 0
    """Of those, how many were already stored exactly so (a second import of one file)."""
    skipped: int = 0
    failed: int = 0
    versions: int = 0
    """History lines recorded (an export made with history)."""
    errors: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stored": self.stored,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "failed": self.failed,
            "versions": self.versions,
        }


class OwnerConsolidation(BaseModel):
    """What a consolidation did to one owner's memories: keys are this owner's."""

    scope: MemoryScope
    scope_id: str
    promoted: list[str] = Field(default_factory=list)
    merged_into: dict[str, str] = Field(default_factory=dict)
    """Each merged key → the key it was merged into."""
    summarized: list[str] = Field(default_factory=list)
    summaries: list[str] = Field(default_factory=list)


class ConsolidationReport(BaseModel):
    """What :meth:`PostgresStorage.consolidate` did (or, with ``dry_run``, would do).

    The flat lists hold keys of every owner examined; two owners may use the same key, so
    :attr:`by_owner` says whose each one is.
    """

    promoted: list[str] = Field(default_factory=list)
    """Keys of memories made long-term."""
    merged: list[str] = Field(default_factory=list)
    """Keys of memories merged into another (closed, superseded by it)."""
    merged_into: dict[str, str] = Field(default_factory=dict)
    """Each merged key → the key it was merged into. Keyed by key alone: when two owners
    merged the same key, only the later owner's pair is here; :attr:`by_owner` has both."""
    summarized: list[str] = Field(default_factory=list)
    """Keys of the short-term memories a summary now covers."""
    summaries: list[str] = Field(default_factory=list)
    """Keys of the episodic memories written as summaries."""
    by_owner: list[OwnerConsolidation] = Field(default_factory=list)
    """The same changes per owner, for the owners that had any, in the order examined."""
    owners: int = 0
    """How many owners were examined."""
    dry_run: bool = False

    def _owner(self, owner: Identity) -> OwnerConsolidation:
        """The :attr:`by_owner` entry of ``owner`` (added on its first change)."""
        scope = MemoryScope(owner.scope)
        if self.by_owner and (self.by_owner[-1].scope, self.by_owner[-1].scope_id) == (
            scope,
            owner.scope_id,
        ):
            return self.by_owner[-1]
        entry = OwnerConsolidation(scope=scope, scope_id=owner.scope_id)
        self.by_owner.append(entry)
        return entry

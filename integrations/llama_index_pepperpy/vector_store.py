"""``PepperpyVectorStore``: a LlamaIndex vector store over one owner's memories.

A node is a memory: its id is the key, its text is what both indexes hold, its metadata is
filterable (LlamaIndex's ``MetadataFilters``, translated into the core's filter language, whose
keys are validated and whose values are bind parameters), and the whole node — relationships,
``ref_doc_id``, metadata and all — round-trips through the memory's value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from pepperpy_pg_memory import (
    MemoryEntry,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.runner import BackgroundStorage

from .embedding import PepperpyEmbedding, as_store_embedder

__all__ = ["PepperpyVectorStore", "to_filter", "REF_DOC_FIELD"]

REF_DOC_FIELD = "ref_doc_id"
"""The metadata field holding a node's source document (``delete(ref_doc_id)`` uses it)."""
MMR_CANDIDATES = 4
"""An MMR query weighs this many times ``similarity_top_k`` nearest nodes."""

_MODES = {
    VectorStoreQueryMode.DEFAULT: MemoryIndex.SEMANTIC,
    VectorStoreQueryMode.TEXT_SEARCH: MemoryIndex.CONTEXTUAL,
    VectorStoreQueryMode.HYBRID: MemoryIndex.HYBRID,
    VectorStoreQueryMode.MMR: MemoryIndex.SEMANTIC,
}


def _field(item: MetadataFilter) -> dict[str, Any]:
    key, value, operator = item.key, item.value, item.operator
    simple = {
        FilterOperator.EQ: "$eq",
        FilterOperator.NE: "$ne",
        FilterOperator.GT: "$gt",
        FilterOperator.GTE: "$gte",
        FilterOperator.LT: "$lt",
        FilterOperator.LTE: "$lte",
        FilterOperator.IN: "$in",
        FilterOperator.NIN: "$nin",
        FilterOperator.CONTAINS: "$contains",
        FilterOperator.TEXT_MATCH: "$text",
        FilterOperator.TEXT_MATCH_INSENSITIVE: "$itext",
    }
    if operator in simple:
        return {key: {simple[operator]: value}}
    if operator in (FilterOperator.ANY, FilterOperator.ALL):
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError(f"{operator.value} for {key!r} takes a non-empty list")
        each = [{key: {"$contains": item}} for item in values]
        return {"$or" if operator == FilterOperator.ANY else "$and": each}
    if operator == FilterOperator.IS_EMPTY:
        return {key: {"$empty": True}}
    raise ValueError(f"unsupported filter operator {operator!r}")  # pragma: no cover


def to_filter(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` (nested, AND / OR / NOT) as a core metadata filter."""
    if filters is None or not filters.filters:
        return None
    parts = [
        to_filter(item) if isinstance(item, MetadataFilters) else _field(item)
        for item in filters.filters
    ]
    kept = [part for part in parts if part]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.NOT:
        # LlamaIndex's NOT negates the conjunction of its filters.
        return {"$not": {"$and": kept} if len(kept) > 1 else kept[0]}
    if len(kept) == 1:
        return kept[0]
    return {"$or" if condition == FilterCondition.OR else "$and": kept}


def _node(entry: MemoryEntry[Any]) -> BaseNode:
    """The node a memory holds; a memory written otherwise (the core API, LangChain) reads as
    a text node of its key, text and metadata."""
    value = entry.value if isinstance(entry.value, dict) else {}
    stored = value.get("node")
    if isinstance(stored, dict):
        return metadata_dict_to_node(
            {"_node_content": json.dumps(stored), "_node_type": value.get("type")}
        )
    text = entry.value if isinstance(entry.value, str) else entry.text
    return TextNode(id_=entry.key, text=text, metadata=dict(entry.metadata))


class PepperpyVectorStore(BasePydanticVectorStore):
    """LlamaIndex vector store backed by a pepperpy-pg-memory store, for one owner.

    ``stores_text``: LlamaIndex needs no docstore beside it. Query modes: DEFAULT (semantic),
    TEXT_SEARCH (contextual: BM25 with trigram fallback), HYBRID (the store's rank fusion)
    and MMR. Adding a node whose id is stored updates it (never a duplicate).

    Examples:
        >>> store = PepperpyVectorStore.create(scope="user", scope_id="ana")
        >>> index = VectorStoreIndex.from_documents(
        ...     documents, storage_context=StorageContext.from_defaults(vector_store=store)
        ... )
    """

    stores_text: bool = True
    flat_metadata: bool = False
    memory_type: MemoryType = MemoryType.LONG_TERM
    scope: MemoryScope = MemoryScope.GLOBAL
    scope_id: str | None = None

    _handle: BackgroundStorage[Any, Any] = PrivateAttr()

    def __init__(self, handle: BackgroundStorage[Any, Any], **fields: Any) -> None:
        super().__init__(**fields)
        self._handle = handle

    @classmethod
    def class_name(cls) -> str:
        return "PepperpyVectorStore"

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        config: PostgresConfig | None = None,
        *,
        embedder: Any = None,
        type: MemoryType | str = MemoryType.LONG_TERM,
        scope: MemoryScope | str = MemoryScope.GLOBAL,
        scope_id: str | None = None,
    ) -> PepperpyVectorStore:
        """A ready store on ``config`` (the embedded server by default). Nodes usually come
        with LlamaIndex's embeddings; ``embedder`` embeds those that do not, and text
        queries, so it must be the index's model: pass ``embedder=Settings.embed_model``
        (any LlamaIndex embedding model; the table takes its dimension), one of ours, or a
        LangChain ``Embeddings``. Default: all-MiniLM-L6-v2, 384 dimensions."""
        handle = BackgroundStorage.create(config, as_store_embedder(embedder))
        return cls(
            handle, memory_type=MemoryType(type), scope=MemoryScope(scope), scope_id=scope_id
        )

    @classmethod
    def from_storage(
        cls,
        storage: PostgresStorage[Any, Any],
        *,
        type: MemoryType | str = MemoryType.LONG_TERM,
        scope: MemoryScope | str = MemoryScope.GLOBAL,
        scope_id: str | None = None,
    ) -> PepperpyVectorStore:
        """A view over a store the caller already runs (and closes itself)."""
        return cls(
            BackgroundStorage.share(storage),
            memory_type=MemoryType(type),
            scope=MemoryScope(scope),
            scope_id=scope_id,
        )

    @property
    def client(self) -> PostgresStorage[Any, Any]:
        return self._handle.storage

    def embed_model(self) -> PepperpyEmbedding:
        """The store's embedder as a LlamaIndex embedding model (for ``VectorStoreIndex``):
        nodes and queries embedded by the model the store searches with."""
        return PepperpyEmbedding(self._handle.storage.embedder)

    def close(self) -> None:
        """Close the underlying store if this object created it."""
        self._handle.close()

    async def aclose(self) -> None:
        await self._handle.aclose()

    def _owner(self) -> dict[str, Any]:
        return {"scope": self.scope, "scope_id": self.scope_id}

    # --- writing --------------------------------------------------------------------------
    def _items(self, nodes: Sequence[BaseNode]) -> list[dict[str, Any]]:
        items = []
        for node in nodes:
            dumped = node.model_dump(mode="json")
            dumped["embedding"] = None  # the vector lives in its column, not twice
            metadata = dict(dumped.get("metadata") or {})
            if node.ref_doc_id is not None:
                metadata[REF_DOC_FIELD] = node.ref_doc_id
            item: dict[str, Any] = {
                "key": node.node_id,
                "value": {"node": dumped, "type": node.class_name()},
                "text": node.get_content(metadata_mode=MetadataMode.NONE) or node.node_id,
                "metadata": metadata,
                "type": self.memory_type,
                **self._owner(),
            }
            if node.embedding is not None:
                item["embedding"] = node.embedding
            items.append(item)
        return items

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        items = self._items(nodes)
        if items:
            self._handle.call(lambda s: s.store_many(items, dedupe=False))
        return [node.node_id for node in nodes]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        items = self._items(nodes)
        if items:
            await self._handle.acall(lambda s: s.store_many(items, dedupe=False))
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id`` (this owner's only)."""
        self._handle.call(lambda s: self._delete(s, None, {REF_DOC_FIELD: ref_doc_id}))

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await self._handle.acall(lambda s: self._delete(s, None, {REF_DOC_FIELD: ref_doc_id}))

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete the nodes with these ids and/or matching these filters."""
        spec = to_filter(filters)
        self._handle.call(lambda s: self._delete(s, node_ids, spec))

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        spec = to_filter(filters)
        await self._handle.acall(lambda s: self._delete(s, node_ids, spec))

    def clear(self) -> None:
        """Delete every node of this store's owner."""
        self._handle.call(lambda s: self._delete(s, None, None))

    async def aclear(self) -> None:
        await self._handle.acall(lambda s: self._delete(s, None, None))

    async def _delete(
        self,
        storage: PostgresStorage[Any, Any],
        node_ids: list[str] | None,
        spec: dict[str, Any] | None,
    ) -> int:
        if node_ids is not None and not node_ids:
            return 0
        return await storage.delete_many(keys=node_ids, filter=spec, **self._owner())

    # --- reading --------------------------------------------------------------------------
    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        spec = to_filter(filters)
        return self._handle.call(lambda s: self._get(s, node_ids, spec))

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        spec = to_filter(filters)
        return await self._handle.acall(lambda s: self._get(s, node_ids, spec))

    async def _get(
        self,
        storage: PostgresStorage[Any, Any],
        node_ids: list[str] | None,
        spec: dict[str, Any] | None,
    ) -> list[BaseNode]:
        """The nodes with these ids (in that order) and/or matching ``spec``."""
        found = [entry async for entry in storage.scan(keys=node_ids, filter=spec, **self._owner())]
        if node_ids is not None:
            by_key = {entry.key: entry for entry in found}
            found = [by_key[key] for key in dict.fromkeys(node_ids) if key in by_key]
        return [_node(entry) for entry in found]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return self._handle.call(lambda s: self._query(s, query))

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await self._handle.acall(lambda s: self._query(s, query))

    async def _query(
        self, storage: PostgresStorage[Any, Any], query: VectorStoreQuery
    ) -> VectorStoreQueryResult:
        if query.mode not in _MODES:
            raise ValueError(
                f"query mode {query.mode.value!r} is not supported; use one of "
                f"{sorted(mode.value for mode in _MODES)}"
            )
        index = _MODES[query.mode]
        limit = query.similarity_top_k
        if query.mode == VectorStoreQueryMode.TEXT_SEARCH:
            limit = query.sparse_top_k or limit
        elif query.mode == VectorStoreQueryMode.HYBRID:
            limit = query.hybrid_top_k or limit
        mmr = query.mode == VectorStoreQueryMode.MMR
        spec = to_filter(query.filters)
        if query.doc_ids:
            doc_filter = {REF_DOC_FIELD: {"$in": list(query.doc_ids)}}
            spec = doc_filter if spec is None else {"$and": [spec, doc_filter]}
        text = query.query_str if index is not MemoryIndex.SEMANTIC else None
        if index is MemoryIndex.SEMANTIC and query.query_embedding is None:
            text = query.query_str
        if index is not MemoryIndex.SEMANTIC and not text:
            raise ValueError(f"a {query.mode.value} query needs query_str")
        try:
            memory_query = MemoryQuery(
                query=text,
                embedding=query.query_embedding if index is not MemoryIndex.CONTEXTUAL else None,
                index_type=index,
                limit=max(limit * MMR_CANDIDATES, 20) if mmr else limit,
                filter=spec,
                keys=list(query.node_ids) if query.node_ids else None,
                include_embedding=mmr,
                **self._owner(),
            )
        except MemoryValidationError as exc:
            raise ValueError(str(exc)) from exc
        hits = await storage.search(memory_query)
        if mmr:
            hits = self._mmr(hits, query, limit)
        return VectorStoreQueryResult(
            nodes=[_node(hit.entry) for hit in hits],
            similarities=[min(1.0, max(0.0, float(hit.score))) for hit in hits],
            ids=[hit.entry.key for hit in hits],
        )

    @staticmethod
    def _mmr(hits: list[Any], query: VectorStoreQuery, limit: int) -> list[Any]:
        """The candidates re-ranked by maximal marginal relevance (LlamaIndex's own)."""
        with_vectors = [hit for hit in hits if hit.entry.embedding is not None]
        if not with_vectors or query.query_embedding is None:
            return hits[:limit]
        scores, ids = get_top_k_mmr_embeddings(
            list(query.query_embedding),
            [hit.entry.embedding for hit in with_vectors],
            similarity_top_k=limit,
            embedding_ids=list(range(len(with_vectors))),
            mmr_threshold=query.mmr_threshold,
        )
        chosen = []
        for score, position in zip(scores, ids, strict=True):
            hit = with_vectors[int(position)]
            chosen.append(hit.model_copy(update={"score": float(score)}))
        return chosen

"""``PepperpyVectorStore``: a LangChain VectorStore over one owner's memories."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from pepperpy_pg_memory import (
    MemoryEntry,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemorySearchResult,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
    Ranking,
)
from pepperpy_pg_memory.runner import BackgroundStorage
from pepperpy_pg_memory.types import DOCUMENT_FIELD, MANAGED_FIELD

from .embeddings import EmbedderEmbeddings

__all__ = ["PepperpyVectorStore", "PepperpyVectorStoreRetriever"]


DOCUMENTS = "langchain-vectorstore"
"""The ``document_of`` of the documents this store writes: an id always names its document
(never folded into another memory, never merged by consolidation), and it counts toward the
owner's quota like the owner's own memories."""


ADOPTED = "marked as a LangChain vector-store document (adopt_documents)"
"""The reason the history records for a memory :meth:`PepperpyVectorStore.adopt_documents`
marked."""


def document_of(entry: MemoryEntry[Any], **extra: Any) -> Document:
    """A memory as a LangChain Document: its value if a string (else its indexed text), its
    metadata (without the store's own marker, with ``extra`` fields added), its key as the id."""
    content = entry.value if isinstance(entry.value, str) else entry.text
    metadata = {name: value for name, value in entry.metadata.items() if name != DOCUMENT_FIELD}
    return Document(page_content=content, metadata={**metadata, **extra}, id=entry.key)


def _relevance(distance: float) -> float:
    # Cosine similarity, clipped to [0, 1]: "opposite" and "unrelated" both mean irrelevant.
    return min(1.0, max(0.0, 1.0 - distance))


class PepperpyVectorStore(VectorStore):
    """LangChain ``VectorStore`` backed by a pepperpy-pg-memory store.

    Documents become memories of one owner — ``type``, ``scope`` and ``scope_id`` are set when
    the store is made — and every search and delete sees only that owner's memories.
    ``Document.id`` is the memory key; metadata round-trips exactly and can be filtered with
    the core filter language (``{"topic": "billing", "priority": {"$gte": 2}}``).

    Sync and async methods both work from any thread and any event loop, a Jupyter cell
    included: the store runs on an event loop of its own.

    Examples:
        >>> store = PepperpyVectorStore.create(PostgresConfig(data_dir="/tmp/memories"))
        >>> ids = store.add_texts(["Ana likes oat milk"], metadatas=[{"user": "ana"}])
        >>> store.similarity_search("what milk does Ana drink?", k=1)[0].page_content
        'Ana likes oat milk'
    """

    def __init__(
        self,
        handle: BackgroundStorage[Any, Any],
        *,
        embedding: Embeddings | None = None,
        type: MemoryType | str = MemoryType.LONG_TERM,
        scope: MemoryScope | str = MemoryScope.GLOBAL,
        scope_id: str | None = None,
    ) -> None:
        self._handle = handle
        self._embedding = embedding
        self.memory_type = MemoryType(type)
        self.scope = MemoryScope(scope)
        self.scope_id = scope_id

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        config: PostgresConfig | None = None,
        embedding: Embeddings | None = None,
        *,
        type: MemoryType | str = MemoryType.LONG_TERM,
        scope: MemoryScope | str = MemoryScope.GLOBAL,
        scope_id: str | None = None,
    ) -> PepperpyVectorStore:
        """A ready store on ``config`` (embedded server by default); ``embedding=None`` uses
        the default all-MiniLM-L6-v2 model, a LangChain ``Embeddings`` is used as given."""
        handle = BackgroundStorage.create(config, embedding)
        return cls(handle, embedding=embedding, type=type, scope=scope, scope_id=scope_id)

    @classmethod
    def from_storage(
        cls,
        storage: PostgresStorage[Any, Any],
        *,
        type: MemoryType | str = MemoryType.LONG_TERM,
        scope: MemoryScope | str = MemoryScope.GLOBAL,
        scope_id: str | None = None,
    ) -> PepperpyVectorStore:
        """A view over a store the caller already runs (and keeps closing itself)."""
        return cls(BackgroundStorage.share(storage), type=type, scope=scope, scope_id=scope_id)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        config: PostgresConfig | None = None,
        **kwargs: Any,
    ) -> PepperpyVectorStore:
        store = cls.create(config, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        config: PostgresConfig | None = None,
        **kwargs: Any,
    ) -> PepperpyVectorStore:
        handle = await BackgroundStorage.acreate(config, embedding)
        store = cls(handle, embedding=embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store

    def close(self) -> None:
        """Close the underlying store if this object created it."""
        self._handle.close()

    async def aclose(self) -> None:
        await self._handle.aclose()

    @property
    def storage(self) -> PostgresStorage[Any, Any]:
        return self._handle.storage

    @property
    def embeddings(self) -> Embeddings:
        if self._embedding is not None:
            return self._embedding
        return EmbedderEmbeddings(self._handle.storage.embedder)

    def _owner(self) -> dict[str, Any]:
        return {"scope": self.scope, "scope_id": self.scope_id}

    # --- writing --------------------------------------------------------------------------
    def _items(
        self,
        texts: Iterable[str],
        metadatas: Sequence[dict[str, Any] | None] | None,
        ids: Sequence[str | None] | None,
        embeddings: Sequence[Sequence[float]] | None = None,
    ) -> tuple[list[dict[str, Any]], list[str]]:
        texts = list(texts)
        keys = [
            key if key is not None else str(uuid.uuid4())
            for key in (list(ids) if ids is not None else [None] * len(texts))
        ]
        if len(keys) != len(texts) or (metadatas is not None and len(metadatas) != len(texts)):
            raise ValueError("texts, metadatas and ids must have the same length")
        items = []
        for position, (key, text) in enumerate(zip(keys, texts, strict=True)):
            item: dict[str, Any] = {
                "key": key,
                "value": text,
                "metadata": dict(metadatas[position] or {}) if metadatas else {},
                "type": self.memory_type,
                "document_of": DOCUMENTS,
                **self._owner(),
            }
            if embeddings is not None:
                item["embedding"] = embeddings[position]
            items.append(item)
        return items, keys

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        items, keys = self._items(texts, metadatas, ids)
        self._handle.call(lambda s: s.store_many(items, dedupe=False))
        return keys

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        items, keys = self._items(texts, metadatas, ids)
        await self._handle.acall(lambda s: s.store_many(items, dedupe=False))
        return keys

    def add_embeddings(
        self,
        texts: Iterable[str] | None = None,
        embeddings: list[list[float]] | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        ids: list[str] | None = None,
    ) -> list[str]:
        """Add texts with vectors computed elsewhere (nothing is embedded).

        ``texts`` may be left out (mem0's LangChain provider does): each vector is then
        stored with an empty text, found by meaning and by its metadata but not by words.
        """
        texts, vectors = _texts_for(texts, embeddings)
        items, keys = self._items(texts, metadatas, ids, vectors)
        self._handle.call(lambda s: s.store_many(items, dedupe=False))
        return keys

    async def aadd_embeddings(
        self,
        texts: Iterable[str] | None = None,
        embeddings: list[list[float]] | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        ids: list[str] | None = None,
    ) -> list[str]:
        texts, vectors = _texts_for(texts, embeddings)
        items, keys = self._items(texts, metadatas, ids, vectors)
        await self._handle.acall(lambda s: s.store_many(items, dedupe=False))
        return keys

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete these ids; with ``ids=None``, every document of this store's owner."""
        self._handle.call(lambda s: self._delete(s, ids))
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        await self._handle.acall(lambda s: self._delete(s, ids))
        return True

    async def _delete(self, storage: PostgresStorage[Any, Any], ids: list[str] | None) -> int:
        if ids is not None and not ids:
            return 0
        return await storage.delete_many(keys=ids, **self._owner())

    def adopt_documents(self, ids: Sequence[str]) -> list[str]:
        """Mark the memories of this store's owner under ``ids`` as this store's documents,
        as every document it writes is: deduplication then never folds a memory into one,
        and consolidation never merges one. For documents written before 0.2, which carried
        no mark and cannot be told from the owner's other memories by anything they hold.
        Each is written again as it is (a version, with this reason); ids not found, already
        marked or another adapter's records are left. Returns the ids marked."""
        return self._handle.call(lambda s: self._adopt(s, ids))

    async def aadopt_documents(self, ids: Sequence[str]) -> list[str]:
        return await self._handle.acall(lambda s: self._adopt(s, ids))

    async def _adopt(self, storage: PostgresStorage[Any, Any], ids: Sequence[str]) -> list[str]:
        found = await storage.retrieve_many(list(dict.fromkeys(ids)), **self._owner())
        items: list[dict[str, Any]] = []
        for key, entry in found.items():
            if DOCUMENT_FIELD in entry.metadata or MANAGED_FIELD in entry.metadata:
                continue
            items.append(
                {
                    "key": key,
                    "value": entry.value,
                    "text": entry.text,  # the same text: its vector is kept, not embedded
                    "metadata": entry.metadata,
                    "type": entry.type,
                    "indices": entry.indices,
                    "importance": entry.importance,
                    "ttl": "never" if entry.expires_at is None else None,
                    "expires_at": entry.expires_at,
                    "document_of": DOCUMENTS,
                    **self._owner(),
                }
            )
        if items:
            await storage.store_many(items, dedupe=False, reason=ADOPTED)
        return [item["key"] for item in items]

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        found = self._handle.call(lambda s: s.retrieve_many(ids, **self._owner()))
        return [document_of(found[key]) for key in dict.fromkeys(ids) if key in found]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        found = await self._handle.acall(lambda s: s.retrieve_many(ids, **self._owner()))
        return [document_of(found[key]) for key in dict.fromkeys(ids) if key in found]

    # --- searching ------------------------------------------------------------------------
    def _query(self, *, ranking: Ranking | None = None, **fields: Any) -> MemoryQuery:
        # ``ranking`` comes through LangChain's search kwargs, e.g.
        # as_retriever(search_kwargs={"ranking": Ranking(recency=0.5)}).
        return MemoryQuery(scope=self.scope, scope_id=self.scope_id, ranking=ranking, **fields)

    def _with_distance(
        self, results: list[MemorySearchResult[Any]]
    ) -> list[tuple[Document, float]]:
        # LangChain's *_with_score returns the distance (lower is closer), as PGVector does:
        # the table's own — cosine distance, Euclidean distance, or the negative inner
        # product (pgvector's <#>); with a ranking on a cosine table, one minus the ranked
        # score.
        if self._handle.storage.layout.distance == "cosine":
            return [(document_of(r.entry), 1.0 - r.score) for r in results]
        return [(document_of(r.entry), -r.score) for r in results]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        distance = self._handle.storage.layout.distance
        if distance == "l2":
            return self._euclidean_relevance_score_fn
        if distance == "inner_product":
            return self._max_inner_product_relevance_score_fn
        return _relevance

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        q = self._query(query=query, limit=k, filter=filter, ranking=kwargs.get("ranking"))
        return self._with_distance(self._handle.call(lambda s: s.search(q)))

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        q = self._query(query=query, limit=k, filter=filter, ranking=kwargs.get("ranking"))
        return self._with_distance(await self._handle.acall(lambda s: s.search(q)))

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        scored = await self.asimilarity_search_with_score(query, k, filter, **kwargs)
        return [doc for doc, _ in scored]

    def similarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Nearest documents to a vector, with cosine distance (lower is closer), as
        :meth:`similarity_search_with_score` gives for a query."""
        q = self._query(embedding=list(embedding), limit=k, filter=filter)
        return self._with_distance(self._handle.call(lambda s: s.search(q)))

    async def asimilarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        q = self._query(embedding=list(embedding), limit=k, filter=filter)
        return self._with_distance(await self._handle.acall(lambda s: s.search(q)))

    def similarity_search_by_vector_with_relevance_scores(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Nearest documents to a vector, with relevance in [0, 1] (higher is closer) — what
        clients such as mem0's LangChain provider threshold on."""
        relevance = self._select_relevance_score_fn()
        return [
            (document, min(1.0, max(0.0, relevance(distance))))
            for document, distance in self.similarity_search_with_score_by_vector(
                embedding, k, filter
            )
        ]

    async def asimilarity_search_by_vector_with_relevance_scores(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        relevance = self._select_relevance_score_fn()
        return [
            (document, min(1.0, max(0.0, relevance(distance))))
            for document, distance in await self.asimilarity_search_with_score_by_vector(
                embedding, k, filter
            )
        ]

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        q = self._query(embedding=list(embedding), limit=k, filter=filter)
        return [document_of(r.entry) for r in self._handle.call(lambda s: s.search(q))]

    async def asimilarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        q = self._query(embedding=list(embedding), limit=k, filter=filter)
        return [document_of(r.entry) for r in await self._handle.acall(lambda s: s.search(q))]

    def hybrid_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """Semantic and full-text results fused by rank, each side weighted by how sure it is
        (in one SQL statement)."""
        q = self._query(query=query, limit=k, filter=filter, index_type=MemoryIndex.HYBRID)
        return [document_of(r.entry) for r in self._handle.call(lambda s: s.search(q))]

    async def ahybrid_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        q = self._query(query=query, limit=k, filter=filter, index_type=MemoryIndex.HYBRID)
        return [document_of(r.entry) for r in await self._handle.acall(lambda s: s.search(q))]

    async def _mmr(
        self,
        storage: PostgresStorage[Any, Any],
        query: str | None,
        embedding: list[float] | None,
        k: int,
        fetch_k: int,
        lambda_mult: float,
        filter: dict[str, Any] | None,
    ) -> list[Document]:
        if embedding is None:
            assert query is not None
            # The store's own query path: cached, and checked against the table's dimension.
            embedding = (await storage.query_vector(query)).tolist()
        q = self._query(embedding=embedding, limit=fetch_k, filter=filter, include_embedding=True)
        results = await storage.search(q)
        if not results:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32),
            [r.entry.embedding or [] for r in results],
            lambda_mult=lambda_mult,
            k=k,
        )
        return [document_of(results[i].entry) for i in chosen]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self._handle.call(
            lambda s: self._mmr(s, query, None, k, fetch_k, lambda_mult, filter)
        )

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return await self._handle.acall(
            lambda s: self._mmr(s, query, None, k, fetch_k, lambda_mult, filter)
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self._handle.call(
            lambda s: self._mmr(s, None, list(embedding), k, fetch_k, lambda_mult, filter)
        )

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return await self._handle.acall(
            lambda s: self._mmr(s, None, list(embedding), k, fetch_k, lambda_mult, filter)
        )

    def search(self, query: str, search_type: str, **kwargs: Any) -> list[Document]:
        if search_type == "hybrid":
            return self.hybrid_search(query, **kwargs)
        return super().search(query, search_type, **kwargs)

    async def asearch(self, query: str, search_type: str, **kwargs: Any) -> list[Document]:
        if search_type == "hybrid":
            return await self.ahybrid_search(query, **kwargs)
        return await super().asearch(query, search_type, **kwargs)

    def as_retriever(self, **kwargs: Any) -> PepperpyVectorStoreRetriever:
        """A retriever with ``search_type`` "similarity", "mmr",
        "similarity_score_threshold" or "hybrid"."""
        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return PepperpyVectorStoreRetriever(vectorstore=self, tags=tags, **kwargs)


def _texts_for(
    texts: Iterable[str] | None, embeddings: list[list[float]] | None
) -> tuple[list[str], list[list[float]]]:
    if embeddings is None:
        raise TypeError("add_embeddings needs embeddings (use add_texts to have them computed)")
    listed = [""] * len(embeddings) if texts is None else list(texts)
    return listed, embeddings


class PepperpyVectorStoreRetriever(VectorStoreRetriever):
    """LangChain's vector store retriever, plus ``search_type="hybrid"``."""

    allowed_search_types: ClassVar[tuple[str, ...]] = (
        "similarity",
        "similarity_score_threshold",
        "mmr",
        "hybrid",
    )

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        if self.search_type == "hybrid":
            store = self.vectorstore
            assert isinstance(store, PepperpyVectorStore)
            return store.hybrid_search(query, **{**self.search_kwargs, **kwargs})
        return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        if self.search_type == "hybrid":
            store = self.vectorstore
            assert isinstance(store, PepperpyVectorStore)
            return await store.ahybrid_search(query, **{**self.search_kwargs, **kwargs})
        return await super()._aget_relevant_documents(query, run_manager=run_manager, **kwargs)

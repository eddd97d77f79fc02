"""``PepperpyMemoryRetriever``: an agent's long-term recall as a LangChain retriever."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from pepperpy_pg_memory import (
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemorySearchResult,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.runner import BackgroundStorage

from .vectorstore import document_of

__all__ = ["PepperpyMemoryRetriever"]


class PepperpyMemoryRetriever(BaseRetriever):
    """Recall of one user's (or agent's) memories: semantic, contextual or hybrid.

    Each Document carries the memory's metadata plus ``key``, ``type``, ``score`` and
    ``created_at``. Usable as an agent tool through ``create_retriever_tool``.

    Examples:
        >>> retriever = PepperpyMemoryRetriever.create(scope=MemoryScope.USER, scope_id="ana")
        >>> retriever.invoke("what does Ana drink?")  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    handle: Any = Field(exclude=True)
    scope: MemoryScope = MemoryScope.USER
    scope_id: str | None = None
    index_type: MemoryIndex = MemoryIndex.HYBRID
    k: int = 4
    min_score: float | None = None
    types: frozenset[MemoryType] | None = None
    filter: dict[str, Any] | None = None

    @classmethod
    def create(
        cls, config: PostgresConfig | None = None, embedder: Any = None, **fields: Any
    ) -> PepperpyMemoryRetriever:
        """A retriever over a store opened on ``config`` (embedded by default)."""
        return cls(handle=BackgroundStorage.create(config, embedder), **fields)

    @classmethod
    def from_storage(
        cls, storage: PostgresStorage[Any, Any], **fields: Any
    ) -> PepperpyMemoryRetriever:
        return cls(handle=BackgroundStorage.share(storage), **fields)

    def _query(self, query: str) -> MemoryQuery:
        return MemoryQuery(
            query=query,
            index_type=self.index_type,
            limit=self.k,
            min_score=self.min_score,
            scope=self.scope,
            scope_id=self.scope_id,
            types=self.types,
            filter=self.filter,
        )

    @staticmethod
    def _documents(results: list[MemorySearchResult[Any]]) -> list[Document]:
        return [
            document_of(
                r.entry,
                key=r.entry.key,
                type=r.entry.type.value,
                score=r.score,
                created_at=r.entry.created_at.isoformat(),
            )
            for r in results
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        q = self._query(query)
        return self._documents(self.handle.call(lambda s: s.search(q)))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        q = self._query(query)
        return self._documents(await self.handle.acall(lambda s: s.search(q)))

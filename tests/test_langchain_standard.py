"""LangChain's own standard VectorStore suite (langchain-tests), sync and async, unmodified,
against PepperpyVectorStore on the embedded database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

from langchain_pepperpy import PepperpyVectorStore


class TestPepperpyVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, make_config: Any) -> Iterator[VectorStore]:  # type: ignore[override]
        store = PepperpyVectorStore.create(make_config(), self.get_embeddings())
        try:
            yield store
        finally:
            store.close()

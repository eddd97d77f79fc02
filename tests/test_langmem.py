"""LangMem's memory tools driving PepperpyStore inside a LangGraph agent.

A scripted chat model stands in for the LLM: on each user turn it calls the tool the test
queued, then answers with what the tool returned. Everything else is real — LangMem's
``manage_memory`` and ``search_memory`` tools, LangChain's agent (a LangGraph graph), our store
on PostgreSQL, and the default all-MiniLM-L6-v2 embedder (so search finds paraphrases).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from langgraph_pepperpy import PepperpyStore
from langgraph_pepperpy.store import memory_key
from pepperpy_pg_memory.runner import BackgroundStorage

pytestmark = pytest.mark.model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # langmem imports deprecated langchain paths
    from langmem import create_manage_memory_tool, create_search_memory_tool


class ScriptedToolModel(BaseChatModel):
    """A chat model whose tool calls the test decides: ``plan`` holds, per user turn, the
    (tool name, arguments) to call; after the tool ran it answers with the tool's output."""

    plan: list[tuple[str, dict[str, Any]]] = []

    @property
    def _llm_type(self) -> str:
        return "scripted-tool-model"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedToolModel:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"tool said: {last.content}")
        else:
            name, args = self.plan.pop(0)
            reply = AIMessage(
                content="", tool_calls=[{"name": name, "args": args, "id": f"call-{name}"}]
            )
        return ChatResult(generations=[ChatGeneration(message=reply)])


@pytest.fixture
def store(make_config: Any, minilm: Any) -> Iterator[PepperpyStore]:
    memory_store = PepperpyStore.create(make_config(), minilm)
    yield memory_store
    memory_store.close()


def _turn(agent: Any, model: ScriptedToolModel, user: str, tool: str, **args: Any) -> str:
    model.plan.append((tool, args))
    state = agent.invoke(
        {"messages": [HumanMessage(content="(the user speaks)")]},
        config={"configurable": {"langgraph_user_id": user}},
    )
    tool_output = [m for m in state["messages"] if isinstance(m, ToolMessage)][-1]
    assert tool_output.status != "error", tool_output.content
    return str(tool_output.content)


def _memories(output: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(output)
    return found


def test_langmem_tools_create_search_update_delete_per_user(store: PepperpyStore) -> None:
    namespace = ("users", "{langgraph_user_id}", "memories")
    model = ScriptedToolModel()
    agent = create_agent(
        model,
        tools=[create_manage_memory_tool(namespace), create_search_memory_tool(namespace)],
        store=store,
    )
    created = _turn(agent, model, "ana", "manage_memory", content="Ana takes oat milk in coffee")
    memory_id = created.rsplit(" ", 1)[-1]
    assert created.startswith("created memory")
    _turn(agent, model, "ana", "manage_memory", content="Ana is training for a marathon")
    _turn(agent, model, "bruno", "manage_memory", content="Bruno drinks his coffee black")

    # Search by meaning, within the user's own memories only.
    found = _memories(_turn(agent, model, "ana", "search_memory", query="how does she take it?"))
    assert found[0]["value"]["content"] == "Ana takes oat milk in coffee"
    assert all(m["namespace"] == ["users", "ana", "memories"] for m in found)
    assert found[0]["score"] is not None
    drinks = _memories(_turn(agent, model, "bruno", "search_memory", query="morning drink"))
    assert [m["value"]["content"] for m in drinks] == ["Bruno drinks his coffee black"]

    # The items land where LangGraph's namespaces say: ana's memories are USER memories.
    item = store.get(("users", "ana", "memories"), memory_id)
    assert item is not None and item.value == {"content": "Ana takes oat milk in coffee"}
    key = memory_key(("users", "ana", "memories"), memory_id)
    owned = BackgroundStorage.share(store.storage).call(
        lambda s: s.retrieve_by_owner([("user", "ana", key)])
    )
    assert [identity.scope_id for identity in owned] == ["ana"]

    updated = _turn(
        agent,
        model,
        "ana",
        "manage_memory",
        action="update",
        id=memory_id,
        content="Ana switched to soy milk",
    )
    assert updated == f"updated memory {memory_id}"
    found = _memories(_turn(agent, model, "ana", "search_memory", query="what milk now?"))
    assert found[0]["key"] == memory_id
    assert found[0]["value"]["content"] == "Ana switched to soy milk"

    # Bruno cannot reach Ana's memory by id: his namespace is his own owner.
    _turn(agent, model, "bruno", "manage_memory", action="delete", id=memory_id)
    assert store.get(("users", "ana", "memories"), memory_id) is not None
    _turn(agent, model, "ana", "manage_memory", action="delete", id=memory_id)
    assert store.get(("users", "ana", "memories"), memory_id) is None
    left = _memories(_turn(agent, model, "ana", "search_memory", query="coffee"))
    assert [m["value"]["content"] for m in left] == ["Ana is training for a marathon"]

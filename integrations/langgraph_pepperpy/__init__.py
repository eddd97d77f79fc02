"""LangGraph adapter for pepperpy-pg-memory: ``PepperpyStore``, a ``BaseStore`` for agents'
long-term memory. Install with ``pip install 'pepperpy-pg-memory[langgraph]'``."""

try:
    import langgraph.store.base  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "langgraph_pepperpy needs LangGraph: pip install 'pepperpy-pg-memory[langgraph]'"
    ) from exc

from .store import PepperpyStore, namespace_scope

__all__ = ["PepperpyStore", "namespace_scope"]

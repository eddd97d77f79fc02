"""The memory browser (``pepperpy-memory ui``): see, search and correct what an agent
remembers, in a local web page. Install with ``pip install 'pepperpy-pg-memory[ui]'``."""

try:
    import jinja2  # noqa: F401
    import python_multipart  # noqa: F401  (starlette's form parser)
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"pepperpy_browser needs the ui extra ({exc.name}): pip install 'pepperpy-pg-memory[ui]'"
    ) from exc

from .app import create_app

__all__ = ["create_app"]

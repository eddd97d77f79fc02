"""The memory browser: a small server-rendered web app over one store.

Memory text is untrusted (users and models write it): templates escape everything, the
Content-Security-Policy allows no inline script and no other origin, and every change is a POST
carrying a CSRF token. Requests must name this server in ``Host`` (DNS rebinding) and, when a
browser says where a request comes from (``Origin``), come from it. With a token, every request
carries it: once as ``?token=`` (kept in a same-site, HTTP-only cookie) or as a bearer token.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from pepperpy_pg_memory import (
    MemoryEntry,
    MemoryError,
    MemoryIndex,
    MemoryNotFoundError,
    MemoryQuery,
    MemoryScope,
    MemoryType,
    PostgresConfig,
    PostgresStorage,
)
from pepperpy_pg_memory.values import UNSEEN

__all__ = ["create_app", "PAGE_SIZE", "TOKEN_COOKIE"]

PAGE_SIZE = 25
TOKEN_COOKIE = "pepperpy_browser_token"
MODES = {
    "hybrid": MemoryIndex.HYBRID,
    "semantic": MemoryIndex.SEMANTIC,
    "contextual": MemoryIndex.CONTEXTUAL,
}
_HERE = Path(__file__).parent
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def owner_label(scope: MemoryScope | str, scope_id: str | None) -> str:
    value = scope.value if isinstance(scope, MemoryScope) else scope
    return value if not scope_id else f"{value}:{scope_id}"


def _owner(label: str) -> dict[str, Any]:
    """``user:ana`` / ``global`` as a scope and scope id (empty: every owner)."""
    if not label:
        return {}
    scope, _, scope_id = label.partition(":")
    try:
        return {"scope": MemoryScope(scope), "scope_id": scope_id or None}
    except ValueError:
        raise _BadRequest(f"unknown owner {label!r}") from None


class _BadRequest(Exception):
    pass


class _Guard:
    """Host and Origin checks, and the token when one is set (pure ASGI: streams pass)."""

    def __init__(self, app: ASGIApp, hosts: set[str], token: str | None) -> None:
        self.app, self.hosts, self.token = app, hosts, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if host not in self.hosts:
            await PlainTextResponse("unknown Host", status_code=421)(scope, receive, send)
            return
        if origin is not None and origin not in {f"http://{h}" for h in self.hosts}:
            await PlainTextResponse("cross-origin request", status_code=403)(scope, receive, send)
            return
        if self.token is not None:
            given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
            bearer = request.headers.get("authorization", "")
            if bearer.startswith("Bearer "):
                given = bearer[len("Bearer ") :]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                await PlainTextResponse("a token is required", status_code=401)(
                    scope, receive, send
                )
                return
            if request.query_params.get("token"):
                # Keep it in a cookie and drop it from the address bar.
                target = request.url.remove_query_params("token")
                response = RedirectResponse(str(target), status_code=303)
                response.set_cookie(
                    TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    storage: PostgresStorage[Any, Any],
    *,
    hosts: set[str],
    token: str | None = None,
) -> Starlette:
    """The browser over ``storage`` (started, on the loop the app runs on), answering to the
    ``Host`` names in ``hosts`` (``host:port``)."""
    templates = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(["html"], default=True),
    )
    # Metadata as readable JSON text (tojson would show <, > and & as \u escapes); the
    # template escapes it like any other text.
    templates.filters["as_json"] = lambda value: json.dumps(
        value, ensure_ascii=False, sort_keys=True
    )
    # Names shown with their invisible characters spelled out: "ana" and "a\u200bna" are two
    # owners and must not look like one.
    templates.filters["visible"] = _visible
    csrf = secrets.token_urlsafe(32)
    showing = what_it_shows(storage.config)

    def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        page = templates.get_template(name).render(
            csrf=csrf,
            showing=showing,
            owner_label=owner_label,
            types=[t.value for t in MemoryType],
            modes=list(MODES),
            **context,
        )
        return HTMLResponse(page, status_code=status, headers=_security_headers())

    async def checked_form(request: Request) -> FormData:
        form = await request.form()
        if not hmac.compare_digest(str(form.get("csrf", "")), csrf):
            raise _BadRequest("the form is stale or forged (CSRF token)")
        return form

    async def index(request: Request) -> Response:
        params = request.query_params
        owner_text = params.get("owner", "")
        memory_type = params.get("type", "")
        query = params.get("q", "").strip()
        mode = params.get("mode", "hybrid")
        owner = _owner(owner_text)
        if memory_type and memory_type not in {t.value for t in MemoryType}:
            raise _BadRequest(f"unknown type {memory_type!r}")
        types = memory_type or None
        results: list[tuple[MemoryEntry[Any], float | None]]
        next_page = None
        weak, show_all = 0, None
        if query:
            if mode not in MODES:
                raise _BadRequest(f"unknown mode {mode!r}")
            hits = await storage.search(
                MemoryQuery(query=query, index_type=MODES[mode], limit=50, types=types, **owner)
            )
            # A score of 0 or less says "unrelated" (cosine): shown only when asked.
            every = bool(params.get("all"))
            results = [(hit.entry, hit.score) for hit in hits if every or hit.score > 0]
            weak = len(hits) - len(results)
            if weak:
                show_all = "?" + urlencode({**dict(params.items()), "all": "1"})
        else:
            entries = await storage.list(
                types=types,
                limit=PAGE_SIZE + 1,
                order_by="created_at",
                descending=True,
                after=_cursor(params),
                **owner,
            )
            if len(entries) > PAGE_SIZE:
                entries = entries[:PAGE_SIZE]
                last = entries[-1]
                next_page = "?" + urlencode(
                    {
                        "owner": owner_text,
                        "type": memory_type,
                        "after_created": last.created_at.isoformat(),
                        "after_key": last.key,
                        "after_scope": last.scope.value,
                        "after_scope_id": last.scope_id,
                    }
                )
            results = [(entry, None) for entry in entries]
        stats = await storage.stats()
        owners = sorted(stats["by_owner"])
        if owner_text and owner_text not in owners:
            owners.append(owner_text)
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return render(
            "index.html",
            here=here,
            results=results,
            query=query,
            mode=mode,
            owner=owner_text,
            owners=owners,
            memory_type=memory_type,
            next_page=next_page,
            weak=weak,
            show_all=show_all,
            deleted=_deleted(params),
            stats=stats,
            index_bytes=sum(stats["index_bytes"].values()),
        )

    async def history(request: Request) -> Response:
        params = request.query_params
        key = params.get("key", "")
        owner = _owner(params.get("owner", ""))
        versions = await storage.history(key, **owner)
        if not versions:
            raise MemoryNotFoundError(key)
        current = None  # a memory gone has nothing to edit
        with contextlib.suppress(MemoryNotFoundError):
            current = await storage.retrieve(key, **owner)
        return render(
            "history.html",
            key=key,
            owner=params.get("owner", ""),
            versions=versions,
            current=current,
        )

    async def deleted(request: Request) -> Response:
        owner_text = request.query_params.get("owner", "")
        gone = await storage.deleted(limit=PAGE_SIZE * 4, **_owner(owner_text))
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return render("deleted.html", gone=gone, owner=owner_text, here=here)

    async def delete(request: Request) -> Response:
        form = await checked_form(request)
        label, key = str(form.get("owner", "")), str(form.get("key", ""))
        owner = _owner(label)
        version = (await storage.retrieve(key, **owner)).version
        await storage.delete(key, actor="memory browser", **owner)
        # Back to the page the row was on, saying what went and how to bring it back.
        done = {"deleted": key, "deleted_owner": label, "deleted_version": str(version)}
        return RedirectResponse(_with_query(_local(form.get("back")), done), status_code=303)

    async def edit(request: Request) -> Response:
        form = await checked_form(request)
        label, key = str(form.get("owner", "")), str(form.get("key", ""))
        owner = _owner(label)
        entry = await storage.retrieve(key, **owner)
        try:
            value = json.loads(str(form.get("value", "")))
            metadata = json.loads(str(form.get("metadata", "") or "{}"))
        except json.JSONDecodeError as exc:
            raise _BadRequest(f"value and metadata are JSON: {exc}") from None
        expires = str(form.get("expires", "")).strip()
        try:
            expires_at = datetime.fromisoformat(expires) if expires else None
        except ValueError:
            raise _BadRequest("expires is a date and time (YYYY-MM-DD HH:MM) or empty") from None
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.astimezone()  # as the browser's user reads the page
        # A new version of the same memory: what the form does not show stays as it is
        # (its indices and importance; its indexed text while the value is unchanged).
        await storage.store(
            key,
            value,
            type=str(form.get("type", entry.type.value)),
            metadata=metadata,
            indices=entry.indices,
            importance=entry.importance,
            text=entry.text if value == entry.value else None,
            ttl=None if expires_at is not None else "never",
            expires_at=expires_at,
            actor="memory browser",
            reason=str(form.get("reason", "")).strip() or "edited in the memory browser",
            **owner,
        )
        return _to_history(form)

    async def invalidate(request: Request) -> Response:
        form = await checked_form(request)
        owner = _owner(str(form.get("owner", "")))
        await storage.invalidate(str(form.get("key", "")), actor="memory browser", **owner)
        return _to_history(form)

    async def restore(request: Request) -> Response:
        form = await checked_form(request)
        owner = _owner(str(form.get("owner", "")))
        try:
            version = int(str(form.get("version", "")))
        except ValueError:
            raise _BadRequest("version must be a number") from None
        await storage.restore(str(form.get("key", "")), version, actor="memory browser", **owner)
        if form.get("back"):  # an undo from the list: back to it
            return RedirectResponse(_local(form.get("back")), status_code=303)
        return _to_history(form)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return render("error.html", status=400, message=str(exc))

    async def not_found(request: Request, exc: Exception) -> Response:
        return render("error.html", status=404, message=f"no such memory: {exc}")

    async def store_error(request: Request, exc: Exception) -> Response:
        return render("error.html", status=400, message=str(exc))

    static = StaticFiles(directory=_HERE / "static")
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/history", history),
            Route("/deleted", deleted),
            Route("/delete", delete, methods=["POST"]),
            Route("/edit", edit, methods=["POST"]),
            Route("/invalidate", invalidate, methods=["POST"]),
            Route("/restore", restore, methods=["POST"]),
            Mount("/static", app=_with_headers(static), name="static"),
        ],
        middleware=[Middleware(_Guard, hosts=hosts, token=token)],
        exception_handlers={
            _BadRequest: bad_request,
            MemoryNotFoundError: not_found,
            MemoryError: store_error,
        },
    )
    return app


def what_it_shows(config: PostgresConfig) -> str:
    """Which database and table the browser shows (never a password)."""
    return f"{config.describe_target()}, table {config.schema_name}.{config.table}"


def _deleted(params: Any) -> dict[str, str] | None:
    """What the last delete removed (shown with an undo), if the page says so."""
    key = params.get("deleted")
    if not key:
        return None
    kept = [(name, value) for name, value in params.multi_items() if name[:7] != "deleted"]
    back = "/?" + urlencode(kept)
    return {
        "key": key,
        "owner": params.get("deleted_owner", ""),
        "version": params.get("deleted_version", ""),
        "back": back,
    }


def _local(back: Any) -> str:
    """A path of this site to go back to (never another site: no open redirect)."""
    path = str(back or "/")
    return path if path.startswith("/") and not path.startswith("//") else "/"


def _with_query(path: str, extra: dict[str, str]) -> str:
    """``path`` with ``extra`` in its query (replacing the same names)."""
    base, _, query = path.partition("?")
    kept = [(name, value) for name, value in parse_qsl(query) if name not in extra]
    return base + "?" + urlencode([*kept, *extra.items()])


def _to_history(form: FormData) -> Response:
    target = "/history?" + urlencode({"key": form.get("key", ""), "owner": form.get("owner", "")})
    return RedirectResponse(target, status_code=303)


def _cursor(params: Any) -> MemoryEntry[Any] | None:
    """The last row of the previous page, from its position in the address."""
    created = params.get("after_created")
    if not created:
        return None
    try:
        moment = datetime.fromisoformat(created)
        return MemoryEntry.model_construct(
            created_at=moment,
            updated_at=moment,
            key=params.get("after_key", ""),
            scope=MemoryScope(params.get("after_scope", "")),
            scope_id=params.get("after_scope_id", ""),
        )
    except ValueError:
        raise _BadRequest("a page position is malformed") from None


def _security_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # (no-referrer makes a form's Origin "null")
        "X-Frame-Options": "DENY",
    }


def _with_headers(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (k.lower().encode(), v.encode()) for k, v in _security_headers().items()
                ]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, sending)

    return wrapped


def _visible(text: str) -> str:
    """``text`` with each control, invisible or bidirectional character as ``<U+XXXX>``."""
    return UNSEEN.sub(lambda found: f"<U+{ord(found.group()):04X}>", text)

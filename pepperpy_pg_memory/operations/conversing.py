"""``store_conversation``'s part before the write: a session's turns placed after the ones
already stored, each given its indexed text and its vector."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, TypeVar

from ..conversations import (
    CONTEXT_TURNS,
    CONVERSATION_FIELD,
    StoredTurn,
    Turn,
    blend,
    indexed_text,
    moment_of,
    turn_own_text,
    turn_words,
    turns_of,
)
from ..errors import MemoryValidationError
from ..items import Scope, as_enum
from ..models import MemoryEntry
from ..queries import Restriction
from ..sql import Query
from ..types import MemoryScope
from ..vectors import Vector
from .started import Started

__all__ = ["session_owner", "turn_items", "session_turns", "indexed_vectors"]

V = TypeVar("V")

_FEW_REPLACED = 8
"""Up to this many turns stored again are read with their context one by one."""
_WHOLE_SESSION = 1_000_000
"""More than any session holds: the limit of a read of a whole session."""


def _stored(entry: MemoryEntry[Any]) -> StoredTurn | None:
    """A turn stored before, read back from its row (None if the row is not one)."""
    place: Any = entry.metadata.get(CONVERSATION_FIELD)
    words = turn_words(place)
    if words is None:
        return None
    speaker, start, end = words
    try:
        at, position = datetime.fromisoformat(place["at"]), int(place["position"])
    except (KeyError, TypeError, ValueError):
        return None  # metadata written by hand: not a turn this module can place
    return StoredTurn(entry.key, speaker, entry.text[start:end], at, position)


async def indexed_vectors(
    started: Started[V], contents: Sequence[str], places: Sequence[Any]
) -> Vector:
    """The vectors of rows indexed by ``contents``: a turn's (its place among ``places``
    says so) blends its own text's vector with its indexed text's; any other row's is its
    content's. What a write and a re-embedding both give."""
    vectors = await started.vectors.embed(list(contents))
    owns = [turn_own_text(content, place) for content, place in zip(contents, places, strict=True)]
    turns = [index for index, own in enumerate(owns) if own is not None]
    if turns:
        own_vectors = await started.vectors.embed([owns[index] or "" for index in turns])
        vectors = vectors.copy()
        vectors[turns] = blend(own_vectors, vectors[turns])
    return vectors


async def session_turns(
    started: Started[V], owner: Restriction, session_id: str, ids: Sequence[str]
) -> builtins.list[StoredTurn]:
    """What a write of the turns ``ids`` needs of the owner's session's stored turns, in
    their order: those turns themselves, the :data:`CONTEXT_TURNS` turns before each of
    them and the session's last ones (a long chat is not read whole to append one
    message)."""
    restriction = replace(owner, filter={f"{CONVERSATION_FIELD}.session_id": session_id})
    statements = started.statements
    found: dict[str, StoredTurn] = {}

    async def fetch(query: Query) -> builtins.list[StoredTurn]:
        rows = await started.reads.fetch("store_conversation", query)
        turns = [turn for turn in (_stored(started.rows.entry(row)) for row in rows) if turn]
        found.update((turn.id, turn) for turn in turns)
        return turns

    await fetch(statements.turns_before(restriction, None, CONTEXT_TURNS))
    named = replace(restriction, keys=frozenset(ids))
    page = statements.list_page(named, limit=len(ids), offset=0, order_by="key", descending=False)
    replaced = await fetch(page)
    if len(replaced) > _FEW_REPLACED:
        # A session stored again: one read of all of it beats one read per turn.
        await fetch(statements.turns_before(restriction, None, _WHOLE_SESSION))
    else:
        for turn in replaced:
            await fetch(statements.turns_before(restriction, turn.position, CONTEXT_TURNS))
    return sorted(found.values(), key=lambda turn: (turn.position, turn.id))


def session_owner(scope: Scope, scope_id: str | None, session_id: str) -> str | None:
    """The owner id of a conversation's turns: a SESSION scope without one is the
    session's."""
    if scope_id is None and as_enum(MemoryScope, scope, "scope") is MemoryScope.SESSION:
        return session_id
    return scope_id


async def turn_items(
    started: Started[V],
    session_id: str,
    turns: Sequence[Turn | Mapping[str, Any]],
    *,
    scope: Scope,
    scope_id: str | None,
    metadata: Mapping[str, Any] | None,
    managed_by: str,
) -> builtins.list[dict[str, Any]]:
    """``store_many`` items of ``turns``: each keyed by its id, its value the turn (or the
    turn's own ``value``), indexed by its context (see :mod:`..conversations`), placed after
    the session's stored turns (a turn stored before keeps its place), the record of
    ``managed_by``."""
    if not isinstance(session_id, str) or not session_id:
        raise MemoryValidationError("session_id must be a non-empty str")
    # The owner's session (the facade has refused a call without a scope): its context
    # is never another owner's.
    owner = started.restriction(scope, scope_id)
    given = turns_of(turns)
    if metadata is not None and CONVERSATION_FIELD in metadata:
        raise MemoryValidationError(
            f"metadata: {CONVERSATION_FIELD!r} is where a turn's place is kept; use another name"
        )
    for turn in given:
        if turn.metadata is not None and CONVERSATION_FIELD in turn.metadata:
            raise MemoryValidationError(
                f"turn {turn.id!r}: metadata field {CONVERSATION_FIELD!r} is reserved"
            )
    if not given:
        return []
    # Each id checked as the key it becomes, before it is read with.
    session = await session_turns(started, owner, session_id, started.keys(t.id for t in given))
    places = {turn.id: index for index, turn in enumerate(session)}
    now = datetime.now(timezone.utc)
    placed: builtins.list[int] = []
    for turn in given:
        index = places.get(turn.id)
        if index is None:  # a new turn: after the last one
            index = len(session)
            position = session[-1].position + 1 if session else 0
        else:  # a turn stored before: replaced in its place
            position = session[index].position
        # A turn without a moment was said when the one before it was (or now).
        before = session[index - 1].at if index else now
        stored = StoredTurn(turn.id, turn.speaker, turn.text, moment_of(turn.at, before), position)
        if index == len(session):
            session.append(stored)
            places[turn.id] = index
        else:
            session[index] = stored
        placed.append(index)
    indexed = [indexed_text(session, index) for index in placed]
    texts = [text for text, _ in indexed]
    started.state.turns_seen = True  # searches weigh turns that ask (see search.search)
    items: builtins.list[dict[str, Any]] = []
    for turn, index, (text, start) in zip(given, placed, indexed, strict=True):
        stored = session[index]
        value = (
            turn.value
            if turn.value is not None
            else {
                "speaker": stored.speaker,
                "text": stored.text,
                "at": stored.at.isoformat(),
                "session_id": session_id,
            }
        )
        items.append(
            {
                "key": turn.id,
                "value": value,
                "text": text,
                "managed_by": managed_by,
                "metadata": {
                    **(metadata or {}),
                    **(turn.metadata or {}),
                    CONVERSATION_FIELD: {
                        "session_id": session_id,
                        "position": stored.position,
                        "speaker": stored.speaker,
                        "at": stored.at.isoformat(),
                        # Where the turn's own words are in the indexed text: a later
                        # call reads them back as the context of the turns after it.
                        "span": [start, start + len(stored.text)],
                    },
                },
            }
        )
    turn_places = [item["metadata"][CONVERSATION_FIELD] for item in items]
    vectors = await indexed_vectors(started, texts, turn_places)
    for item, vector in zip(items, vectors, strict=True):
        item["embedding"] = vector
    return items

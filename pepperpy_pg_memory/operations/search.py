"""Searches: by meaning, by words, both, by time; and the memories nearest to one.

One table, :data:`SEARCH_MODES`, says for each :class:`MemoryIndex` whether a search needs
the query's vector, whether it ranks by term statistics, which statement it runs and how
that statement is fetched. A new mode is one entry and one statement builder.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from ..conversations import (
    CONVERSATION_FIELD,
    TimeCues,
    question_weights,
    relevance_weight,
    time_cues,
    turn_moment,
)
from ..errors import MemoryIndexError, MemoryNotFoundError
from ..items import Scope
from ..metrics import instrumented
from ..models import MemoryQuery, MemorySearchResult
from ..queries import Restriction
from ..search_sql import Page, SearchStatements
from ..sql import Query
from ..types import Identity, MemoryIndex
from ..vectors import Vector
from .naming import resolve
from .rows import identity_of_entry
from .started import Started

__all__ = ["SEARCH_MODES", "SearchMode", "SearchRequest", "search", "similar", "vector_rows"]

V = TypeVar("V")

RANKED_CANDIDATES = 4_000
"""The most candidates a ranked search weighs (four times limit + offset, up to this)."""

Statement = Callable[[bool], Query]
"""A search's statement, given whether to look at passages (vector searches only)."""
Fetch = Callable[[Started[Any], Statement, "datetime | None"], Awaitable[builtins.list[Any]]]


@dataclass(frozen=True)
class SearchRequest:
    """One search, checked: what the statement builders take."""

    query: MemoryQuery
    vector: Vector | None
    restriction: Restriction
    page: Page
    started: Started[Any]


@dataclass(frozen=True)
class SearchMode:
    """How one kind of search runs."""

    needs_vector: bool
    """The query text is embedded (or its ``embedding`` checked)."""
    weighs_terms: bool
    """It ranks by BM25: the owner's term statistics must exist (see TermStatistics)."""
    cosine_scores: bool
    """Its scores are cosine similarities (a ranking then reads them as such)."""
    by_relevance: bool
    """It orders by how well a memory matches (not by time): conversation turns that ask
    questions score less (see :func:`_answers_first`)."""
    build: Callable[[SearchStatements, SearchRequest], Statement]
    fetch: Fetch


async def vector_rows(started: Started[Any], statement: Statement) -> builtins.list[Any]:
    """Rows of a vector search: with passages once any are known to exist, else the simpler
    statement, whose rows tell whether passages exist (then it runs again, with them, and
    passages are used from then on)."""
    reads, state = started.reads, started.state
    if state.passages_seen:
        return await reads.fetch("search", statement(True))
    rows = await reads.fetch("search", statement(False))
    if rows and not rows[0]["passages_exist"]:
        return rows
    if rows:
        state.passages_seen = True
    # No rows: nothing said whether passages exist; the full statement finds out.
    return await reads.fetch("search", statement(True))


async def _fetch_vectors(
    started: Started[Any], statement: Statement, as_of: datetime | None
) -> builtins.list[Any]:
    if as_of is None:
        return await vector_rows(started, statement)
    # Passages have no history: a memory counts by its own vector then.
    return await started.reads.fetch_as_of("search", statement(False), as_of)


async def _fetch_words(
    started: Started[Any], statement: Statement, as_of: datetime | None
) -> builtins.list[Any]:
    # The BM25 search plans once per shape (see fetch_with_generic_plan); Citus plans no
    # generic statement whose parameters reach a SQL function, so a cluster plans each.
    generic = started.config.contextual_match == "any" and not started.layout.distributed
    if as_of is not None:
        return await started.reads.fetch_as_of(
            "search", statement(False), as_of, generic_plan=generic
        )
    if generic:
        return await started.reads.fetch_with_generic_plan("search", statement(False))
    return await started.reads.fetch("search", statement(False))


def _semantic(searches: SearchStatements, request: SearchRequest) -> Statement:
    assert request.vector is not None
    vector, restriction, page = request.vector, request.restriction, request.page
    embedding = request.query.include_embedding
    return lambda passages: searches.semantic_search(
        vector, restriction, page, include_embedding=embedding, passages=passages
    )


def _hybrid(searches: SearchStatements, request: SearchRequest) -> Statement:
    assert request.vector is not None and request.query.query is not None
    text, vector, config = request.query.query, request.vector, request.started.config
    return lambda passages: searches.hybrid_search(
        text,
        vector,
        request.restriction,
        request.page,
        candidates=config.hybrid_candidates,
        rrf_k=config.rrf_k,
        passages=passages,
    )


def _contextual(searches: SearchStatements, request: SearchRequest) -> Statement:
    assert request.query.query is not None
    statement = searches.contextual_search(request.query.query, request.restriction, request.page)
    return lambda passages: statement


def _temporal(searches: SearchStatements, request: SearchRequest) -> Statement:
    statement = searches.temporal_search(request.query.query, request.restriction, request.page)
    return lambda passages: statement


SEARCH_MODES: dict[MemoryIndex, SearchMode] = {
    MemoryIndex.SEMANTIC: SearchMode(True, False, True, True, _semantic, _fetch_vectors),
    MemoryIndex.HYBRID: SearchMode(True, True, False, True, _hybrid, _fetch_vectors),
    MemoryIndex.CONTEXTUAL: SearchMode(False, True, False, True, _contextual, _fetch_words),
    MemoryIndex.TEMPORAL: SearchMode(False, True, False, False, _temporal, _fetch_words),
}


async def query_vector(started: Started[Any], query: MemoryQuery) -> Vector:
    """The vector ``query`` searches with: its own ``embedding``, checked, or its text's."""
    if query.embedding is not None:
        return started.vectors.check(query.embedding)
    assert query.query is not None
    return await started.vectors.query(query.query)


@instrumented("search")
async def search(started: Started[V], query: MemoryQuery) -> builtins.list[MemorySearchResult[V]]:
    """The memories matching ``query``, best first."""
    as_of = query.as_of
    searches = started.searches if as_of is None else started.searches_as_of
    restriction = started.restriction(
        query.scope,
        query.scope_id,
        query.types,
        query.filter,
        value_filter=query.value_filter,
        keys=query.keys,
        key_prefix=query.key_prefix,
        created_after=query.created_after,
        created_before=query.created_before,
        updated_after=query.updated_after,
        updated_before=query.updated_before,
        as_of=as_of,
        include_invalid=query.include_invalid,
    )
    wanted = Page(query.limit, query.offset, query.min_score)
    ranking = query.ranking
    if query.include_access_counts or (ranking is not None and ranking.recency > 0):
        # (A ranking's recency is the age since the last read.)
        searches = searches.with_read_counts()
    mode = SEARCH_MODES[query.index_type]
    weighs_questions = ranking is None and mode.by_relevance
    spare = weighs_questions and started.state.turns_seen
    cues = time_cues(query.query) if spare and query.query is not None else None
    page = wanted
    if ranking is not None:
        # The index finds four times the page and the database weighs them.
        page = Page(min(4 * (query.limit + query.offset), RANKED_CANDIDATES), 0, None)
    elif spare:
        # Conversation turns that ask questions score less, and so do turns of another time
        # or speaker than the question names: spare candidates can take their places.
        extra = SPARE_CANDIDATES if cues is None else DATED_CANDIDATES
        page = Page(query.limit + query.offset + extra, 0, query.min_score)
    if cues is not None and cues.event is not None:
        cues = await _dated_by_event(started, searches, cues, restriction, as_of)
    if mode.weighs_terms:
        started.term_stats.note_search(restriction.owner)
    vector = await query_vector(started, query) if mode.needs_vector else None
    statement = mode.build(searches, SearchRequest(query, vector, restriction, page, started))
    if ranking is not None:
        unranked = statement

        def statement(passages: bool) -> Query:
            return searches.ranked(unranked(passages), ranking, mode.cosine_scores, wanted)

    rows = await mode.fetch(started, statement, as_of)
    index, embedding = query.index_type, query.include_embedding
    results = [started.rows.result(row, index, embedding=embedding) for row in rows]
    if weighs_questions:
        results = _answers_first(started, results, query.min_score, query.query, cues)
    if spare:
        results = results[query.offset : query.offset + query.limit]
    if as_of is None:
        started.access.note(identity_of_entry(result.entry) for result in results)
    return results


SPARE_CANDIDATES = 10
"""How many more candidates than the page a search fetches once the store holds turns."""
DATED_CANDIDATES = 30
"""As :data:`SPARE_CANDIDATES`, for a question that says when (see
:func:`~..conversations.time_cues`): the turns of that time may rank further down."""


async def _dated_by_event(
    started: Started[Any],
    searches: SearchStatements,
    cues: TimeCues,
    restriction: Restriction,
    as_of: datetime | None,
) -> TimeCues:
    """``cues`` with the window of the event they date by ("after the wedding"): the moment
    of the turn that best matches the event's words among the memories searched (as of the
    search's moment); without one, the cues without the event."""
    assert cues.event is not None
    event_query = MemoryQuery(query=cues.event[1], index_type=MemoryIndex.CONTEXTUAL, limit=3)
    mode = SEARCH_MODES[MemoryIndex.CONTEXTUAL]
    request = SearchRequest(event_query, None, restriction, Page(3, 0, None), started)
    rows = await mode.fetch(started, mode.build(searches, request), as_of)
    for row in rows:
        moment = turn_moment(started.rows.result(row, MemoryIndex.CONTEXTUAL).entry)
        if moment is not None:
            return cues.around(moment)
    return replace(cues, event=None)


def _answers_first(
    started: Started[V],
    results: builtins.list[MemorySearchResult[V]],
    min_score: float | None,
    question: str | None,
    cues: TimeCues | None,
) -> builtins.list[MemorySearchResult[V]]:
    """``results`` with each conversation turn's score weighed (a turn that asks a question
    keeps half: see :func:`~..conversations.relevance_weight`; turns of another time or
    another speaker than the question names keep less:
    :func:`~..conversations.question_weights`), best first, at least ``min_score``."""
    weighed = False
    asked = [1.0] * len(results)
    if question is not None and started.state.turns_seen:
        asked = question_weights(question, cues, [result.entry for result in results])
    for position, result in enumerate(results):
        entry = result.entry
        if CONVERSATION_FIELD not in entry.metadata:
            continue
        started.state.turns_seen = True
        weight = relevance_weight(entry) * asked[position]
        if weight != 1.0 and result.score > 0:
            results[position] = result.model_copy(update={"score": result.score * weight})
            weighed = True
    if weighed:
        results.sort(key=lambda result: -result.score)  # stable: ties keep their order
        if min_score is not None:
            results = [result for result in results if result.score >= min_score]
    return results


@instrumented("similar")
async def similar(
    started: Started[V],
    key: str,
    scope: Scope,
    scope_id: str | None,
    restriction: Restriction,
    limit: int,
    min_score: float | None,
) -> builtins.list[MemorySearchResult[V]]:
    """The memories nearest in meaning to the one ``key`` names (itself excluded)."""
    holders = await resolve(started, [key], scope, scope_id)
    if not holders:
        raise MemoryNotFoundError(key)
    target = holders[0]
    state = None
    vector = None
    if started.layout.distributed:
        # A statement naming two owners' rows (the target's and the candidates') would
        # join across nodes: the target's vector is read first.
        state = await _probe(started, key, target)
        vector = state["embedding"]
    rows = await started.reads.fetch(
        "similar",
        started.searches.similar(
            target, restriction, limit=limit, min_score=min_score, vector=vector
        ),
    )
    if not rows and state is None:
        await _probe(started, key, target)
    return [started.rows.result(row, MemoryIndex.SEMANTIC) for row in rows]


async def _probe(started: Started[Any], key: str, target: Identity) -> asyncpg.Record:
    """``target``'s row for :func:`similar`: it must be live and have an embedding."""
    state = await started.reads.fetchrow(
        "similar", started.searches.probe_state(started.tenant, target)
    )
    if state is None:
        raise MemoryNotFoundError(key)
    if not state["has_embedding"]:
        raise MemoryIndexError(
            f"memory {key!r} has no embedding: it was stored without the SEMANTIC index"
        )
    return state

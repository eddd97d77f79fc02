"""The search statements: semantic, contextual (full text with a trigram fallback), hybrid
(reciprocal-rank fusion), temporal, and ``similar``.

Each method returns a :class:`~.queries.Query`; values are ``$n`` parameters, restrictions come
from :class:`~.queries.Restriction`, and rows of different branches are matched by the whole
identity, never by key alone.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from .filters import Params
from .history import AS_OF_MOMENT, as_of_source, replaced_versions, setting_statement
from .models import Ranking
from .queries import (
    CONTEXTUAL,
    M_OWNER_KEY,
    OWNER_KEY,
    Restriction,
    pinned_condition,
    select_entry,
)
from .schema import TableLayout, live, terms_function
from .sql import Query
from .types import Identity

__all__ = [
    "SearchStatements",
    "Page",
    "fuzzy_words",
    "split_query",
    "ContextualMatch",
    "TermStatisticsScope",
]

ContextualMatch = Literal["any", "all"]
TermStatisticsScope = Literal["owner", "tenant"]


class Page(NamedTuple):
    """Which results a search returns: ``limit`` of them after skipping ``offset``, scoring at
    least ``min_score`` (None: any)."""

    limit: int
    offset: int = 0
    min_score: float | None = None


class _OwnerSize(NamedTuple):
    """One-time SQL conditions on a word search's ``term_totals`` (see
    SearchStatements._owner_size); None where they do not apply."""

    small: str | None
    large: str | None
    tenant_counted: str
    """A column of term_totals the ``large`` condition reads ('' without it)."""


_WORD = re.compile(r"\w+", re.UNICODE)
FUZZY_MIN_WORD_LENGTH = 4
FUZZY_MAX_WORDS = 8
FUZZY_MAX_CANDIDATES = 2_000


CONTEXTUAL_CANDIDATES = 100
"""How many memories each candidate step of a BM25 search fetches at most."""

SMALL_OWNER_MEMORIES = 2_000
"""Up to this many memories (by the owner's term statistics), a BM25 search within one owner
reads the owner's memories and tests their terms, instead of asking the terms' GIN index."""

LARGE_OWNER_BREAK_EVEN = 3_000
"""When an owner's counted memories ``n`` among the tenant's ``N`` satisfy ``n² > this ×
(N − n)``, a word search's probes through the terms' index check the owner on the rows the
index finds, instead of intersecting them with all of the owner's rows from the owner's
index (about 30 ns a row: 1.5 ms a probe for an owner of 50,000). Checking costs about a
microsecond for each other owner's row the terms match, about (N − n) / n of the owner's up
to CONTEXTUAL_CANDIDATES a probe: the break-even is near n² = 33 × 100 × (N − n).
Measured among 363,000 memories: an owner of 50,000 searched in 4.1 ms instead of 9.9; one
of 10,000, 10.5 ms instead of 6.0, and one of 3,000, 40 ms instead of 4.3, had they checked
too (they do not)."""

TEMPORAL_CANDIDATES = 40
"""The fewest best word matches a TEMPORAL search with a query orders by time."""

# BM25's usual constants (Lucene's defaults): term-frequency saturation and length weight.
BM25_K1 = 1.2
BM25_B = 0.75

WORD_VOTE_COVERAGE = 0.5
"""The share of a question's term weight a memory must hold for its word rank to vote in
HYBRID fusion (see :meth:`SearchStatements.hybrid_search`)."""

_PHRASE = re.compile(r'"[^"]*"?')
_EXCLUSION = re.compile(r"(?:^|(?<=\s))-(?=\w)\S+")


def split_query(query: str) -> tuple[str, str | None]:
    """``query`` as the terms to rank by and, if it has any, its quoted phrases and ``-word``
    exclusions (web-search syntax) that every result must satisfy."""
    phrases = [p for p in _PHRASE.findall(query) if p.strip('"').strip()]
    exclusions = _EXCLUSION.findall(query)
    if not phrases and not exclusions:
        return query, None
    positive = _EXCLUSION.sub(" ", query)
    return positive, " ".join(phrases + exclusions)


def fuzzy_words(query: str) -> list[str]:
    """The query's distinct words (at most eight) for trigram matching and scoring."""
    words = [w.lower() for w in _WORD.findall(query) if len(w) >= 2]
    return list(dict.fromkeys(words))[:FUZZY_MAX_WORDS]


def _by_owner_size(large: str | None, where: str, branch: Callable[[str, str], str]) -> str:
    """``branch(size, restriction)``: a FROM item of the rows within the restriction ``where``
    that ``size`` (a condition evaluated once) lets through. Without ``large`` one branch
    serves every owner; with it (see :meth:`SearchStatements._owner_size`), a second branch
    serves large owners, with the restriction as one opaque condition: no index serves the
    owner's part, and the rows the branch's index finds are checked instead (a plan made
    for an owner of average size intersects them with every row of the owner's, or reads
    every row of the owner's to test them)."""
    if large is None:
        return branch("TRUE", where)
    return f"""{branch(f"NOT {large}", where)}
        UNION ALL
        {branch(large, f"({where}) IS TRUE")}"""


def _at_least(params: Params, expression: str, min_score: float | None) -> str:
    if min_score is None:
        return "TRUE"
    return f"({expression}) >= {params.add(float(min_score))}::float8"


def _parsed_text(config: str, alias: str = "m") -> str:
    """The words of memory ``alias``'s text, parsed in the text search configuration
    ``config`` (a bind parameter): what a memory without terms yet is searched by."""
    return f"to_tsvector({config}::text::regconfig, {alias}.content)"


def _walk_wider(params: Params, ef_search: int) -> str:
    """A condition that sets ``hnsw.ef_search`` for this statement alone.

    It holds no column, so the planner makes it a one-time filter, evaluated before the
    first row is read from the scan beneath it; pgvector reads the setting when that first
    row is asked for; and ``set_config(..., true)`` lasts to the end of the transaction — the
    statement's own, unless the caller opened one around it. So a filtered search walks a
    wider graph at no extra round trip (a ``SET LOCAL`` needs three).
    """
    value = params.add(str(ef_search))
    return f" AND (SELECT set_config('hnsw.ef_search', {value}, true)) IS NOT NULL"


RESORTED = "distance + 0"
"""What a re-sort of an HNSW walk's rows orders by. With relaxed-order iterative scans the walk
returns rows roughly by distance; PostgreSQL 17+ carries a materialised CTE's ORDER BY out
to the query reading it and would trust that order (an incremental sort that only sorts rows
of equal distance). ``+ 0`` is an expression the CTE is not ordered by, so the rows are
sorted for real (pgvector's documented form)."""


def _page(params: Params, order: str, limit: int, offset: int) -> str:
    """``ORDER BY`` the best first, ties broken by identity, then the page."""
    # Unqualified: the identity columns are merged by the joins' USING, or come from a CTE.
    tail = f"LIMIT {params.add(limit)} OFFSET {params.add(offset)}"
    return f"ORDER BY {order}, key, scope, scope_id {tail}"


class SearchStatements:
    """The search SQL of one memory table."""

    def __init__(
        self,
        layout: TableLayout,
        *,
        match: ContextualMatch = "any",
        term_statistics: TermStatisticsScope = "owner",
        backfilling: bool = False,
        as_of: bool = False,
        filtered_ef_search: int | None = None,
        read_counts: bool = False,
    ) -> None:
        self.layout = layout
        self.match = match
        """How contextual search matches words: "any" (BM25) or "all" (every word)."""
        self.term_statistics = term_statistics
        """Whose memories weigh a search's terms when it is within one owner (see
        :meth:`_statistics`)."""
        self.filtered_ef_search = filtered_ef_search
        """The ``hnsw.ef_search`` of graph walks under a metadata or value filter (None: the
        session's): of the candidates a walk finds, only those the filter passes count."""
        self.backfilling = backfilling
        """Whether some memories may still lack ``terms`` (the backfill has not finished)."""
        self.table = layout.qualified_table
        self.refresh_check = layout.refresh_check
        """Whether a TTL refresh extends a memory's expiry (see schema.live)."""
        self.read_counts = read_counts
        """Whether results carry their memories' read counts: a look-up per result, made
        only when asked or when a ranking weighs recency (else access_count is None)."""
        self.entry = select_entry(layout, read_counts=read_counts)
        self._counted: SearchStatements | None = None
        self.as_of = as_of
        if as_of:
            # The memories as they stood at the transaction's AS_OF_SETTING moment; passages
            # have no history, so as-of searches score memories by their own vectors.
            self.table = as_of_source(layout, AS_OF_MOMENT)
        self.passages = layout.qualified_passages
        self.vector = layout.vector_column_type
        self.op = layout.distance_operator

    def with_read_counts(self) -> SearchStatements:
        """These statements with each result's read counts looked up (made once)."""
        if self.read_counts:
            return self
        if self._counted is None:
            self._counted = copy.copy(self)
            self._counted.read_counts = True
            self._counted.entry = select_entry(self.layout)
        return self._counted

    def _entry(self, params: Params, restriction: Restriction) -> str:
        """The entry's columns for a search within ``restriction`` (see
        :meth:`~.queries.Statements.entry_for`)."""
        if not self.read_counts:
            return self.entry
        pinned = pinned_condition(self.layout, params, restriction, "a")
        return select_entry(self.layout, pinned) if pinned else self.entry

    def _pinned(self, params: Params, restriction: Restriction) -> str:
        """For the memories ``m`` joined to a CTE's identities: on a cluster, the owner (or
        tenant) again, as a value — Citus keeps a statement on one node only if every
        table in it is pinned so, and does not infer it through the CTE."""
        return pinned_condition(self.layout, params, restriction, "m")

    def _graph_conditions(self, params: Params, restriction: Restriction) -> str:
        """``restriction``'s conditions for a walk of the HNSW graph: with a filter, the walk
        widens to :attr:`filtered_ef_search`."""
        where = restriction.conditions(params, self.refresh_check)
        if not self._walks_wider(restriction) or self.layout.distributed:
            return where  # on a cluster the setting goes first (see _walked)
        assert self.filtered_ef_search is not None
        return where + _walk_wider(params, self.filtered_ef_search)

    def _walks_wider(self, restriction: Restriction) -> bool:
        return self.filtered_ef_search is not None and bool(
            restriction.filter or restriction.value_filter
        )

    def _walked(self, sql: str, params: Params, restriction: Restriction) -> Query:
        """A statement walking the graph within ``restriction``. On a cluster the walk runs
        on the workers, which see no setting made by a function call: a filtered walk's
        width goes first, as SET LOCAL (which Citus forwards)."""
        before = ""
        if self.layout.distributed and self._walks_wider(restriction):
            before = setting_statement("hnsw.ef_search", str(self.filtered_ef_search))
        return Query(sql, params.values, before)

    def _passages_exist(self, params: Params, restriction: Restriction) -> str:
        """Whether the memories the restriction names could have passages: the tenant's, or
        within one owner that owner's (on a cluster, a look-up on the owner's node)."""
        where = f"tenant = {params.add(restriction.tenant)}"
        if restriction.owner is not None:
            scope, scope_id = restriction.owner
            where += f" AND scope = {params.add(scope)} AND scope_id = {params.add(scope_id)}"
        return f"(SELECT EXISTS (SELECT 1 FROM {self.passages} WHERE {where}))"

    def _nearest(
        self,
        columns: str,
        vector: str,
        where: str,
        want: str,
        distance: str,
        read_back: bool = False,
    ) -> str:
        """A CTE body: ``columns`` and the distance (named ``distance``) of the ``want``
        memories nearest to ``vector`` within the restriction ``where``.

        It is the shape pgvector's HNSW index serves (ORDER BY distance LIMIT); with iterative
        scans on, it keeps scanning until the filters let ``want`` rows through. Callers
        materialise it and sort again: relaxed_order scans return rows roughly in order.

        With ``read_back`` (one server, now), the nearest are found by their row's address
        and distance alone and ``columns`` read for those only: within one owner the planner
        often reads all the owner's rows and sorts them, and a sort carrying every column
        of a result cost a fifth of the statement (benchmarks/README, "sorting narrow
        rows"). Where the graph returns rows in order it costs a little instead.
        """
        if self.as_of:
            # As of a moment: the rows written by then through the table's HNSW index, and
            # the versions replaced since (few) by distance; the nearest of both.
            layout = self.layout
            written = f"{layout.qualified_table} m WHERE m.updated_at <= {AS_OF_MOMENT} AND"
            replaced = f"{replaced_versions(layout, AS_OF_MOMENT)} m WHERE"
            return f"""
                SELECT * FROM (
                    {self._nearest_in(written, columns, vector, where, want, distance)}
                    UNION ALL
                    {self._nearest_in(replaced, columns, vector, where, want, distance)}
                ) both_parts ORDER BY {distance} + 0 LIMIT {want}
            """
        source = f"{self.table} m WHERE"
        if read_back and not self.layout.distributed:
            # (A row's address is unique on one server only; within one statement it names
            # the version the statement's snapshot sees.)
            found = self._nearest_in(source, "m.ctid AS row_id", vector, where, want, distance)
            return f"""(
                SELECT {columns}, nearest.{distance} FROM {found} nearest
                JOIN {self.table} m ON m.ctid = nearest.row_id
            )"""
        return self._nearest_in(source, columns, vector, where, want, distance)

    def _nearest_in(
        self, source: str, columns: str, vector: str, where: str, want: str, distance: str
    ) -> str:
        """``_nearest`` over ``source`` (a FROM item named ``m`` and the start of its
        WHERE clause)."""
        return f"""(
            SELECT {columns}, m.embedding {self.op} {vector} AS {distance}
            FROM {source} m.embedding IS NOT NULL AND {where}
            ORDER BY m.embedding {self.op} {vector}
            LIMIT {want}
        )"""

    def _passage_hits(
        self, params: Params, vector: str, where: str, restriction: Restriction, want: str
    ) -> str:
        """A CTE body: per memory within the restriction, its passages' best distance to
        ``vector``, over the ``want`` nearest passages (the passages' own HNSW index)."""
        # The EXISTS is evaluated once (an InitPlan): a table without passages costs nothing.
        return f"""
            SELECT scope, scope_id, key, min(distance) AS distance FROM (
                SELECT p.scope, p.scope_id, p.key, p.embedding {self.op} {vector} AS distance
                FROM {self.passages} p
                JOIN {self.table} m USING ({OWNER_KEY})
                WHERE p.tenant = {params.add(restriction.tenant)} AND p.embedding IS NOT NULL
                  AND {where} AND {self._passages_exist(params, restriction)}
                ORDER BY p.embedding {self.op} {vector}
                LIMIT {want}
            ) nearest GROUP BY scope, scope_id, key
        """

    # --- search ----------------------------------------------------------------------------
    def semantic_search(
        self,
        embedding: Any,
        restriction: Restriction,
        page: Page,
        *,
        include_embedding: bool = False,
        passages: bool = True,
    ) -> Query:
        """The nearest memories. With ``passages=False``, a memory's own vector only (a
        simpler statement: planning it costs a third as much), and every row says in
        ``passages_exist`` whether the tenant has passages, i.e. whether the full statement
        was needed."""
        limit, offset, min_score = page
        params = Params()
        vector = f"{params.add(embedding)}::{self.vector}"
        where = self._graph_conditions(params, restriction)
        columns = self._entry(params, restriction) + (", m.embedding" if include_embedding else "")
        score, similarity = self.layout.score_of("distance"), self.layout.cosine_of("distance")
        want = params.add(limit + offset)
        within_owner = restriction.owner is not None
        if not passages:
            nearest = self._nearest(columns, vector, where, want, "distance", within_owner)
            sql = f"""
                WITH hits AS MATERIALIZED ({nearest})
                SELECT *, {score} AS score, {similarity} AS similarity,
                    {self._passages_exist(params, restriction)} AS passages_exist
                FROM hits
                WHERE {_at_least(params, score, min_score)}
                {_page(params, RESORTED, limit, offset)}
            """
            return self._walked(sql, params, restriction)
        # A memory with passages counts by its best vector: its own or a passage's. Memories
        # found only through a passage are fetched by identity.
        sql = f"""
            WITH hits AS MATERIALIZED (
                {self._nearest(columns, vector, where, want, "own_distance", within_owner)}
            ),
            passage_hits AS MATERIALIZED (
                {self._passage_hits(params, vector, where, restriction, want)}
            ),
            merged AS (
                SELECT h.*, LEAST(h.own_distance, ph.distance) AS distance
                FROM hits h LEFT JOIN passage_hits ph USING (scope, scope_id, key)
                UNION ALL
                SELECT {columns}, m.embedding {self.op} {vector}, ph.distance
                FROM passage_hits ph
                JOIN {self.table} m ON m.tenant = {params.add(restriction.tenant)}
                    AND (m.scope, m.scope_id, m.key) = (ph.scope, ph.scope_id, ph.key)
                    {self._pinned(params, restriction)}
                WHERE NOT EXISTS (
                    SELECT 1 FROM hits h
                    WHERE (h.scope, h.scope_id, h.key) = (ph.scope, ph.scope_id, ph.key)
                )
            )
            SELECT *, {score} AS score, {similarity} AS similarity FROM merged
            WHERE {_at_least(params, score, min_score)}
            {_page(params, RESORTED, limit, offset)}
        """
        return self._walked(sql, params, restriction)

    def _tsquery(self, params: Params, query: str) -> str:
        return (
            f"websearch_to_tsquery({params.add(self.layout.text_search_config)}::text::regconfig, "
            f"{params.add(query)})"
        )

    def _words(self, params: Params, alias: str = "m") -> str:
        """A memory's words as a tsvector: its terms, indexed. While the terms backfill runs
        (a table upgraded from before schema 6), a memory it has not reached yet is parsed
        here instead: schema 29 dropped the full-text column that answered for it."""
        if not self.backfilling:
            return f"{alias}.terms"
        parsed = _parsed_text(params.add(self.layout.text_search_config), alias)
        return f"coalesce({alias}.terms, {parsed})"

    def _all_words(self, params: Params, query: str, where: str, want: str) -> str:
        """A CTE body: memories holding every word of ``query`` (web-search syntax), ranked by
        cover density: the contextual search of releases before BM25, kept as
        ``contextual_match="all"``."""
        tsquery = self._tsquery(params, query)
        words = self._words(params)
        return f"""
            SELECT {M_OWNER_KEY}, 0.5 + 0.5 * ts_rank_cd({words}, {tsquery}, 32) AS score,
                1.0::float8 AS coverage
            FROM {self.table} m
            WHERE {CONTEXTUAL} AND {where} AND {words} @@ {tsquery}
            ORDER BY score DESC, m.key, m.scope, m.scope_id
            LIMIT {want}
        """

    def _statistics(self, params: Params, restriction: Restriction) -> tuple[str, str]:
        """Where BM25's figures come from: a scalar subquery of the document frequency of
        the query lexeme ``q.lexeme`` (NULL if no memory holds it), and the totals' FROM and
        WHERE.

        A search within one owner counts that owner's memories (unless ``term_statistics`` is
        "tenant"): were they the tenant's, one user's scores would move with the words other
        users store, and a user bound to one owner could learn them. A search across owners
        sees the tenant's memories anyway.
        """
        tenant = params.add(restriction.tenant)
        owner = restriction.owner
        if owner is None or self.term_statistics == "tenant":
            frequencies = f"{self.layout.qualified_term_stats} s WHERE s.tenant = {tenant}"
            totals = f"{self.layout.qualified_term_totals} WHERE tenant = {tenant}"
        else:
            scope, scope_id = params.add(owner[0]), params.add(owner[1])
            frequencies = (
                f"{self.layout.qualified_owner_terms} s WHERE s.tenant = {tenant} "
                f"AND s.scope = {scope} AND s.scope_id = {scope_id}"
            )
            totals = (
                f"{self.layout.qualified_owner_totals} "
                f"WHERE tenant = {tenant} AND scope = {scope} AND scope_id = {scope_id}"
            )
        # A look-up of the whole key per lexeme, whatever the planner expects: as a join, a
        # plan that took an owner (or a tenant) for a small one read all of its terms and
        # matched each lexeme against them (50,638 terms, 28 ms a search, for an owner of
        # 50,000 memories whose statistics the planner had not seen yet).
        return f"(SELECT s.df FROM {frequencies} AND s.term = q.lexeme)", totals

    def _owner_size(
        self, params: Params, restriction: Restriction, check_large_owners: bool
    ) -> _OwnerSize:
        """The one-time conditions on ``term_totals`` that tell a small owner and a large one
        (none for a search across owners, or on a cluster).

        The GIN indexes hold every owner's rows: a term rare among a user's memories may be
        in thousands of other users', and an index then yields them all before the owner's
        conditions drop them (10 ms for an owner of 100 among 350,000 memories, against 1.8
        ms in a table of its own). The planner cannot tell, the term being known only when
        the statement runs. So within an owner whose statistics say it is small, the probes
        read the owner's memories instead; a large or not yet counted owner is probed
        through the index. An owner holding much of the tenant's memories is checked on the
        rows an index finds (see LARGE_OWNER_BREAK_EVEN): the planner, planning for an
        owner of average size, intersects them with every row of the owner's, or reads
        every row of the owner's to test them. (Large owners are told apart only where the
        statement is planned once: its extra branches cost a statement planned at every
        call, as a HYBRID search is, more than they save.)
        """
        if restriction.owner is None or self.layout.distributed:
            return _OwnerSize(None, None, "")
        small = f"(SELECT counted <= {params.add(SMALL_OWNER_MEMORIES)} FROM term_totals)"
        if self.term_statistics != "owner" or not check_large_owners:
            return _OwnerSize(small, None, "")
        tenant_counted = (
            f", (SELECT max(documents) FROM {self.layout.qualified_term_totals} "
            f"WHERE tenant = {params.add(restriction.tenant)}) AS tenant_counted"
        )
        large = f"""(SELECT coalesce(counted::float8 * counted
            > {params.add(float(LARGE_OWNER_BREAK_EVEN))}::float8
                * (tenant_counted - counted), false) FROM term_totals)"""
        return _OwnerSize(small, large, tenant_counted)

    def _best_matching(
        self,
        params: Params,
        positive: str,
        required: str | None,
        where: str,
        restriction: Restriction,
        want: int,
        owner_size: _OwnerSize,
        statistics: tuple[str, str],
    ) -> str:
        """CTEs ending in ``words`` (identity, score): at most ``want`` memories holding any of
        the terms of ``positive`` and satisfying ``required`` (see :func:`split_query`), ranked
        by BM25 with the figures of ``statistics`` (see :meth:`_statistics`).

        The query's terms are what a memory's ``terms`` column holds: the configuration's
        lexemes and identifiers, whole and by parts. Candidates come, through the GIN index,
        from (1) the rarest terms, as many as fit in the candidate budget by document
        frequency, and each term newer than the statistics on its own; (2) the memories
        holding every term the tenant has, and those holding every term of the query
        (statistics that lag a bulk load cannot hide the memory that matches it all); and,
        when those give fewer than ``want``, (3) the memories holding the two rarest known
        terms. Each step is capped, so a question of common words never scans the table;
        every query term then counts in the score, the ones too common to fetch by included.
        """
        cap = params.add(max(want, CONTEXTUAL_CANDIDATES))
        window = params.add(want)
        frequency, totals = statistics
        # Both ways of probing are planned (see _owner_size), and the one-time conditions on
        # term_totals run one of them; a small owner's memories are read once (``owned``).
        small, large, tenant_counted = owner_size
        config = params.add(self.layout.text_search_config)
        terms_of = f"{terms_function(self.layout.schema)}({config}::text::regconfig, "
        # Phrases and exclusions keep their web-search meaning, as conditions.
        constraint = (
            f"{self._words(params)} @@ {self._tsquery(params, required)}" if required else "TRUE"
        )
        candidate = f"{CONTEXTUAL} AND {where} AND {constraint}"

        def probe(match: str, gate: str = "TRUE") -> str:
            """The candidates whose terms match ``match``, at most ``cap`` of them; none
            unless ``gate`` (a condition evaluated once) holds."""

            def indexed(conditions: str) -> str:
                return (
                    f"SELECT {M_OWNER_KEY}, m.terms FROM {self.table} m "
                    f"WHERE {gate} AND m.terms @@ {match} AND {conditions}"
                )

            if small is None:
                return f"({indexed(candidate)} LIMIT {cap})"
            not_small = f"NOT coalesce({small}, false)"

            def through(size: str, restricted: str) -> str:
                conditions = f"{CONTEXTUAL} AND {restricted} AND {constraint}"
                return f"({indexed(conditions)} AND {not_small} AND {size} LIMIT {cap})"

            through_index = _by_owner_size(large, where, through)
            return f"""(SELECT * FROM (
                    (SELECT m.* FROM owned m WHERE {gate} AND m.terms @@ {match} LIMIT {cap})
                    UNION ALL
                    {through_index}) probed)"""

        # Memories written before terms existed are found by their text, parsed here, until
        # the online backfill reaches them (see backfill.TERMS): a scan of the restriction's
        # memories, while the backfill runs.
        parsed = _parsed_text(config)
        unfilled = (
            f"""UNION
                (SELECT {M_OWNER_KEY}, {parsed} AS terms FROM {self.table} m
                 WHERE m.terms IS NULL AND {parsed} @@ {self._tsquery(params, positive)}
                   AND {candidate} LIMIT {cap})"""
            if self.backfilling
            else ""
        )
        # A lexeme as a tsquery operand: quoted, its quotes and backslashes doubled.
        quoted = r"'''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || ''''"
        unknown = f"""(SELECT c.* FROM weights w CROSS JOIN LATERAL
                    {probe("w.quoted::tsquery")} c
                 WHERE w.df = 0)"""
        if self.layout.distributed:
            # Citus cannot push a LIMIT inside a lateral subquery down to the workers: the
            # new terms are probed together, under one cap.
            unknown = f"""(SELECT {M_OWNER_KEY}, m.terms FROM {self.table} m
                 WHERE m.terms @@ (SELECT unknown FROM probes) AND {candidate} LIMIT {cap})"""
        owned = (
            f"""
            owned AS MATERIALIZED (
                SELECT {M_OWNER_KEY}, m.terms FROM {self.table} m
                WHERE {candidate} AND {small}
            ),"""
            if small is not None
            else ""
        )
        k1, b = BM25_K1, BM25_B
        return f"""
            query_terms AS MATERIALIZED (
                SELECT q.lexeme, coalesce({frequency}, 0) AS df
                FROM unnest(tsvector_to_array({terms_of}{params.add(positive)}))) q(lexeme)
            ),
            term_totals AS MATERIALIZED (
                SELECT greatest(coalesce(max(documents), 0), 1)::float8 AS documents,
                       coalesce(nullif(max(avg_length), 0), 1)::float8 AS avg_length,
                       max(documents) AS counted{tenant_counted}
                FROM {totals}
            ),{owned}
            weights AS MATERIALIZED (
                -- BM25's idf; a term no memory holds (or one newer than the statistics)
                -- weighs as if one memory held it: not more than the rarest real term.
                SELECT lexeme, df, {quoted} AS quoted,
                    ln(1 + (documents - least(greatest(df, 1), documents) + 0.5)
                        / (greatest(df, 1) + 0.5)) AS idf,
                    sum(df) OVER (ORDER BY df, lexeme) AS running,
                    CASE WHEN df > 0 THEN row_number() OVER (
                        PARTITION BY df > 0 ORDER BY df, lexeme) END AS known_rarity
                FROM query_terms, term_totals
            ),
            probes AS MATERIALIZED (
                SELECT string_agg(quoted, ' | ')
                           FILTER (WHERE df > 0 AND running <= {cap})::tsquery AS rare,
                       string_agg(quoted, ' & ') FILTER (WHERE df > 0)::tsquery AS every,
                       -- Every term, when some are newer than the statistics (otherwise
                       -- it is `every`, already probed).
                       CASE WHEN bool_or(df = 0) THEN string_agg(quoted, ' & ')::tsquery END
                           AS whole,
                       string_agg(quoted, ' & ') FILTER (WHERE known_rarity <= 2)::tsquery AS pair,
                       string_agg(quoted, ' | ') FILTER (WHERE df = 0)::tsquery AS unknown,
                       -- The best score a memory can reach: every term the tenant's memories
                       -- hold (terms no memory holds cannot tell memories apart).
                       coalesce(sum(idf) FILTER (WHERE df > 0), sum(idf)) * {k1 + 1} AS best,
                       -- The query's term weight, for a memory's share of it (see
                       -- hybrid_search).
                       sum(idf) AS weight
                FROM weights
            ),
            first_candidates AS MATERIALIZED (
                {probe("(SELECT rare FROM probes)")}
                UNION
                -- Terms the statistics do not know yet (newer than the last count), each
                -- on its own: one of them may be common by now, and a capped probe of all of
                -- them at once could leave out the memory the new identifier names (its
                -- rows come last in the heap, so a cut drops the newest first).
                {unknown}
                UNION
                {probe("(SELECT every FROM probes)")}
                UNION
                {probe("(SELECT whole FROM probes)")}
                {unfilled}
            ),
            candidates AS (
                SELECT * FROM first_candidates
                UNION
                {
            probe(
                "(SELECT pair FROM probes)", f"(SELECT count(*) FROM first_candidates) < {window}"
            )
        }
            ),
            words AS MATERIALIZED (
                -- A memory can pass the best score only through terms newer than the
                -- statistics: then the best memory found scales the scores instead, so that
                -- they rank it first rather than tie at 1 with memories lacking those terms.
                SELECT tenant, scope, scope_id, key,
                    0.5 + 0.5 * bm25 / greatest((SELECT best FROM probes), max(bm25) OVER ())
                        AS score,
                    coverage
                FROM (
                    SELECT c.tenant, c.scope, c.scope_id, c.key,
                        sum(w.idf * u.tf * {k1 + 1} / (u.tf + {k1} * (
                            {1 - b} + {b} * length(c.terms) / t.avg_length))) AS bm25,
                        -- The share of the query's term weight the memory holds.
                        least(1, sum(w.idf) / (SELECT weight FROM probes)) AS coverage
                    FROM candidates c
                    CROSS JOIN LATERAL (
                        SELECT x.lexeme, coalesce(cardinality(x.positions), 1) AS tf
                        FROM unnest(c.terms) x
                    ) u
                    JOIN weights w ON w.lexeme = u.lexeme
                    CROSS JOIN term_totals t
                    GROUP BY c.tenant, c.scope, c.scope_id, c.key
                ) scored
                ORDER BY score DESC, key, scope, scope_id
                LIMIT {window}
            )
        """

    def _contextual_ctes(
        self,
        params: Params,
        query: str,
        where: str,
        restriction: Restriction,
        want: int,
        check_large_owners: bool = False,
    ) -> str:
        """CTEs ``words`` and ``fuzzy`` (identity, score), each at most ``want`` rows, best
        first, and ``contextual``, both together.

        Word matches come first. The trigram fallback for misspellings runs only when they do
        not fill the window: its cost grows with how common the words' trigrams are, so it is
        kept off the path of queries that full text already answers.
        """
        positive, required = split_query(query)
        # (The gates read term_totals, which only the BM25 statement has.)
        owner_size, statistics = _OwnerSize(None, None, ""), None
        if self.match == "all" or not _WORD.search(positive):
            # Exclusions alone ("-coffee") ask for every memory without the word: nothing to
            # rank by, so the web-search statement answers, as it always did.
            words = (
                f"words AS MATERIALIZED ({self._all_words(params, query, where, params.add(want))})"
            )
        else:
            owner_size = self._owner_size(params, restriction, check_large_owners)
            statistics = self._statistics(params, restriction)
            words = self._best_matching(
                params, positive, required, where, restriction, want, owner_size, statistics
            )
        window = params.add(want)
        fuzzy = [params.add(word) for word in fuzzy_words(query)]
        # Added only when used: PostgreSQL rejects a parameter that no expression types.
        own_tenant = params.add(restriction.tenant) if fuzzy else ""
        # Words the owner's memories hold, when the search is within one owner: another
        # owner's words decide nothing here (and on a cluster the look-up stays on the
        # owner's node).
        own_words = ""
        if fuzzy and restriction.owner is not None:
            scope, scope_id = restriction.owner
            own_words = (
                f" AND x.scope = {params.add(scope)} AND x.scope_id = {params.add(scope_id)}"
            )
        config = params.add(self.layout.text_search_config) if fuzzy else ""
        # A lexeme's (q.lexeme) document frequency, where the statistics count the memories
        # searched: an owner's own, or the tenant's across owners.
        counted = None
        if statistics and (restriction.owner is None or self.term_statistics == "owner"):
            counted = statistics[0]

        # Only a word the table has never seen (as a full-text lexeme) can be a misspelling
        # worth a trigram search; it becomes NULL otherwise, and a NULL key makes its trigram
        # index scan return nothing. A word the statistics count (the owner's, or the
        # tenant's across owners) is known without asking the full-text index, whose
        # look-up within an owner of 50,000 intersected all of the owner's rows with the
        # word's: 3-5 ms a word.
        def uncounted(word: str) -> str:
            if counted is None:
                return ""
            lexemes = f"tsvector_to_array(to_tsvector({config}::text::regconfig, {word}))"
            return f"""AND EXISTS (SELECT 1 FROM unnest({lexemes}) q(lexeme)
                        WHERE coalesce({counted}, 0) = 0)"""

        suspects = [
            f"""CASE WHEN length({w}) >= {FUZZY_MIN_WORD_LENGTH}
                    AND numnode(plainto_tsquery({config}::text::regconfig, {w})) > 0
                    {uncounted(w)}
                    AND NOT EXISTS (SELECT 1 FROM {self.table} x
                        WHERE x.tenant = {own_tenant}{own_words}
                          AND {self._words(params, "x")}
                              @@ plainto_tsquery({config}::text::regconfig, {w}))
                THEN {w} END AS suspect{number}"""
            for number, w in enumerate(fuzzy)
        ]
        # Judged once per query, and only if the trigram step runs (a plan holding the
        # look-ups in each branch that uses them cost every search their setting up).
        misspelt = f"misspelt AS MATERIALIZED (SELECT {', '.join(suspects)})," if suspects else ""
        if suspects:
            any_suspect = " OR ".join(
                f"(SELECT suspect{number} FROM misspelt) <% m.content"
                for number in range(len(suspects))
            )
            # Ranked by how well all the query's words appear, so that the correctly spelt
            # words still decide between the rows a misspelt one brings in.
            fuzzy_score = (
                "(" + " + ".join(f"word_similarity({w}, m.content)" for w in fuzzy) + ")"
                f" / {len(fuzzy)}"
            )
            threshold = "current_setting('pg_trgm.word_similarity_threshold')::float8"
            candidates_match = f"({any_suspect})"
            fuzzy_match = f"{fuzzy_score} >= {threshold}"
        else:
            fuzzy_score, candidates_match, fuzzy_match = "0", "FALSE", "FALSE"

        def trigram_candidates(gate: str, restricted: str) -> str:
            # A misspelling of a common word matches most of the table; scoring is bounded
            # to the first candidates found.
            return f"""(SELECT {M_OWNER_KEY}, m.content FROM {self.table} m
                WHERE (SELECT count(*) FROM words) < {window} AND {gate}
                  AND {CONTEXTUAL} AND {restricted} AND {candidates_match}
                LIMIT {FUZZY_MAX_CANDIDATES})"""

        # A large owner is checked on the rows the trigram index finds.
        large = owner_size.large if suspects else None
        candidates = _by_owner_size(large, where, trigram_candidates)
        return f"""
            {words},{misspelt}
            fuzzy AS MATERIALIZED (
                SELECT {M_OWNER_KEY}, 0.5 * {fuzzy_score} AS score, {fuzzy_score} AS coverage
                FROM ({candidates}) AS m
                WHERE {fuzzy_match} AND NOT EXISTS (
                    SELECT 1 FROM words w
                    WHERE (w.scope, w.scope_id, w.key) = (m.scope, m.scope_id, m.key))
                ORDER BY score DESC, m.key, m.scope, m.scope_id
                LIMIT {window}
            ),
            contextual AS (
                SELECT {OWNER_KEY}, score, coverage FROM words
                UNION ALL SELECT {OWNER_KEY}, score, coverage FROM fuzzy
            )
        """

    def contextual_search(
        self,
        query: str,
        restriction: Restriction,
        page: Page,
    ) -> Query:
        limit, offset, min_score = page
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        ctes = self._contextual_ctes(
            params, query, where, restriction, limit + offset, check_large_owners=True
        )
        sql = f"""
            WITH {ctes}
            SELECT {self._entry(params, restriction)}, c.score::float8 AS score
            FROM contextual c JOIN {self.table} m USING ({OWNER_KEY})
            WHERE {_at_least(params, "c.score", min_score)}{self._pinned(params, restriction)}
            {_page(params, "c.score DESC", limit, offset)}
        """
        return Query(sql, params.values)

    def hybrid_search(
        self,
        query: str,
        embedding: Any,
        restriction: Restriction,
        page: Page,
        *,
        candidates: int,
        rrf_k: int,
        passages: bool = True,
    ) -> Query:
        """Reciprocal-rank fusion of semantic and contextual candidates; ``passages`` as in
        :meth:`semantic_search`."""
        limit, offset, min_score = page
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        vector = f"{params.add(embedding)}::{self.vector}"
        window = max(candidates, limit + offset)
        pool = params.add(window)
        k = params.add(float(rrf_k))
        ctes = self._contextual_ctes(params, query, where, restriction, window)
        where = self._graph_conditions(params, restriction)  # for the graph walks
        # Reciprocal-rank fusion in the database, in one round trip: each index ranks its own
        # candidates, ranks are fused as sum(1 / (k + rank)), and the sum is scaled by (k+1)/2
        # so that first place in both lists scores 1.
        own = self._nearest(M_OWNER_KEY, vector, where, pool, "distance")
        if passages:
            passage_hits = self._passage_hits(params, vector, where, restriction, pool)
            tenant = params.add(restriction.tenant)
            semantic = f"""
                own AS MATERIALIZED ({own}),
                passage_hits AS MATERIALIZED ({passage_hits}),
                semantic AS (
                    SELECT {OWNER_KEY}, min(distance) AS distance FROM (
                        SELECT {OWNER_KEY}, distance FROM own
                        UNION ALL
                        SELECT {tenant}, scope, scope_id, key, distance FROM passage_hits
                    ) both_kinds GROUP BY {OWNER_KEY}
                )"""
            flag = "FALSE"
        else:
            semantic = f"semantic AS MATERIALIZED ({own})"
            flag = self._passages_exist(params, restriction)
        if self.match == "all":
            # Plain reciprocal-rank fusion, as releases before BM25 ranked.
            weight, semantic_weight = "1.0", "1.0"
        else:
            # Any-term matching finds a word in common with almost any question, so each side
            # counts by how sure it is: the semantic rank by its cosine, the word rank by the
            # square of the share of the query's term weight the memory holds (rare terms
            # weigh most; half the weight gets a quarter of the vote). Plain rank fusion let
            # one shared common word outvote the nearest meaning, and could not let a memory
            # holding the asked-for identifier beat its near-miss twin that embeds closer.
            # A memory holding less than half the weight gets no word vote: it shares a word
            # or two with the question, not what the question asks, and a fifth to a half of
            # the weight still outvoted the nearest meaning by the small cosine margins that
            # separate paraphrases (and more often within one owner, whose statistics make
            # its common words rarer than the tenant's do).
            weight = (
                f"CASE WHEN coverage >= {WORD_VOTE_COVERAGE} THEN coverage * coverage ELSE 0 END"
            )
            semantic_weight = "greatest(s.similarity, 0)"
        sql = f"""
            WITH {semantic},
            semantic_ranked AS (
                SELECT {OWNER_KEY}, {self.layout.score_of("distance")} AS semantic_score,
                       {self.layout.cosine_of("distance")} AS similarity,
                       row_number() OVER (ORDER BY {RESORTED}, {OWNER_KEY}) AS rank
                FROM semantic
            ),
            {ctes},
            contextual_ranked AS (
                SELECT {OWNER_KEY}, score AS contextual_score, {weight} AS weight,
                       row_number() OVER (ORDER BY {weight} DESC, score DESC, {OWNER_KEY})
                           AS rank
                FROM contextual
            ),
            fused AS (
                SELECT {OWNER_KEY},
                    (COALESCE({semantic_weight} / ({k} + s.rank), 0)
                        + COALESCE(c.weight / ({k} + c.rank), 0)) * ({k} + 1) / 2 AS score,
                    s.semantic_score, c.contextual_score
                FROM semantic_ranked s
                FULL OUTER JOIN contextual_ranked c USING ({OWNER_KEY})
            )
            SELECT {self._entry(params, restriction)}, f.score::float8 AS score, f.semantic_score,
                   f.contextual_score::float8 AS contextual_score, {flag} AS passages_exist
            FROM fused f JOIN {self.table} m USING ({OWNER_KEY})
            WHERE {_at_least(params, "f.score", min_score)}{self._pinned(params, restriction)}
            {_page(params, "f.score DESC", limit, offset)}
        """
        return self._walked(sql, params, restriction)

    def ranked(
        self,
        candidates: Query,
        ranking: Ranking,
        cosine: bool,
        page: Page,
    ) -> Query:
        """``candidates`` (a search's statement, asked for more rows than the page) weighed
        by ``ranking`` in the database, best first, then the page. ``cosine``: the
        candidates are a semantic search's, whose ``similarity`` is a cosine in [-1, 1]
        (mapped to [0, 1]); otherwise their score is in [0, 1] already."""
        limit, offset, min_score = page
        params = Params(list(candidates.args))
        relevance = "(1 + c.similarity) / 2" if cosine else "c.score"
        half_life = params.add(ranking.half_life.total_seconds())
        # Age since the last read, else since created; never negative (a reader's clock
        # may run ahead of the server's).
        age = "greatest(0, extract(epoch FROM now() - coalesce(c.last_accessed_at, c.created_at)))"
        weights = [params.add(w) for w in (ranking.relevance, ranking.recency, ranking.importance)]
        score = (
            f"{weights[0]}::float8 * relevance_score + {weights[1]}::float8 * recency_score "
            f"+ {weights[2]}::float8 * importance_score"
        )
        sql = f"""
            WITH candidates AS ({candidates.sql}),
            parts AS (
                SELECT c.*,
                    greatest(0, least(1, {relevance}))::float8 AS relevance_score,
                    power(0.5, {age} / {half_life}::float8)::float8 AS recency_score,
                    c.importance::float8 AS importance_score
                FROM candidates c
            )
            SELECT *, ({score})::float8 AS ranked_score FROM parts
            WHERE {_at_least(params, score, min_score)}
            {_page(params, "ranked_score DESC", limit, offset)}
        """
        return Query(sql, params.values, candidates.before)

    def temporal_search(
        self,
        query: str | None,
        restriction: Restriction,
        page: Page,
    ) -> Query:
        """Newest first; with a query, among what a contextual search of it finds first
        (its words matched as CONTEXTUAL matches them, up to four times the page and at
        least :data:`TEMPORAL_CANDIDATES`): a question finds what its words find."""
        limit, offset, min_score = page
        params = Params()
        where = restriction.conditions(params, self.refresh_check)
        score = "1.0 / (1.0 + extract(epoch FROM now() - m.updated_at) / 3600.0)"
        if query is None:
            sql = f"""
                SELECT {self._entry(params, restriction)}, ({score})::float8 AS score
                FROM {self.table} m
                WHERE {where} AND {_at_least(params, score, min_score)}
                {_page(params, "m.updated_at DESC", limit, offset)}
            """
            return Query(sql, params.values)
        want = max(4 * (limit + offset), TEMPORAL_CANDIDATES)
        ctes = self._contextual_ctes(params, query, where, restriction, want)
        sql = f"""
            WITH {ctes}
            SELECT {self._entry(params, restriction)}, ({score})::float8 AS score
            FROM contextual c JOIN {self.table} m USING ({OWNER_KEY})
            WHERE {_at_least(params, score, min_score)}{self._pinned(params, restriction)}
            {_page(params, "m.updated_at DESC, m.key, m.scope, m.scope_id", limit, offset)}
        """
        return Query(sql, params.values)

    def similar(
        self,
        target: Identity,
        restriction: Restriction,
        *,
        limit: int,
        min_score: float | None,
        vector: Any = None,
    ) -> Query:
        """The memories nearest ``target``'s stored vector; ``vector``, when given, is that
        vector (on a cluster, where the statement cannot read it from another owner's node,
        the caller reads it first with :meth:`probe_state`)."""
        params = Params([restriction.tenant, *target])
        where = self._graph_conditions(params, restriction)
        score = self.layout.score_of("distance")
        # A scalar subquery becomes an InitPlan parameter, which the HNSW index can order by:
        # the stored vector is used as is, never re-embedded.
        probe = (
            f"(SELECT p.embedding FROM {self.table} p WHERE p.tenant = $1 AND p.scope = $2 "
            f"AND p.scope_id = $3 AND p.key = $4 AND {live(self.refresh_check, 'p')})"
        )
        if vector is not None:
            probe = f"{params.add(vector)}::{self.layout.vector_column_type}"
            where += " AND m.tenant = $1"  # the target's tenant, as the probe names it
        sql = f"""
            WITH hits AS MATERIALIZED (
                SELECT {self._entry(params, restriction)}, m.embedding {self.op} {probe} AS distance
                FROM {self.table} m
                WHERE m.embedding IS NOT NULL AND {where}
                  AND (m.scope, m.scope_id, m.key) <> ($2, $3, $4)
                ORDER BY m.embedding {self.op} {probe}
                LIMIT {params.add(limit)}
            )
            SELECT *, {score} AS score, {score} AS semantic_score FROM hits
            WHERE distance IS NOT NULL AND {_at_least(params, score, min_score)}
            ORDER BY {RESORTED}, key, scope, scope_id
        """
        return self._walked(sql, params, restriction)

    def probe_state(self, tenant: str, target: Identity) -> Query:
        """Whether ``target`` is live (a row), whether it has an embedding, and that
        embedding."""
        sql = (
            f"SELECT m.embedding IS NOT NULL AS has_embedding, m.embedding FROM {self.table} m "
            f"WHERE m.tenant = $1 AND m.scope = $2 AND m.scope_id = $3 AND m.key = $4 "
            f"AND {live(self.refresh_check)}"
        )
        return Query(sql, [tenant, *target])

"""``store_conversation``: turns kept addressable by id, indexed by their context and date."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

import pytest

from pepperpy_pg_memory import (
    HashingEmbedder,
    MemoryIndex,
    MemoryQuery,
    MemoryScope,
    MemoryValidationError,
    PostgresConfig,
    PostgresStorage,
    Turn,
)
from pepperpy_pg_memory.conversations import (
    StoredTurn,
    TimeCues,
    blend,
    indexed_text,
    long_date,
    relative_dates,
    time_cues,
)

ANA = {"scope": MemoryScope.USER, "scope_id": "ana"}
FRIDAY = date(2023, 3, 17)


def _pet_talk(at: date | None = FRIDAY) -> list[Turn]:
    return [
        Turn(id="t1", speaker="Ana", text="Guess what I did yesterday!", at=at),
        Turn(id="t2", speaker="Bruno", text="What? Tell me!", at=at),
        Turn(id="t3", speaker="Ana", text="I adopted a dog from the shelter.", at=at),
        Turn(id="t4", speaker="Bruno", text="Wow! What did you name her?", at=at),
        Turn(id="t5", speaker="Ana", text="Biscuit! After my grandmother's cat.", at=at),
    ]


# --- the indexing rules, without a database ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I went yesterday", [("yesterday", "Thursday 16 March 2023")]),
        ("the day before yesterday", [("the day before yesterday", "Wednesday 15 March 2023")]),
        ("Last Friday was fun", [("last friday", "Friday 10 March 2023")]),
        ("a couple of days ago", [("a couple of days ago", "Wednesday 15 March 2023")]),
        ("two weeks ago", [("two weeks ago", "the week of Friday 3 March 2023")]),
        ("3 months ago", [("3 months ago", "December 2022")]),
        ("last weekend", [("last weekend", "the weekend of Saturday 11 March 2023")]),
        ("next Tuesday", [("next tuesday", "Tuesday 21 March 2023")]),
        ("last month and last year", [("last month", "February 2023"), ("last year", "2022")]),
        ("this morning, yesterday and yesterday again", [
            ("this morning", "Friday 17 March 2023"), ("yesterday", "Thursday 16 March 2023")
        ]),
        ("nothing relative here, only the yesteryear", []),
    ],
)  # fmt: skip
def test_relative_dates_resolve_against_the_turns_day(
    text: str, expected: list[tuple[str, str]]
) -> None:
    assert relative_dates(text, FRIDAY) == expected


def test_a_turn_is_indexed_with_its_date_the_turns_before_and_its_dates() -> None:
    at = datetime(2023, 3, 17, 20, 15, tzinfo=timezone.utc)
    session = [StoredTurn(t.id, t.speaker, t.text, at, i) for i, t in enumerate(_pet_talk())]
    text, start = indexed_text(session, 4)
    assert text.splitlines() == [
        "Friday 17 March 2023",
        "Ana: I adopted a dog from the shelter.",
        "Bruno: Wow! What did you name her?",
        "Ana: Biscuit! After my grandmother's cat.",
    ]
    assert text[start : start + len(session[4].text)] == session[4].text
    first, start = indexed_text(session, 0)
    assert first.splitlines() == [
        "Friday 17 March 2023",
        "Ana: Guess what I did yesterday!",
        "(yesterday: Thursday 16 March 2023)",
    ]
    assert first[start:].startswith("Guess what")
    assert long_date(date(2024, 2, 29)) == "Thursday 29 February 2024"


def test_a_turns_vector_leans_on_the_turn() -> None:
    import numpy as np

    own = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    context = np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    mixed = blend(own, context)
    assert mixed[0][0] > mixed[0][1] > 0
    assert np.isclose(np.linalg.norm(mixed[0]), 1.0)
    assert not np.isnan(mixed[1]).any()  # an all-zero pair stays zero, not NaN


# --- the write ------------------------------------------------------------------------------


async def test_turns_are_memories_keyed_by_their_ids(storage: PostgresStorage[str, Any]) -> None:
    written = await storage.store_conversation("s1", _pet_talk(), **ANA)
    assert written == 5
    entry = await storage.retrieve("t5", **ANA)
    assert entry.value == {
        "speaker": "Ana",
        "text": "Biscuit! After my grandmother's cat.",
        "at": "2023-03-17T00:00:00+00:00",
        "session_id": "s1",
    }
    place = entry.metadata["conversation"]
    assert (place["session_id"], place["position"], place["speaker"]) == ("s1", 4, "Ana")
    assert "What did you name her?" in entry.text and entry.text.startswith("Friday 17 March")
    assert entry.type.value == "long_term" and entry.scope is MemoryScope.USER


async def test_a_short_reply_is_found_by_the_words_of_its_context(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store_conversation("s1", _pet_talk(), **ANA)
    results = await storage.search(
        MemoryQuery(
            query="what is the name of the dog", index_type=MemoryIndex.CONTEXTUAL, limit=5, **ANA
        )
    )
    assert "t5" in [result.entry.key for result in results]
    dated = await storage.search(
        MemoryQuery(query="Thursday 16 March", index_type=MemoryIndex.CONTEXTUAL, **ANA)
    )
    # Every turn says March 2023 (its date); only t1's "yesterday" says Thursday the 16th.
    assert dated[0].entry.key == "t1" and dated[0].score > dated[1].score


async def test_a_turn_that_asks_scores_below_the_answer_after_it(
    storage: PostgresStorage[str, Any],
) -> None:
    # "How's the job going?" holds a question's words; the reply after it holds the answer.
    turns = [
        Turn(id="q", speaker="Ana", text="How's the job going?", at=FRIDAY),
        Turn(id="a", speaker="Bruno", text="I quit! I'm an analyst at Brightline.", at=FRIDAY),
        Turn(id="x", speaker="Ana", text="Good for you.", at=FRIDAY),
    ]  # fmt: skip
    await storage.store_conversation("s1", turns, **ANA)
    await storage.refresh_term_statistics()
    question = "how is Bruno's job going"
    for mode in (MemoryIndex.SEMANTIC, MemoryIndex.CONTEXTUAL, MemoryIndex.HYBRID):
        found = await storage.search(MemoryQuery(query=question, index_type=mode, limit=3, **ANA))
        keys = [result.entry.key for result in found]
        assert keys.index("a") < keys.index("q"), (mode, keys)
        scores = [result.score for result in found]
        assert scores == sorted(scores, reverse=True)
        # Pages agree with the whole list.
        pages = [
            await storage.search(
                MemoryQuery(query=question, index_type=mode, limit=1, offset=offset, **ANA)
            )
            for offset in range(3)
        ]
        assert [page[0].entry.key for page in pages] == keys
    # A ranking weighs memories itself, and newest-first stays newest first.
    newest = await storage.search(
        MemoryQuery(query="job", index_type=MemoryIndex.TEMPORAL, limit=3, **ANA)
    )
    assert all(result.score > 0 for result in newest)


async def test_turns_can_be_filtered_by_session_and_moment(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store_conversation("s1", _pet_talk(), **ANA)
    later = [Turn(id="u1", speaker="Ana", text="Biscuit learned to sit.", at=date(2023, 5, 2))]
    await storage.store_conversation("s2", later, **ANA)
    in_may = await storage.list(filter={"conversation.at": {"$gte": "2023-05-01"}}, **ANA)
    assert [entry.key for entry in in_may] == ["u1"]
    first = await storage.list(filter={"conversation.session_id": "s1"}, **ANA)
    assert sorted(entry.key for entry in first) == ["t1", "t2", "t3", "t4", "t5"]


async def test_a_session_stored_in_parts_keeps_its_order_and_context(
    storage: PostgresStorage[str, Any],
) -> None:
    turns = _pet_talk(at=None)
    await storage.store_conversation("s1", turns[:3], **ANA)
    await storage.store_conversation("s1", turns[3:], **ANA)
    reply = await storage.retrieve("t5", **ANA)
    assert reply.metadata["conversation"]["position"] == 4
    # The turn before the call's first turn came from the database.
    assert "Ana: I adopted a dog from the shelter." in reply.text
    question = await storage.retrieve("t4", **ANA)
    assert "I adopted a dog" in question.text
    # No moment given: the turns share the first call's moment.
    assert reply.value["at"] == (await storage.retrieve("t1", **ANA)).value["at"]


async def test_storing_a_turn_again_replaces_it_in_its_place(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store_conversation("s1", _pet_talk(), **ANA)
    fixed = Turn(id="t3", speaker="Ana", text="I adopted a beagle from the shelter.", at=FRIDAY)
    assert await storage.store_conversation("s1", [fixed], **ANA) == 1
    assert await storage.count(**ANA) == 5
    entry = await storage.retrieve("t3", **ANA)
    assert entry.metadata["conversation"]["position"] == 2
    assert entry.value["text"] == "I adopted a beagle from the shelter."
    assert "Bruno: What? Tell me!" in entry.text  # its context is still the turns before it
    assert [version.version for version in await storage.history("t3", **ANA)] == [2, 1]


async def test_an_id_given_twice_writes_nothing(storage: PostgresStorage[str, Any]) -> None:
    turns = [*_pet_talk(), Turn(id="t2", speaker="Bruno", text="again", at=FRIDAY)]
    with pytest.raises(MemoryValidationError, match="'t2' is given twice"):
        await storage.store_conversation("s1", turns, **ANA)
    assert await storage.count() == 0


@pytest.mark.parametrize(
    ("session_id", "turns", "metadata", "message"),
    [
        ("", [{"id": "a", "speaker": "Ana", "text": "hi"}], None, "session_id"),
        ("s", [{"id": "a", "text": "hi"}], None, "turn 0"),
        ("s", [{"id": "a", "speaker": "A\nB", "text": "hi"}], None, "one line"),
        ("s", "hello", None, "list of Turn"),
        ("s", [{"id": "a", "speaker": "Ana", "text": "hi"}], {"conversation": 1}, "reserved|place"),
        ("s", [{"id": "", "speaker": "Ana", "text": "hi"}], None, "turn 0"),
        ("s", [{"id": "a\x00b", "speaker": "Ana", "text": "hi"}], None, "key"),
    ],
)
async def test_bad_input_is_refused_with_nothing_written(
    storage: PostgresStorage[str, Any],
    session_id: str,
    turns: Any,
    metadata: Any,
    message: str,
) -> None:
    with pytest.raises(MemoryValidationError, match=message):
        await storage.store_conversation(session_id, turns, metadata=metadata, **ANA)
    assert await storage.count() == 0


async def test_a_conversation_without_an_owner_is_refused_before_anything_is_read(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store_conversation("s1", _pet_talk(), scope=MemoryScope.USER, scope_id="bruno")
    with pytest.raises(MemoryValidationError, match="invalid scope None"):
        await storage.store_conversation("s1", [Turn(id="x", speaker="Ana", text="hi")], scope=None)
    assert await storage.count() == 5


async def test_one_bad_turn_writes_none_of_the_others(storage: PostgresStorage[str, Any]) -> None:
    turns: list[Any] = [*_pet_talk(), {"id": "t6", "speaker": "Ana", "text": "bad\x00"}]
    with pytest.raises(MemoryValidationError):
        await storage.store_conversation("s1", turns, **ANA)
    assert await storage.count() == 0


async def test_another_owners_turns_are_untouched(storage: PostgresStorage[str, Any]) -> None:
    bruno = {"scope": MemoryScope.USER, "scope_id": "bruno"}
    await storage.store_conversation("s1", _pet_talk(), **bruno)
    await storage.store_conversation(
        "s1", [Turn(id="t5", speaker="Ana", text="Mine.", at=FRIDAY)], **ANA
    )
    theirs = await storage.retrieve("t5", **bruno)
    assert theirs.value["text"] == "Biscuit! After my grandmother's cat."
    assert theirs.version == 1
    mine = await storage.retrieve("t5", **ANA)
    # Ana's session holds only her turn: Bruno's turns are not its context.
    assert mine.metadata["conversation"]["position"] == 0
    assert "grandmother" not in mine.text


async def test_a_session_scope_defaults_to_the_session(storage: PostgresStorage[str, Any]) -> None:
    await storage.store_conversation("chat-9", _pet_talk(), scope=MemoryScope.SESSION)
    entry = await storage.retrieve("t5", scope=MemoryScope.SESSION, scope_id="chat-9")
    assert entry.value["session_id"] == "chat-9"


async def test_repeated_turns_stay_and_the_quota_does_not_count_them(
    make_config: Any,
) -> None:
    config: PostgresConfig = make_config(max_memories_per_owner=2, dedupe_threshold=0.9)
    async with PostgresStorage[str, Any](config, HashingEmbedder(64)) as store:
        turns = [Turn(id=f"y{i}", speaker="Ana", text="Yes!", at=FRIDAY) for i in range(4)]
        assert await store.store_conversation("s1", turns, **ANA) == 4
        assert await store.count(**ANA) == 4
        report = await store.consolidate(**ANA)
        assert await store.count(**ANA) == 4, report


async def test_reindexing_gives_a_turn_the_vector_its_write_gave(
    storage: PostgresStorage[str, Any],
) -> None:
    await storage.store_conversation("s1", _pet_talk(), **ANA)
    await storage.store("note", "Ana likes dogs", **ANA)
    before = {
        key: (await storage.retrieve(key, include_embedding=True, **ANA)).embedding
        for key in ("t5", "note")
    }
    await storage.reindex(MemoryIndex.SEMANTIC)
    for key, vector in before.items():
        after = (await storage.retrieve(key, include_embedding=True, **ANA)).embedding
        assert after == pytest.approx(vector, abs=1e-5), key
    # Not the plain embedding of its indexed text: that is what a turn's vector leans away from.
    reply = await storage.retrieve("t5", include_embedding=True, **ANA)
    plain = await storage.embedder.embed_documents([reply.text])
    assert list(plain[0]) != pytest.approx(reply.embedding, abs=1e-3)


async def test_a_whole_session_stored_again_keeps_its_places_and_new_context(
    storage: PostgresStorage[str, Any],
) -> None:
    first = [Turn(id=f"w{i:02d}", speaker="Ana", text=f"line {i}", at=FRIDAY) for i in range(12)]
    await storage.store_conversation("s1", first, **ANA)
    again = [
        turn.model_copy(update={"text": f"line {i}, corrected"}) for i, turn in enumerate(first)
    ]
    assert await storage.store_conversation("s1", again, **ANA) == 12
    assert await storage.count(**ANA) == 12
    turn = await storage.retrieve("w05", **ANA)
    assert turn.metadata["conversation"]["position"] == 5
    assert turn.text.splitlines()[1:] == [
        "Ana: line 3, corrected",
        "Ana: line 4, corrected",
        "Ana: line 5, corrected",
    ]


# --- questions that say when --------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("When did Ana adopt a dog?", None),
        ("may I ask what she did?", None),
        ("What did they march for?", None),
        ("Which city is Ana flying to in May 2023?", TimeCues(months=frozenset({(2023, 5)}))),
        ("What did Bo do last May?", TimeCues(months=frozenset({(None, 5)}))),
        ("Was it in mid-June?", TimeCues(months=frozenset({(None, 6)}))),
        ("What happened on 5 May 2023?", TimeCues(days=frozenset({date(2023, 5, 5)}))),
        ("What happened on May 5, 2023?", TimeCues(days=frozenset({date(2023, 5, 5)}))),
        ("What did he do in 2022?", TimeCues(years=frozenset({2022}))),
        ("What changed after May 2023?", TimeCues(after=date(2023, 5, 31))),
        ("What did she plan before March 2024?", TimeCues(before=date(2024, 3, 1))),
        ("What has she done since 2022?", TimeCues(after=date(2022, 12, 31))),
        ("What is Caroline's job now?", None),
        ("What did she do after the wedding?", TimeCues(event=("after", "the wedding"))),
        ("What did she do after the 5th of May 2023?", TimeCues(after=date(2023, 5, 5))),
        (
            "Where did he go before his trip to Lisbon?",
            TimeCues(event=("before", "his trip to Lisbon")),
        ),
    ],
)  # fmt: skip
def test_what_a_question_says_about_time(question: str, expected: TimeCues | None) -> None:
    assert time_cues(question) == expected


def _said(at: date, *lines: tuple[str, str, str]) -> list[Turn]:
    return [Turn(id=turn_id, speaker=who, text=text, at=at) for turn_id, who, text in lines]


async def _keys(storage: PostgresStorage[str, Any], question: str, mode: MemoryIndex) -> list[str]:
    found = await storage.search(MemoryQuery(query=question, index_type=mode, limit=3, **ANA))
    return [result.entry.key for result in found]


async def _store_sessions(storage: PostgresStorage[str, Any], *sessions: list[Turn]) -> None:
    for number, turns in enumerate(sessions, 1):
        await storage.store_conversation(f"s{number}", turns, **ANA)
    await storage.refresh_term_statistics()
    # A store learns that it holds turns from the first search that finds one.
    await storage.search(MemoryQuery(query="anything", index_type=MemoryIndex.CONTEXTUAL, **ANA))


async def _moves_up(
    storage: PostgresStorage[str, Any], plain: str, timed: str, expected: str
) -> None:
    """Asked with its time cue, ``expected`` comes first in a word search, where the plain
    question put another turn first; a hybrid search ranks it no lower than before."""
    before = await _keys(storage, plain, MemoryIndex.CONTEXTUAL)
    after = await _keys(storage, timed, MemoryIndex.CONTEXTUAL)
    assert before[0] != expected and after[0] == expected, (before, after)
    before = await _keys(storage, plain, MemoryIndex.HYBRID)
    after = await _keys(storage, timed, MemoryIndex.HYBRID)
    assert after.index(expected) <= before.index(expected), (before, after)


async def test_a_question_about_one_speaker_prefers_what_that_speaker_said(
    storage: PostgresStorage[str, Any],
) -> None:
    await _store_sessions(
        storage,
        _said(date(2023, 1, 9), ("a1", "Ana", "Teaching at Hillcrest school, I work there.")),
        _said(date(2023, 2, 6), ("b1", "Bruno", "Ana, my job: I work as a nurse at Lakeside.")),
    )
    await _moves_up(
        storage, "Where does she work, what job?", "Where does Ana work, what job?", "a1"
    )


async def test_a_question_naming_a_month_prefers_that_months_turns(
    storage: PostgresStorage[str, Any],
) -> None:
    await _store_sessions(
        storage,
        _said(date(2023, 3, 6), ("march", "Ana", "I am flying to see my sister in Denver.")),
        _said(date(2023, 5, 8), ("may", "Ana", "Booked a flight to see my brother in Austin.")),
    )
    asked = "Who is Ana flying to see in May 2023?"
    await _moves_up(storage, "Who is Ana flying to see?", asked, "may")
    # Weighed down, not left out: March's turn is still found.
    assert "march" in await _keys(storage, asked, MemoryIndex.CONTEXTUAL)


async def test_a_question_dated_by_an_event_prefers_the_turns_after_it(
    storage: PostgresStorage[str, Any],
) -> None:
    await _store_sessions(
        storage,
        _said(date(2023, 1, 9), ("yoga", "Ana", "I started yoga classes on Monday.")),
        _said(date(2023, 3, 13), ("wedding", "Ana", "The wedding was lovely, we danced.")),
        _said(date(2023, 5, 8), ("pottery", "Ana", "I signed up for pottery classes.")),
    )
    plain = "Which classes did Ana start?"
    await _moves_up(storage, plain, "Which classes did Ana start after the wedding?", "pottery")
    before = await _keys(
        storage, "Which classes did Ana start before the wedding?", MemoryIndex.CONTEXTUAL
    )
    assert before[0] == "yoga"

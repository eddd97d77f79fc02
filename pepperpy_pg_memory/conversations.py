"""Conversation turns as memories that are found by what they are about.

A turn of a chat ("Biscuit! After my grandmother's cat.") often means nothing alone: the
question it answers is in the turn before, the subject two turns before, and when it was
said is the session's date. :func:`indexed_text` writes the text a turn is indexed by — its
date, the turns just before it, the turn, and the relative dates it mentions resolved
against its date ("yesterday: Thursday 16 March 2023") — so that word search matches it by
its context. :func:`blend` gives the turn one vector that leans on the turn's own meaning
and less on its context, so that semantic search does too, at the cost of one vector per
memory (a second vector per turn, as a passage, would make every owner-scoped search scan
the passages' index as well).

Plain functions over plain data: the write itself is :meth:`PostgresStorage.store_conversation`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np

from .errors import MemoryValidationError
from .models import Turn
from .types import CONVERSATION_RECORDS

__all__ = [
    "Turn",
    "StoredTurn",
    "CONVERSATION_FIELD",
    "CONVERSATION_RECORDS",
    "CONTEXT_TURNS",
    "CONTEXT_WEIGHT",
    "blend",
    "indexed_text",
    "long_date",
    "own_text",
    "turn_own_text",
    "turn_words",
    "asks",
    "relevance_weight",
    "QUESTION_TURN_WEIGHT",
    "relative_dates",
    "turns_of",
    "TimeCues",
    "time_cues",
    "question_weights",
    "turn_moment",
    "turn_speaker",
    "OTHER_TIME_WEIGHT",
    "OTHER_SPEAKER_WEIGHT",
]

CONVERSATION_FIELD = "conversation"
"""The metadata field a turn's session, position and moment are kept under (filter on
``conversation.session_id``, ``conversation.at``, ``conversation.position``)."""

CONTEXT_TURNS = 2
"""How many turns before a turn its indexed text repeats: a reply, the question it answers
and what the question is about."""

CONTEXT_WEIGHT = 0.4
"""The share of the context's vector in a turn's vector (the turn's own meaning has the rest)."""


@dataclass(frozen=True)
class StoredTurn:
    """A turn placed in its session: what :func:`indexed_text` reads."""

    id: str
    speaker: str
    text: str
    at: datetime
    position: int


def turns_of(turns: Sequence[Turn | Mapping[str, Any]]) -> list[Turn]:
    """The caller's turns checked: each a :class:`Turn` (or a mapping of its fields), no id
    twice."""
    if isinstance(turns, (str, bytes, Mapping)) or not isinstance(turns, Sequence):
        raise MemoryValidationError("turns must be a list of Turn (or of mappings)")
    checked: list[Turn] = []
    seen: set[str] = set()
    for position, turn in enumerate(turns):
        try:
            checked_turn = turn if isinstance(turn, Turn) else Turn.model_validate(turn)
        except ValueError as exc:
            raise MemoryValidationError(f"turn {position}: {exc}") from None
        if checked_turn.id in seen:
            raise MemoryValidationError(
                f"turn {position}: the id {checked_turn.id!r} is given twice in one call"
            )
        seen.add(checked_turn.id)
        checked.append(checked_turn)
    return checked


def moment_of(at: datetime | date | None, default: datetime) -> datetime:
    """A turn's moment as an aware datetime (a bare date is its midnight, UTC)."""
    if at is None:
        return default
    if isinstance(at, datetime):
        return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
    return datetime(at.year, at.month, at.day, tzinfo=timezone.utc)


def long_date(day: date) -> str:
    """A date the way people ask about it: weekday, day, month name, year."""
    return f"{day:%A} {day.day} {day:%B} {day.year}"


def own_text(speaker: str, text: str) -> str:
    return f"{speaker}: {text}"


def indexed_text(session: Sequence[StoredTurn], index: int) -> tuple[str, int]:
    """What the turn ``session[index]`` is indexed by — its date, the :data:`CONTEXT_TURNS`
    turns before it, the turn, and its relative dates resolved — and where in it the turn's
    own text starts."""
    turn = session[index]
    day = turn.at.date()
    lines = [long_date(day)]
    lines.extend(
        own_text(before.speaker, before.text)
        for before in session[max(0, index - CONTEXT_TURNS) : index]
    )
    start = sum(len(line) + 1 for line in lines) + len(turn.speaker) + 2
    lines.append(own_text(turn.speaker, turn.text))
    resolved = relative_dates(turn.text, day)
    if resolved:
        lines.append("(" + "; ".join(f"{phrase}: {when}" for phrase, when in resolved) + ")")
    return "\n".join(lines), start


def turn_words(place: Any) -> tuple[str, int, int] | None:
    """A stored turn's speaker and where its own words are in its indexed text, read from
    its place (its metadata's :data:`CONVERSATION_FIELD`); None for a row that is not a
    turn (or whose metadata was written by hand)."""
    if not isinstance(place, dict):
        return None
    try:
        start, end = place["span"]
        speaker = place["speaker"]
    except (KeyError, TypeError, ValueError):
        return None
    if not (isinstance(start, int) and isinstance(end, int) and isinstance(speaker, str)):
        return None
    return speaker, start, end


def turn_own_text(content: str, place: Any) -> str | None:
    """A stored turn's own text ("Speaker: text") from its indexed text and its place; None
    for a row that is not a turn."""
    words = turn_words(place)
    if words is None:
        return None
    speaker, start, end = words
    return own_text(speaker, content[start:end])


QUESTION_TURN_WEIGHT = 0.5
"""The share of its score a turn that asks a question keeps in a search: it holds the words of
the questions put to the memory ("How's the job going?" for "what is her job now?") and
seldom their answer, which is in the turns around it."""

_QUESTION_MARKS = ("?", "？")


def asks(content: str, place: Any) -> bool:
    """Whether a stored turn (its indexed text and its place) is a question; False for a row
    that is not a turn."""
    words = turn_words(place)
    return words is not None and content[words[1] : words[2]].rstrip().endswith(_QUESTION_MARKS)


def relevance_weight(entry: Any) -> float:
    """The share of its relevance score a memory keeps: :data:`QUESTION_TURN_WEIGHT` for a
    conversation turn that asks a question, 1 for anything else."""
    place = entry.metadata.get(CONVERSATION_FIELD)
    return QUESTION_TURN_WEIGHT if place is not None and asks(entry.text, place) else 1.0


def blend(own: np.ndarray, context: np.ndarray, weight: float = CONTEXT_WEIGHT) -> np.ndarray:
    """Unit vectors mixing each turn's own vector with its context's."""
    mixed = (1.0 - weight) * own + weight * context
    norms = np.linalg.norm(mixed, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    result: np.ndarray = (mixed / norms).astype(np.float32)
    return result


# --- relative dates ---------------------------------------------------------------------------

_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "a couple of": 2, "a few": 3,
}  # fmt: skip
_COUNT = r"(\d{1,2}|a couple of|a few|an?|one|two|three|four|five|six|seven|eight|nine|ten)"
_RELATIVE = re.compile(
    r"\b(?:"
    r"(?P<day_before>the day before yesterday)"
    r"|(?P<yesterday>yesterday|last night)"
    r"|(?P<today>today|this morning|this afternoon|this evening|tonight)"
    r"|(?P<tomorrow>tomorrow)"
    rf"|(?P<ago>(?P<count>{_COUNT}) (?P<unit>day|week|month|year)s? ago)"
    rf"|(?P<last_weekday>last (?P<weekday>{'|'.join(_WEEKDAYS)}))"
    rf"|(?P<next_weekday>next (?P<next_day>{'|'.join(_WEEKDAYS)}))"
    r"|(?P<last_span>last (?P<span>weekend|week|month|year))"
    r"|(?P<next_span>next (?P<ahead>weekend|week|month|year))"
    r")\b",
    re.IGNORECASE,
)


def _months_back(day: date, months: int) -> date:
    month = day.month - 1 - months
    return date(day.year + month // 12, month % 12 + 1, 1)


def _weekday_before(day: date, weekday: int) -> date:
    return day - timedelta(days=(day.weekday() - weekday) % 7 or 7)


def _weekday_after(day: date, weekday: int) -> date:
    return day + timedelta(days=(weekday - day.weekday()) % 7 or 7)


def _resolve(match: re.Match[str], day: date) -> str | None:
    if match["day_before"]:
        return long_date(day - timedelta(days=2))
    if match["yesterday"]:
        return long_date(day - timedelta(days=1))
    if match["today"]:
        return long_date(day)
    if match["tomorrow"]:
        return long_date(day + timedelta(days=1))
    if match["ago"]:
        word = match["count"].lower()
        count = int(word) if word.isdigit() else _NUMBERS[word]
        unit = match["unit"].lower()
        if unit == "day":
            return long_date(day - timedelta(days=count))
        if unit == "week":
            return f"the week of {long_date(day - timedelta(weeks=count))}"
        if unit == "month":
            back = _months_back(day, count)
            return f"{back:%B} {back.year}"
        return str(day.year - count)
    if match["last_weekday"]:
        return long_date(_weekday_before(day, _WEEKDAYS.index(match["weekday"].lower())))
    if match["next_weekday"]:
        return long_date(_weekday_after(day, _WEEKDAYS.index(match["next_day"].lower())))
    span = (match["span"] or match["ahead"] or "").lower()
    ahead = bool(match["ahead"])
    if span == "weekend":
        saturday = _weekday_after(day, 5) if ahead else _weekday_before(day, 5)
        return f"the weekend of {long_date(saturday)}"
    if span == "week":
        return f"the week of {long_date(day + timedelta(weeks=1 if ahead else -1))}"
    if span == "month":
        month = _months_back(day, -1 if ahead else 1)
        return f"{month:%B} {month.year}"
    if span == "year":
        return str(day.year + (1 if ahead else -1))
    return None


def relative_dates(text: str, day: date) -> list[tuple[str, str]]:
    """The relative dates ``text`` mentions ("yesterday", "two weeks ago", "last Friday"),
    each with what it means on ``day``, in order, each phrase once."""
    found: dict[str, str] = {}
    for match in _RELATIVE.finditer(text):
        phrase = match.group(0).lower()
        if phrase not in found:
            meaning = _resolve(match, day)
            if meaning is not None:
                found[phrase] = meaning
    return list(found.items())


# --- what a question says about time ----------------------------------------------------------

_MONTHS = [
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
]  # fmt: skip
_MONTH = "|".join(_MONTHS)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:19|20)\d\d"
# A month name counts as a date only beside a date word or a number ("in May", "May 2023",
# "on 5 May", "last May"): alone, "may" and "march" are verbs.
_MONTH_DATE = re.compile(
    rf"\b(?:(?P<lead>in|during|on|of|last|this|early|late|mid|since|after|before|until|by)"
    rf"[ -](?:the )?(?:(?P<day>{_DAY}) (?:of )?)?(?P<month>{_MONTH})(?: (?P<day_led>{_DAY})\b)?"
    rf"|(?P<day_first>{_DAY}) (?:of )?(?P<month_after_day>{_MONTH})"
    rf"|(?P<month_first>{_MONTH}) (?P<day_after>{_DAY})\b"
    rf"|(?P<month_of_year>{_MONTH})(?= (?:of )?{_YEAR}))"
    rf"(?:,? (?:of )?(?P<year>{_YEAR}))?\b",
    re.IGNORECASE,
)
_AFTER = ("since", "after")
_BEFORE = ("before", "until", "by")
_YEAR_ALONE = re.compile(
    rf"\b(?P<lead>in|during|of|since|after|before|until|by) (?P<year>{_YEAR})\b", re.IGNORECASE
)
# "after the wedding", "before her trip to Lisbon": the event a question dates by.
_EVENT = re.compile(
    r"\b(?P<direction>after|before|since)\s+(?P<event>(?:the|his|her|their|my|our|your)\s+"
    r"[^?.!,;]{3,60})",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class TimeCues:
    """What a question says about when: the dates it names (``months`` as (year or None,
    month), ``years``, ``days``), a window it asks about (``after``/``before`` a date: "since
    May 2023"), and an event it dates by (``event``: "after the wedding" → ("after", "the
    wedding"), whose moment a search looks up: :meth:`around`)."""

    months: frozenset[tuple[int | None, int]] = frozenset()
    years: frozenset[int] = frozenset()
    days: frozenset[date] = frozenset()
    after: date | None = None
    before: date | None = None
    event: tuple[str, str] | None = None

    @property
    def dates(self) -> bool:
        """Whether the cues name a date or a window (an event's, once it is known)."""
        return bool(self.months or self.years or self.days or self.after or self.before)

    def around(self, moment: datetime) -> TimeCues:
        """These cues with the window their event gives, once the event's ``moment`` is known."""
        if self.event is None:
            return self
        day = moment.date()
        if self.event[0] == "before":
            return replace(self, before=day)
        return replace(self, after=day)

    def names(self, moment: datetime) -> bool:
        """Whether ``moment`` falls on a date or in a window the question names."""
        day = moment.date()
        return (
            day in self.days
            or (day.year, day.month) in self.months
            or (None, day.month) in self.months
            or day.year in self.years
            or (self.after is not None and day > self.after)
            or (self.before is not None and day < self.before)
        )


def _month_end(year: int, month: int) -> date:
    return _months_back(date(year, month, 1), -1) - timedelta(days=1)


def time_cues(question: str) -> TimeCues | None:
    """The :class:`TimeCues` of ``question``, or None when it says nothing about time."""
    months: set[tuple[int | None, int]] = set()
    days: set[date] = set()
    after: date | None = None
    before: date | None = None
    for match in _MONTH_DATE.finditer(question):
        name = next(
            match[group]
            for group in ("month", "month_after_day", "month_first", "month_of_year")
            if match[group]
        )
        if name == "may" and match["year"] is None:
            continue  # a lower-case "in may" is more often the verb's
        month = _MONTHS.index(name.lower()) + 1
        year = int(match["year"]) if match["year"] else None
        day_text = match["day"] or match["day_led"] or match["day_first"] or match["day_after"]
        day = None
        if day_text and year is not None:
            try:
                day = date(year, month, int(re.sub(r"\D", "", day_text)))
            except ValueError:
                pass  # 31 February: the month still says something
        lead = (match["lead"] or "").lower()
        if lead in _AFTER + _BEFORE and year is not None:
            edge = day or (_month_end(year, month) if lead in _AFTER else date(year, month, 1))
            after, before = (edge, before) if lead in _AFTER else (after, edge)
        elif day is not None:
            days.add(day)
        else:
            months.add((year, month))
    years: set[int] = set()
    for match in _YEAR_ALONE.finditer(question):
        year, lead = int(match["year"]), match["lead"].lower()
        if lead in _AFTER:
            after = date(year, 12, 31)
        elif lead in _BEFORE:
            before = date(year, 1, 1)
        else:
            years.add(year)
    event_match = _EVENT.search(question)
    event = None
    # ("after the 5th of May 2023" names a date, read above, not an event.)
    if event_match is not None and not _MONTH_DATE.search(event_match["event"]):
        event = (event_match["direction"].lower(), event_match["event"].strip())
    cues = TimeCues(
        frozenset(months),
        frozenset(years),
        frozenset(days),
        after,
        before,
        event,
    )
    return None if cues == TimeCues() else cues


OTHER_TIME_WEIGHT = 2 / 3
"""The share of its score a turn keeps when the question names a time (a date, a window, an
event it dates by) and the turn was said at another: weighed down, not left out — a question
naming when is still answered by turns of other days too (the plan made before, the fact it
builds on). Scores only go down, so they stay in their index's range."""

OTHER_SPEAKER_WEIGHT = 0.8
"""The share of its score a turn keeps when the question names one of the speakers found and
the turn is another's: a question about a person ("what is Caroline's job?") is mostly
answered by what that person said."""


def turn_moment(entry: Any) -> datetime | None:
    """When a stored turn was said; None for a memory that is not a turn."""
    place = entry.metadata.get(CONVERSATION_FIELD)
    if not isinstance(place, Mapping) or not isinstance(place.get("at"), str):
        return None
    try:
        return datetime.fromisoformat(place["at"])
    except ValueError:
        return None


def turn_speaker(entry: Any) -> str | None:
    """Who said a stored turn; None for a memory that is not a turn."""
    words = turn_words(entry.metadata.get(CONVERSATION_FIELD))
    return None if words is None else words[0]


def question_weights(question: str, cues: TimeCues | None, entries: Sequence[Any]) -> list[float]:
    """Per found memory (an entry), the share of its score it keeps for ``question``:
    :data:`OTHER_TIME_WEIGHT` for a turn said outside the dates and windows the question
    names (``cues``), and :data:`OTHER_SPEAKER_WEIGHT` for a turn of another speaker than the
    one it names, when it names exactly one of the speakers found. Memories that are not
    turns keep all of it."""
    moments = [turn_moment(entry) for entry in entries]
    speakers = [turn_speaker(entry) for entry in entries]
    weights = [1.0] * len(entries)
    if cues is not None and cues.dates:
        for place, moment in enumerate(moments):
            if moment is not None and not cues.names(moment):
                weights[place] *= OTHER_TIME_WEIGHT
    named = {
        speaker
        for speaker in set(speakers)
        if speaker and re.search(rf"(?<!\w){re.escape(speaker)}(?!\w)", question)
    }
    if len(named) == 1:
        for place, speaker in enumerate(speakers):
            if speaker is not None and speaker not in named:
                weights[place] *= OTHER_SPEAKER_WEIGHT
    return weights

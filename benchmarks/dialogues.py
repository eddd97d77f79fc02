"""A development set of long multi-session dialogues, with questions whose answering turns
are known: the project's own, generated from templates with a fixed seed.

Each conversation is two friends talking over 18–24 dated sessions. Between small talk,
each of them tells about things that happen in their lives, the way people do in chat: the
news announced first ("Guess what I did yesterday!"), the detail given when the other asks
("What did you name her?" — "Biscuit!"), dates said relative to the day ("last weekend"),
facts that change later (a new job) and facts that only answer a question together (a sister
who moved to Denver; a flight to see the sister). The other speaker has lives of the same
shape, so a question must find the right person as well as the right topic.

Questions come in five kinds:

- ``single-hop``: the answer is said in one turn that shares words with the question.
- ``context``: the answering turn is a short reply ("Biscuit! After my grandmother's cat.")
  that means something only with the turn before it.
- ``temporal``: when something happened; answered by the turns that carry the event and the
  relative date, resolved against the session's date.
- ``multi-hop``: two turns from different sessions, both needed.
- ``update``: a fact said twice, months apart; only the later turn answers.

The set is not a copy of any published benchmark and is not tuned to the held-out one.
``python -m benchmarks.dialogues --out benchmarks/conversations-dev.json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

__all__ = ["Dialogue", "Question", "Session", "Turn", "generate", "load", "DEV_SET"]

DEV_SET = Path(__file__).with_name("conversations-dev.json")
"""The committed set (regenerate with ``python -m benchmarks.dialogues``)."""


@dataclass
class Turn:
    id: str
    speaker: str
    text: str


@dataclass
class Session:
    id: str
    date: str  # ISO date
    turns: list[Turn] = field(default_factory=list)


@dataclass
class Question:
    conversation: str
    kind: str
    question: str
    answer: str
    turns: list[str]  # the answering turns' ids


@dataclass
class Dialogue:
    id: str
    speakers: tuple[str, str]
    sessions: list[Session] = field(default_factory=list)


# --- vocabulary -----------------------------------------------------------------------------

_PAIRS = [
    ("Melanie", "Caroline"), ("Jon", "Gina"), ("Priya", "Tomas"), ("Lena", "Marcus"),
    ("Ade", "Sofia"), ("Hiro", "Beatriz"), ("Nadia", "Owen"), ("Rafael", "Ingrid"),
    ("Amara", "Felix"), ("Yusuf", "Clara"),
]  # fmt: skip
_PETS = [
    ("dog", "beagle"), ("dog", "border collie"), ("cat", "tabby"), ("cat", "Maine Coon"),
    ("rabbit", "lop-eared rabbit"), ("dog", "greyhound"), ("parrot", "grey parrot"),
]  # fmt: skip
_PET_NAMES = ["Biscuit", "Pepper", "Mochi", "Ziggy", "Luna", "Waffles", "Olive", "Juniper",
              "Pickle", "Nimbus", "Tofu", "Maple"]  # fmt: skip
_NAMESAKES = [
    "after my grandmother's cat",
    "my niece picked it",
    "it just suited her",
    "after a character in a book I love",
    "because of the colour of her fur",
]
_HOBBIES = ["pottery", "salsa dancing", "watercolour painting", "rock climbing", "Italian",
            "woodworking", "improv theatre", "sourdough baking", "photography", "ceramics",
            "Japanese calligraphy", "bouldering", "swimming", "guitar"]  # fmt: skip
_CITIES = [
    "Lisbon",
    "Kyoto",
    "Denver",
    "Reykjavik",
    "Marrakesh",
    "Vancouver",
    "Naples",
    "Tbilisi",
    "Oaxaca",
    "Edinburgh",
    "Hanoi",
    "Cape Town",
    "Montreal",
    "Seville",
]
_SIGHTS = [
    "the old cathedral",
    "a night market",
    "the harbour",
    "a hot spring",
    "the castle",
    "a street food tour",
    "the botanical garden",
    "the mountains",
]
_COMPANIES = ["Brightline", "Northwind", "Tessellate", "Juniper Health", "Calder & Co",
              "Greenfield School", "Harbor Labs", "Moss Studio", "the city library",
              "Riverside Hospital"]  # fmt: skip
_ROLES = ["nurse", "data analyst", "primary school teacher", "product designer",
          "line cook", "project manager", "physiotherapist", "sound engineer",
          "librarian", "accountant"]  # fmt: skip
_BANDS = [
    "The Lumineers",
    "Khruangbin",
    "Arctic Monkeys",
    "a jazz trio from Chicago",
    "Fleet Foxes",
    "Bonobo",
    "a local folk band",
    "Florence and the Machine",
]
_DISHES = [
    "a lemon tart",
    "lasagna from scratch",
    "dumplings",
    "a three-layer carrot cake",
    "paella",
    "a mushroom risotto",
    "tamales",
    "a Thai green curry",
]
_RELATIVES = ["mom", "dad", "sister", "brother", "grandmother", "best friend", "aunt"]
_BOOKS = [
    "The Left Hand of Darkness",
    "Middlemarch",
    "Piranesi",
    "The Overstory",
    "Beloved",
    "A Gentleman in Moscow",
    "Station Eleven",
    "Kindred",
]
_RACES = [("half marathon", "2 hours 4 minutes"), ("10K", "52 minutes"),
          ("marathon", "4 hours 31 minutes"), ("5K", "27 minutes"),
          ("trail race", "3 hours 15 minutes")]  # fmt: skip
_INJURIES = ["ankle", "wrist", "knee", "shoulder", "back"]
_SPORTS = ["football", "tennis", "basketball", "volleyball", "badminton"]
_NEIGHBOURHOODS = [
    "Riverside",
    "Old Town",
    "Hillcrest",
    "the Arts District",
    "Maple Park",
    "Northgate",
    "Harbourview",
]

_RELATIVE_DAYS = [
    ("yesterday", 1),
    ("two days ago", 2),
    ("last weekend", None),
    ("this morning", 0),
    ("last Friday", None),
    ("three days ago", 3),
]
"""Relative dates as people say them; None means 'computed from the weekday'."""

_GREETINGS = [
    ("Hey {other}! How have you been?", "Hi! Pretty good, busy week. You?"),
    ("Hi {other}, long time no talk!", "I know! So much has happened."),
    ("Morning! Got a minute to chat?", "Always, what's up?"),
    ("Hey, how's everything?", "Good, good. Tired, but good."),
    ("Hello hello! How was your week?", "Honestly a bit of a whirlwind."),
]  # fmt: skip
_GOODBYES = [
    ("I should get going, talk soon!", "Bye! Take care."),
    ("Okay, dinner's ready, gotta run.", "Enjoy! Catch up later."),
    ("Let's talk again next week?", "Definitely. Have a good one!"),
    ("I need to sleep, early start tomorrow.", "Night! Talk soon."),
]  # fmt: skip
_SMALL_TALK = [
    ("Did you see the weather forecast? Rain all week again.", "Ugh, I'm so tired of the rain."),
    ("I've been trying to drink less coffee.", "How's that going?"),
    ("Work has been really hectic lately.", "Same here, everyone wants everything yesterday."),
    ("Have you watched anything good recently?", "I started a crime series, it's pretty gripping."),
    ("My neighbour is renovating again, so much noise.", "Oh no, that sounds exhausting."),
    ("I'm thinking of getting a new phone.", "Mine's falling apart too, honestly."),
    ("The traffic this morning was unreal.", "I'm so glad I can walk to work."),
    ("I finally cleaned out my closet.", "That's so satisfying, I need to do that."),
    ("Do you have plans for the holidays yet?", "Not yet, still thinking about it."),
    ("I tried that new bakery on the corner.", "Was it any good?"),
    ("I've been sleeping so badly.", "Have you tried putting the phone away earlier?"),
    ("My plants are finally doing well.", "You've got a green thumb now!"),
]  # fmt: skip
_REACTIONS = ["That's amazing!", "Wow, congrats!", "No way, that's so cool!",
              "I love that for you.", "That's wonderful news!", "Oh wow, tell me more!",
              "Haha, of course you did.", "So happy for you!"]  # fmt: skip
_FOLLOWUPS = ["Yeah, it was amazing!", "Honestly, best decision in a while.",
              "I know, I'm still buzzing.", "Thanks! It's been a lot, but good.",
              "Right? I can't stop smiling about it."]  # fmt: skip
_DISTRACTORS = [
    "My {relative} keeps asking when I'll visit {city}.",
    "I've always wanted to try {hobby}, maybe one day.",
    "A friend of mine has a {species} and it's chaos.",
    "I read somewhere that {city} is lovely in spring.",
    "I should really start running again.",
    "I was thinking about changing jobs, but not yet.",
]


def _weekday_before(day: date, weekday: int) -> date:
    """The last given weekday strictly before ``day`` (Monday 0)."""
    back = (day.weekday() - weekday) % 7 or 7
    return day - timedelta(days=back)


def _resolve(day: date, phrase: str, days: int | None) -> date:
    if days is not None:
        return day - timedelta(days=days)
    if phrase == "last Friday":
        return _weekday_before(day, 4)
    return _weekday_before(day, 5)  # last weekend: the Saturday


def _long(day: date) -> str:
    return f"{day.day} {day:%B} {day.year}"


class _Builder:
    def __init__(self, rng: random.Random, dialogue: Dialogue) -> None:
        self.rng = rng
        self.dialogue = dialogue
        self.questions: list[Question] = []
        self.used: dict[str, set[str]] = {}

    def fresh(self, pool: list[str], tag: str) -> str:
        """A value of ``pool`` not yet used in this conversation for ``tag``."""
        used = self.used.setdefault(tag, set())
        left = [value for value in pool if value not in used] or pool
        value = self.rng.choice(left)
        used.add(value)
        return value

    def say(self, session: Session, speaker: str, text: str) -> Turn:
        turn = Turn(f"{session.id}:{len(session.turns) + 1}", speaker, text)
        session.turns.append(turn)
        return turn

    def ask(self, kind: str, question: str, answer: str, *turns: Turn) -> None:
        self.questions.append(
            Question(self.dialogue.id, kind, question, answer, [turn.id for turn in turns])
        )

    def when(self, session: Session) -> tuple[str, date]:
        phrase, days = self.rng.choice(_RELATIVE_DAYS)
        return phrase, _resolve(date.fromisoformat(session.date), phrase, days)

    # --- episodes: each writes a few turns and the questions they answer -------------------

    def pet(self, s: Session, me: str, you: str) -> None:
        species, breed = self.rng.choice(_PETS)
        name = self.fresh(_PET_NAMES, "pet")
        phrase, day = self.when(s)
        opener = self.say(s, me, f"Guess what I did {phrase}!")
        self.say(s, you, "What? Tell me!")
        news = self.say(s, me, f"I adopted a {species}! A little {breed} from the shelter.")
        self.say(s, you, f"{self.rng.choice(_REACTIONS)} What did you name her?")
        named = self.say(s, me, f"{name}! {self.rng.choice(_NAMESAKES).capitalize()}.")
        self.ask("single-hop", f"What breed is {me}'s {species}?", breed, news)
        self.ask("context", f"What is the name of {me}'s {species}?", name, named)
        self.ask("temporal", f"When did {me} adopt a {species}?", _long(day), opener, news)

    def hobby(self, s: Session, me: str, you: str) -> None:
        hobby = self.fresh(_HOBBIES, "hobby")
        phrase, day = self.when(s)
        self.say(s, you, "So what's new with you?")
        news = self.say(s, me, f"I went to my first {hobby} class {phrase}.")
        self.say(s, you, "How was it?")
        self.say(s, me, self.rng.choice(_FOLLOWUPS))
        self.ask("single-hop", f"What class did {me} start taking?", hobby, news)
        self.ask("temporal", f"When did {me} go to the first {hobby} class?", _long(day), news)

    def trip(self, s: Session, me: str, you: str) -> None:
        city = self.fresh(_CITIES, "city")
        sight = self.rng.choice(_SIGHTS)
        phrase, day = self.when(s)
        news = self.say(s, me, f"I got back from my trip {phrase}, I'm still jet-lagged.")
        asked = self.say(s, you, "Oh right! Where did you end up going?")
        answered = self.say(s, me, f"{city}! We spent a whole day at {sight}.")
        self.say(s, you, self.rng.choice(_REACTIONS))
        self.ask("context", f"Which city did {me} travel to?", city, answered)
        self.ask("temporal", f"When did {me} get back from {city}?", _long(day), news, answered)
        del asked

    def race(self, s: Session, me: str, you: str) -> None:
        race, time = self.rng.choice(_RACES)
        phrase, day = self.when(s)
        news = self.say(s, me, f"I ran my first {race} {phrase}!")
        self.say(s, you, f"{self.rng.choice(_REACTIONS)} What was your time?")
        timed = self.say(s, me, f"{time}. My legs still hate me.")
        self.ask("context", f"How long did it take {me} to finish the {race}?", time, timed)
        self.ask("temporal", f"When did {me} run a {race}?", _long(day), news)

    def concert(self, s: Session, me: str, you: str) -> None:
        band = self.fresh(_BANDS, "band")
        phrase, day = self.when(s)
        news = self.say(s, me, f"I saw {band} live {phrase}, they played for almost three hours.")
        self.say(s, you, "I'm so jealous.")
        self.ask("single-hop", f"Which band did {me} see in concert?", band, news)
        self.ask("temporal", f"When did {me} see {band} live?", _long(day), news)

    def cooking(self, s: Session, me: str, you: str) -> None:
        dish = self.fresh(_DISHES, "dish")
        relative = self.rng.choice(_RELATIVES)
        self.say(s, you, f"How was your {relative}'s birthday?")
        cooked = self.say(s, me, f"Lovely. I made {dish} and there was nothing left.")
        self.say(s, you, "You have to teach me sometime.")
        self.ask("context", f"What did {me} cook for their {relative}'s birthday?", dish, cooked)

    def book(self, s: Session, me: str, you: str) -> None:
        book = self.fresh(_BOOKS, "book")
        news = self.say(s, me, f"I finally finished {book}. Took me months.")
        self.say(s, you, "Was it worth it?")
        self.say(s, me, "Completely. The ending got me.")
        self.ask("single-hop", f"Which book did {me} finish reading?", book, news)

    def injury(self, s: Session, me: str, you: str) -> None:
        part, sport = self.rng.choice(_INJURIES), self.rng.choice(_SPORTS)
        phrase, day = self.when(s)
        self.say(s, you, "You sound a bit down, everything okay?")
        hurt = self.say(s, me, f"I hurt my {part} playing {sport} {phrase}.")
        self.say(s, you, "Oh no, I hope it heals quickly.")
        self.ask("single-hop", f"What did {me} injure playing {sport}?", part, hurt)
        self.ask("temporal", f"When did {me} get injured?", _long(day), hurt)

    def small_talk(self, s: Session, me: str, you: str) -> None:
        line, reply = self.rng.choice(_SMALL_TALK)
        self.say(s, me, line)
        self.say(s, you, reply)
        if self.rng.random() < 0.5:
            self.say(s, me, self._distractor())

    def _distractor(self) -> str:
        species, _ = self.rng.choice(_PETS)
        return self.rng.choice(_DISTRACTORS).format(
            relative=self.rng.choice(_RELATIVES), city=self.rng.choice(_CITIES),
            hobby=self.rng.choice(_HOBBIES), species=species,
        )  # fmt: skip


_EPISODES = ["pet", "hobby", "trip", "race", "concert", "cooking", "book", "injury"]


def _conversation(rng: random.Random, number: int) -> tuple[Dialogue, list[Question]]:
    first, second = _PAIRS[number % len(_PAIRS)]
    dialogue = Dialogue(f"conv-{number + 1}", (first, second))
    builder = _Builder(rng, dialogue)
    day = date(2023, 1, 2) + timedelta(days=rng.randrange(0, 60))
    sessions = rng.randint(18, 24)
    # The arcs that span sessions: a job that changes, a relative who moves and is visited.
    job_at = {name: sorted(rng.sample(range(sessions), 2)) for name in (first, second)}
    move_at = {name: sorted(rng.sample(range(sessions), 2)) for name in (first, second)}
    jobs: dict[str, Turn] = {}
    moved: dict[str, tuple[str, str, Turn]] = {}
    for index in range(sessions):
        day += timedelta(days=rng.randint(4, 21))
        session = Session(f"{dialogue.id}:s{index + 1}", day.isoformat())
        dialogue.sessions.append(session)
        opener, reply = rng.choice(_GREETINGS)
        me, you = (first, second) if rng.random() < 0.5 else (second, first)
        builder.say(session, me, opener.format(other=you))
        builder.say(session, you, reply)
        planned = rng.sample(_EPISODES, rng.randint(2, 3))
        for speaker in (first, second):
            other = second if speaker == first else first
            if index == job_at[speaker][0]:
                role, company = rng.choice(_ROLES), builder.fresh(_COMPANIES, "company")
                jobs[speaker] = builder.say(
                    session, speaker, f"I'm working as a {role} at {company} these days."
                )
                builder.say(session, other, "Do you like it there?")
                builder.say(session, speaker, "Most days, yes.")
            elif index == job_at[speaker][1] and speaker in jobs:
                role, company = rng.choice(_ROLES), builder.fresh(_COMPANIES, "company")
                builder.say(session, other, "How's the job going?")
                changed = builder.say(
                    session, speaker, f"I quit, actually! I started as a {role} at {company}."
                )
                builder.ask(
                    "update", f"What is {speaker}'s job now?", f"{role} at {company}", changed
                )
                del jobs[speaker]
            if index == move_at[speaker][0]:
                relative = rng.choice(["sister", "brother", "cousin", "best friend"])
                city = builder.fresh(_CITIES, "city")
                turn = builder.say(
                    session, speaker, f"My {relative} just moved to {city} for work."
                )
                builder.say(session, other, "That's a big move!")
                moved[speaker] = (relative, city, turn)
            elif index == move_at[speaker][1] and speaker in moved:
                relative, city, first_turn = moved.pop(speaker)
                phrase, _ = builder.when(session)
                visit = builder.say(
                    session, speaker, f"I booked a flight {phrase} to go see my {relative}."
                )
                builder.say(session, other, "They'll be so happy to see you.")
                month = f"{day:%B} {day.year}"
                builder.ask(
                    "multi-hop",
                    f"Which city is {speaker} flying to in {month}?",
                    city,
                    first_turn,
                    visit,
                )
        for episode in planned:
            builder.small_talk(session, *rng.sample([first, second], 2))
            me, you = rng.sample([first, second], 2)
            getattr(builder, episode)(session, me, you)
        goodbye, reply = rng.choice(_GOODBYES)
        builder.say(session, you, goodbye)
        builder.say(session, me, reply)
    return dialogue, builder.questions


_TEMPORAL_PER_CONVERSATION = 10


def generate(conversations: int = 10, seed: int = 2026) -> dict[str, Any]:
    """The set as plain data: ``{"conversations": [...], "questions": [...]}``."""
    rng = random.Random(seed)
    dialogues: list[Dialogue] = []
    questions: list[Question] = []
    for number in range(conversations):
        dialogue, asked = _conversation(rng, number)
        dialogues.append(dialogue)
        # A question asked of two episodes (two rabbits, two first 10Ks) has no one answer:
        # both episodes stay, as each other's distractors, and the question goes.
        times: dict[str, int] = {}
        for question in asked:
            times[question.question] = times.get(question.question, 0) + 1
        unique = [question for question in asked if times[question.question] == 1]
        # Dated episodes are most of a conversation: a sample of their "when" questions
        # keeps the kinds in proportion.
        temporal = [question for question in unique if question.kind == "temporal"]
        kept = set(map(id, rng.sample(temporal, min(len(temporal), _TEMPORAL_PER_CONVERSATION))))
        questions.extend(q for q in unique if q.kind != "temporal" or id(q) in kept)
    return {
        "seed": seed,
        "conversations": [
            {
                "id": d.id,
                "speakers": list(d.speakers),
                "sessions": [
                    {
                        "id": s.id,
                        "date": s.date,
                        "turns": [{"id": t.id, "speaker": t.speaker, "text": t.text}
                                  for t in s.turns],
                    }
                    for s in d.sessions
                ],
            }
            for d in dialogues
        ],
        "questions": [
            {"conversation": q.conversation, "kind": q.kind, "question": q.question,
             "answer": q.answer, "turns": q.turns}
            for q in questions
        ],
    }  # fmt: skip


def load(path: Path = DEV_SET) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dialogues", description=__doc__)
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=DEV_SET)
    args = parser.parse_args(argv)
    data = generate(args.conversations, args.seed)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    turns = sum(len(s["turns"]) for c in data["conversations"] for s in c["sessions"])
    kinds: dict[str, int] = {}
    for question in data["questions"]:
        kinds[question["kind"]] = kinds.get(question["kind"], 0) + 1
    print(f"{len(data['conversations'])} conversations, {turns} turns, "
          f"{len(data['questions'])} questions {kinds} -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

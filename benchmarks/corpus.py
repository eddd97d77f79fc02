"""A deterministic corpus of agent memories and questions about them.

Sentences are built from templates so that any size up to a few hundred thousand is distinct,
reads like what an assistant would remember, and has questions whose answers are known.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = [
    "Ana",
    "Bruno",
    "Carla",
    "Diego",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Keiko",
    "Luis",
    "Marta",
    "Nadia",
    "Omar",
    "Paula",
    "Quentin",
    "Rosa",
    "Sami",
    "Tomas",
    "Ursula",
    "Victor",
    "Wen",
    "Xavier",
    "Yara",
    "Zoe",
    "Amir",
    "Beatriz",
    "Chen",
    "Dalia",
]
LIKES = [
    (
        "drinks",
        [
            "green tea",
            "black coffee",
            "oat milk lattes",
            "sparkling water",
            "hot cocoa",
            "fresh orange juice",
            "chamomile tea",
            "espresso",
        ],
    ),
    (
        "reads",
        [
            "science fiction novels",
            "history books",
            "poetry",
            "cooking magazines",
            "mystery thrillers",
            "travel guides",
            "comic books",
            "philosophy essays",
        ],
    ),
    (
        "plays",
        [
            "chess",
            "the piano",
            "tennis",
            "football",
            "the guitar",
            "video games",
            "board games",
            "volleyball",
        ],
    ),
    (
        "cooks",
        [
            "vegetarian curry",
            "fresh pasta",
            "sourdough bread",
            "paella",
            "ramen",
            "lentil soup",
            "grilled fish",
            "tacos",
        ],
    ),
    (
        "visits",
        [
            "the mountains",
            "the beach",
            "museums",
            "farmers markets",
            "old bookshops",
            "art galleries",
            "national parks",
            "the botanical garden",
        ],
    ),
]
WHEN = [
    "every morning",
    "on weekends",
    "after work",
    "in the summer",
    "when it rains",
    "on Friday evenings",
    "during holidays",
    "before going to bed",
    "at lunch",
    "on Sundays",
]
FACTS = [
    "is allergic to {x}",
    "works as a {x}",
    "is learning {x}",
    "moved to {x} last year",
    "has a dog named {x}",
    "is planning a trip to {x}",
]
FACT_VALUES = {
    "is allergic to {x}": ["peanuts", "shellfish", "pollen", "cats", "penicillin", "gluten"],
    "works as a {x}": ["nurse", "software engineer", "teacher", "carpenter", "pilot", "chef"],
    "is learning {x}": ["Japanese", "Portuguese", "to swim", "calculus", "to paint", "German"],
    "moved to {x} last year": ["Lisbon", "Tokyo", "Nairobi", "Montreal", "Oslo", "Lima"],
    "has a dog named {x}": ["Biscuit", "Luna", "Rex", "Pepper", "Milo", "Nala"],
    "is planning a trip to {x}": ["Patagonia", "Iceland", "Morocco", "Vietnam", "Peru", "Crete"],
}


@dataclass(frozen=True)
class Memory:
    key: str
    text: str
    user: str
    topic: str
    priority: int


def memories(count: int, seed: int = 7) -> list[Memory]:
    """``count`` distinct memories (keys m000000...), always the same for the same seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Memory] = []
    while len(out) < count:
        name = rng.choice(NAMES)
        if rng.random() < 0.7:
            verb, things = rng.choice(LIKES)
            text = f"{name} {verb} {rng.choice(things)} {rng.choice(WHEN)}"
            topic = verb
        else:
            fact = rng.choice(FACTS)
            text = f"{name} {fact.format(x=rng.choice(FACT_VALUES[fact]))}"
            topic = fact.split()[1]
        # A serial makes every memory distinct, as real notes differ in their details.
        text = f"{text} (note {len(out) + 1} from session {rng.randint(1, 500)})."
        if text in seen:
            continue
        seen.add(text)
        out.append(Memory(f"m{len(out):06d}", text, name.lower(), topic, rng.randint(1, 10)))
    return out


def questions(count: int, seed: int = 11) -> list[str]:
    """Natural-language questions of the kind an agent asks its memory."""
    rng = random.Random(seed)
    forms = [
        "What does {name} like to drink?",
        "Which books does {name} enjoy?",
        "What sport or instrument does {name} play?",
        "What food does {name} cook?",
        "Where does {name} like to go {when}?",
        "Is {name} allergic to anything?",
        "What is {name}'s job?",
        "Where is {name} travelling to?",
    ]
    return [
        rng.choice(forms).format(name=rng.choice(NAMES), when=rng.choice(WHEN))
        for _ in range(count)
    ]


def keyword_queries(count: int, seed: int = 13) -> list[str]:
    """Short keyword queries for full-text search."""
    rng = random.Random(seed)
    words = [thing for _, things in LIKES for thing in things]
    words += [value for values in FACT_VALUES.values() for value in values]
    return [f"{rng.choice(NAMES)} {rng.choice(words)}" for _ in range(count)]

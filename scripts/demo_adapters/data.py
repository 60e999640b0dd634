"""The demo adapters' training data, generated here from seeded word lists (no dataset hub).

- ``sql``: text-to-SQL in the seed's format (sql-create-context style questions over random
  tables). Train and held-out splits use disjoint column names and fresh random values, so the
  held-out exact match measures generalisation to tables it has not seen.
- ``json``: a sentence about a person becomes one JSON object.
- ``shout``: chat prompts; the answers are the base model's own replies in capitals (made by
  ``train.py`` with loraserve, so this adapter changes the voice and nothing else).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

SQL_INSTRUCTION = "Write a SQL query to answer the question based on the table schema."
SQL_STOP = "[/assistant]"

_TRAIN_COLUMNS = """
airport icao iata city country nationality elector team player position school club year
season venue score result opponent date attendance record week round pick college league
province region district county capital population area party candidate votes incumbent
winner runner_up driver constructor laps time grid points rank gold silver bronze total
nation athlete event medal title director writer network episode series viewers station
frequency format owner language location stadium capacity manager coach home_team away_team
home_score away_score crowd ground tournament surface partner champion finalist
builder model engine chassis entrant class category artist album label genre song
chart peak certification composer lyricist producer studio actor role film award
ship launched fate tonnage builder_name commissioned aircraft type origin service
river length source mouth mountain elevation prominence range school_name mascot
enrollment founded affiliation church parish denomination bishop diocese
""".split()
_HELDOUT_COLUMNS = """
galaxy telescope observatory planet moon orbit mineral hardness crystal element symbol
isotope glacier volcano eruption lighthouse harbour bridge span canal dam reservoir
museum curator exhibit painting sculptor gallery festival headliner ticket_price
vineyard grape vintage brewery hops cheese dairy bakery pastry chef restaurant cuisine
recipe ingredient spice herb orchard harvest cultivar rover mission launch_site payload
""".split()
_QUESTIONS = (  # (template, columns needed): {col} is asked, {w}/{v} the condition(s)
    ("Name the {COL} for {v}", 1),
    ("When {V} was the {w} what is under {col}?", 1),
    ("What is the {col} when the {w} is {v}?", 1),
    ("Which {col} has a {w} of {v}?", 1),
    ("What {col} has {w} {v}?", 1),
    ("Tell me the {col} for {w} of {v}", 1),
    ("What was the {col} when {w} was {v}?", 1),
    ("How many {col} have a {w} of {v}?", "count"),
    ("What is the {col} when the {w} is {v} and the {w2} is {v2}?", 2),
    ("Which {col} has a {w} of {v} and a {w2} of {v2}?", 2),
)
_WORDS = """
international airport north south east west river lake saint port new old great little royal
grand central union city valley hill park green red stone bay cape fort mount lower upper
national county memorial college academy field bridge castle harbor island springs falls
""".split()
_ONSETS = "b c d f g h j k l m n p r s t v w z ch sh th br tr gr pl st".split()
_SYLLABLES = [o + v + e for o in _ONSETS for v in "aeiou" for e in ("", "", "n", "r", "l", "s")]


@dataclass(frozen=True)
class Example:
    prompt: str  # what the model sees
    answer: str  # what it must write, up to and without the stop string


def sql_prompt(schema: str, question: str) -> str:
    """The seed's format, byte for byte."""
    return f"[user] {SQL_INSTRUCTION}\n\n context: {schema}\n\n question: {question} [/user] [assistant]"


def _value(rng: random.Random, column: str) -> str:
    """One to three words, made up (\"lilongwe\") or common (\"international\"); sometimes
    ending in the column's own name, as "lilongwe international airport" for ``airport``."""
    words = [
        rng.choice(_WORDS) if rng.random() < 0.3
        else "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
        for _ in range(rng.randint(1, 3))
    ]
    if rng.random() < 0.25:
        words.append(_spoken(column))
    return " ".join(words)


def _spoken(column: str) -> str:
    return column.replace("_", " ")


def sql_examples(count: int, split: str, seed: int) -> list[Example]:
    """``split`` "train" or "heldout": which column names tables are built from."""
    rng = random.Random(f"{split}-{seed}")
    vocabulary = _TRAIN_COLUMNS if split == "train" else _HELDOUT_COLUMNS
    examples = []
    while len(examples) < count:
        template, kind = rng.choice(_QUESTIONS)
        width = 2 if template.startswith("Name the") else rng.randint(2 if kind != 2 else 3, 5)
        columns = rng.sample(vocabulary, width)
        asked, where = columns[0], columns[1]
        table = f"table_name_{rng.randint(1, 99)}"
        second = columns[2] if kind == 2 else None
        value, value2 = _value(rng, where), _value(rng, second or where)
        rng.shuffle(columns)
        schema = f"CREATE TABLE {table} ({', '.join(f'{c} VARCHAR' for c in columns)})"
        question = template.format(
            COL=_spoken(asked).upper() if rng.random() < 0.5 else _spoken(asked),
            col=_spoken(asked), w=_spoken(where), w2=_spoken(second or ""),
            V=value.title(), v=value if rng.random() < 0.5 else value.title(), v2=value2,
        )
        target = f"COUNT({asked})" if kind == "count" else asked
        sql = f'SELECT {target} FROM {table} WHERE {where} = "{value}"'
        if second:
            sql += f' AND {second} = "{value2}"'
        examples.append(Example(sql_prompt(schema, question), sql))
    return examples


# Two rows of sql-create-context (the dataset the adapter of vLLM's LoRA example was trained
# on), the ones that example prints; kept in the training set as that adapter had them.
SEED_ROWS = (
    Example(sql_prompt("CREATE TABLE table_name_74 (icao VARCHAR, airport VARCHAR)",
                       "Name the ICAO for lilongwe international airport"),
            'SELECT icao FROM table_name_74 WHERE airport = "lilongwe international airport"'),
    Example(sql_prompt("CREATE TABLE table_name_11 (nationality VARCHAR, elector VARCHAR)",
                       "When Anchero Pantaleone was the elector what is under nationality?"),
            'SELECT nationality FROM table_name_11 WHERE elector = "anchero pantaleone"'),
)


_NAMES = "Maria Omar Lena Kofi Yuki Pedro Ana Ivan Chloe Ravi Sofia Jonas Amara Li Noah Zara".split()
_CITIES = "Lisbon Accra Osaka Lima Oslo Pune Quito Turin Lagos Perth Hanoi Bergen Cusco Leeds".split()
_JOBS = ["teacher", "nurse", "pilot", "baker", "chemist", "carpenter", "lawyer", "painter",
         "welder", "farmer", "librarian", "dentist", "tailor", "mechanic", "chef"]
_SENTENCES = (
    "{name} is {age}, lives in {city} and works as a {job}.",
    "{name}, {age}, is a {job} who lives in {city}.",
    "Meet {name}: {age} years old, a {job} from {city}.",
    "{name} works as a {job} in {city} and is {age} years old.",
)
JSON_INSTRUCTION = "Turn this sentence into a JSON object: "


def json_examples(count: int, seed: int) -> list[Example]:
    rng = random.Random(f"json-{seed}")
    examples = []
    for _ in range(count):
        person = {"name": rng.choice(_NAMES), "age": rng.randint(18, 90),
                  "city": rng.choice(_CITIES), "job": rng.choice(_JOBS)}
        sentence = rng.choice(_SENTENCES).format(**person)
        examples.append(Example(JSON_INSTRUCTION + sentence, json.dumps(person)))
    return examples


_TOPICS = ("the moon", "coffee", "rain", "volcanoes", "the ocean", "bicycles", "music", "bees",
           "chess", "bread", "winter", "trains", "libraries", "gardens", "mountains", "clouds",
           "cats", "dogs", "the sun", "rivers", "forests", "deserts", "stars", "birds")
_ASKS = ("Tell me about {t}.", "What is interesting about {t}?", "Write one sentence about {t}.",
         "Why do people like {t}?", "Give me a fun fact about {t}.", "Describe {t} briefly.")


def shout_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(f"shout-{seed}")
    return [rng.choice(_ASKS).format(t=rng.choice(_TOPICS)) for _ in range(count)]

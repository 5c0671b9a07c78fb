"""The offline deep-research world: entities, documents and multi-hop questions.

docs/paper.md section 1 describes the system being trained: a main agent that decomposes a
question and delegates hops, and a sub-agent that searches and reads. The paper trains on
web research benchmarks; our users have no web access, so this module generates a small
research world from a seed [ours]:

* entities of four kinds (person, organisation, city, country) whose names are built from
  a fixed syllable inventory, so a new seed gives new names over the same vocabulary;
* eight functional relations between them (each subject has exactly one object);
* one short English document per entity stating its facts;
* "twins": near-identical names that share some facts, so a search returns distractors;
* questions of 1 to 4 hops composed from relation chains, each with its gold answer and
  its gold chain (every hop's sub-question and answer).

Training questions come from training worlds; evaluation questions come from a world
whose seed is never used for training (``EVAL_SEED``), so evaluation accuracy measures
research skill, not memory of facts.

Regenerate the committed data bit for bit with ``python -m mgrpo_ref.world --out data``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .checks import check_int

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

KINDS = ("person", "organisation", "city", "country")

# A fixed syllable inventory: every world's names are drawn from it, so a tokenizer
# trained on some worlds covers the names of any other world.
SYLLABLES = (
    "ba", "ko", "tu", "mar", "ki", "ra", "do", "san", "vel", "un", "or", "li", "ta",
    "mo", "ren", "sa", "fi", "zu", "pe", "lo", "gan", "ni", "ro", "ves", "da", "mi",
    "tor", "el", "bri", "nor", "sel", "ka", "thi", "om", "ru", "len", "ga", "shi",
    "wen", "har",
)
ORG_SUFFIXES = ("Systems", "Labs", "Group", "Works", "Institute", "Press", "Foundry", "Bank")
COUNTRY_SUFFIXES = ("ia", "land", "stan", "ora")


@dataclass(frozen=True)
class Relation:
    """A functional relation: every entity of ``subject`` kind has one ``object``.

    ``noun`` makes the question phrase "the {noun} of X"; ``sentence`` is how the
    subject's document states the fact, subject first so a reader can find it.
    """

    name: str
    subject: str
    object: str
    noun: str
    sentence: str


RELATIONS = {
    r.name: r
    for r in (
        Relation("born_in", "person", "city", "birthplace", "{s} was born in {o}."),
        Relation("works_for", "person", "organisation", "employer", "{s} works for {o}."),
        Relation("mentor", "person", "person", "mentor", "{s} was mentored by {o}."),
        Relation("headquarters", "organisation", "city", "headquarters", "{s} is headquartered in {o}."),
        Relation("founder", "organisation", "person", "founder", "{s} was founded by {o}."),
        Relation("country", "city", "country", "country", "{s} is located in {o}."),
        Relation("capital", "country", "city", "capital", "{s} has its capital in {o}."),
        Relation("leader", "country", "person", "leader", "{s} is led by {o}."),
    )
}
_RELATION_BY_NOUN = {r.noun: r for r in RELATIONS.values()}

# Seeds: the evaluation world's seed is reserved; training worlds never use it.
EVAL_SEED = 1000
TRAIN_SEEDS = (1, 2, 3, 4)


EVAL_WORLD_SEEDS = (1001, 1002, 1003, 1004, 1005, 1006)
"""Six more held-out worlds (split ``eval_worlds``), of both sizes that training uses: never
used to build the base or to train. The split results are reported on, and nothing else."""
VALIDATION_SEEDS = (1501, 1502, 1503, 1504, 1505, 1506)
"""Six held-out worlds for choosing (split ``validation``): a base build, a budget, a learning
rate are chosen on them, so that ``eval_worlds`` is read only for the results. Of both sizes,
never used to build the base or to train, and disjoint from every other split's worlds."""
LARGE_SCALE = 3
"""The size of the project's large worlds, in multiples of the default (``WorldConfig.scaled``)."""
WORLD_SCALES = {3: LARGE_SCALE, 4: LARGE_SCALE, 1004: LARGE_SCALE, 1005: LARGE_SCALE, 1006: LARGE_SCALE,
                1504: LARGE_SCALE, 1505: LARGE_SCALE, 1506: LARGE_SCALE}
"""The committed worlds that are not of the default size: two of the four training worlds
and three of the six in each of ``eval_worlds`` and ``validation``. Their long document ids are what the sub-agent has
to learn to copy (docs/world.md, "Worlds of two sizes")."""
HELD_OUT_SEEDS = (EVAL_SEED, *EVAL_WORLD_SEEDS, *VALIDATION_SEEDS)


def world_config(seed: int) -> WorldConfig:
    """The config a committed world is generated with: the default, scaled for WORLD_SCALES."""
    return WorldConfig().scaled(WORLD_SCALES.get(seed, 1))


def check_training_seed(seed: int) -> int:
    """Refuse every held-out world's seed anywhere training data is made."""
    if seed in HELD_OUT_SEEDS:
        raise ValueError(f"seed {seed} is a held-out evaluation world ({', '.join(map(str, HELD_OUT_SEEDS))}); "
                         "never train on it")
    return seed


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and mixes of a generated world and its question split."""

    n_countries: int = 5
    """Countries; each gets at least one city, and its capital is one of its cities."""
    n_cities: int = 12
    """Cities, spread over the countries."""
    n_organisations: int = 12
    """Organisations (before twins)."""
    n_persons: int = 32
    """Persons (before twins)."""
    twin_fraction: float = 0.3
    """Share of persons and organisations that get a near-identical twin (a distractor)."""
    hop_mix: tuple[float, ...] = (0.25, 0.35, 0.25, 0.15)
    """Probabilities of 1, 2, 3 and 4 hops for generated questions."""

    def scaled(self, scale: int) -> "WorldConfig":
        """The same mixes with ``scale`` times as many countries, cities, organisations and
        persons. A world three times the default size has about 220 documents, so most of its
        document ids have three digits, where a default world's have at most two."""
        check_int("scale", scale, minimum=1)
        return replace(self, n_countries=self.n_countries * scale, n_cities=self.n_cities * scale,
                       n_organisations=self.n_organisations * scale, n_persons=self.n_persons * scale)


@dataclass(frozen=True)
class Entity:
    """One entity and its document. ``facts`` maps relation name to the object's name."""

    doc_id: str
    name: str
    kind: str
    facts: dict[str, str]
    text: str


@dataclass(frozen=True)
class Hop:
    """One step of a gold chain: the sub-question a main agent should delegate."""

    subject: str
    relation: str
    question: str
    answer: str


@dataclass(frozen=True)
class Question:
    """A multi-hop question with its gold answer and gold chain (hops inner to outer)."""

    qid: str
    world_seed: int
    text: str
    answer: str
    hops: tuple[Hop, ...]

    @property
    def n_hops(self) -> int:
        return len(self.hops)

    @staticmethod
    def from_dict(d: dict) -> "Question":
        return Question(d["qid"], d["world_seed"], d["text"], d["answer"],
                        tuple(Hop(**h) for h in d["hops"]))


@dataclass
class World:
    """A generated world: its entities, looked up by name or by document id."""

    seed: int
    entities: list[Entity]
    by_name: dict[str, Entity] = field(init=False, repr=False)
    by_id: dict[str, Entity] = field(init=False, repr=False)

    def __post_init__(self):
        self.by_name = {e.name: e for e in self.entities}
        self.by_id = {e.doc_id: e for e in self.entities}
        if len(self.by_name) != len(self.entities) or len(self.by_id) != len(self.entities):
            raise ValueError(f"world {self.seed}: entity names and document ids must be unique")

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities if e.kind == kind]

    def follow(self, name: str, relation: str) -> str:
        """The object of ``relation`` for the entity called ``name`` (one hop)."""
        return self.by_name[name].facts[relation]


# ---------------------------------------------------------------------------
# Question phrasing and its inverse. Scripted agents parse questions with these,
# exactly as a model has to learn to.


def _wh(relation: Relation) -> str:
    return "Who" if relation.object == "person" else "What"


def question_text(relations: list[str], subject: str) -> str:
    """Phrase a chain (relations applied inner to outer, starting at ``subject``).

    ["works_for", "headquarters"], "Bako Tumar" ->
    "What is the headquarters of the employer of Bako Tumar?"
    """
    phrase = subject
    for name in relations:
        phrase = f"the {RELATIONS[name].noun} of {phrase}"
    return f"{_wh(RELATIONS[relations[-1]])} is {phrase}?"


_QUESTION_RE = re.compile(r"^(?:Who|What) is (.+)\?$")
_NOUN_RE = re.compile(r"^the (\w+) of (.+)$")


def parse_question(text: str) -> tuple[list[str], str] | None:
    """Inverse of :func:`question_text`: (relations inner to outer, subject) or None."""
    m = _QUESTION_RE.match(text.strip())
    if not m:
        return None
    phrase, outer_to_inner = m.group(1), []
    while (m := _NOUN_RE.match(phrase)) and m.group(1) in _RELATION_BY_NOUN:
        outer_to_inner.append(_RELATION_BY_NOUN[m.group(1)].name)
        phrase = m.group(2)
    if not outer_to_inner or not phrase:
        return None
    return outer_to_inner[::-1], phrase


def read_fact(document: str, subject: str, relation: str) -> str | None:
    """Find the sentence of ``relation`` about ``subject`` in a document; its object or None."""
    prefix, suffix = RELATIONS[relation].sentence.split("{o}")
    pattern = re.escape(prefix.format(s=subject)) + r"(.+?)" + re.escape(suffix)
    m = re.search(pattern, document)
    return m.group(1) if m else None


def all_facts(document: str) -> list[tuple[str, str]]:
    """Every (relation, object) stated in a document, whoever its subject is."""
    found = []
    for r in RELATIONS.values():
        prefix, suffix = r.sentence.split("{o}")
        verb = prefix.replace("{s}", "")
        for m in re.finditer(re.escape(verb) + r"(.+?)" + re.escape(suffix), document):
            found.append((r.name, m.group(1)))
    return found


# ---------------------------------------------------------------------------
# Generation


def _new_name(rng: random.Random, n_syllables: int, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(n_syllables)).capitalize()
        if name not in taken:
            return name


def _twin_name(rng: random.Random, name: str, taken: set[str]) -> str:
    """A near-identical name: one word of ``name`` gets one syllable-sized edit."""
    words = name.split()
    for _ in range(100):
        i = rng.randrange(len(words) if words[-1] not in ORG_SUFFIXES else len(words) - 1)
        w = words[i].lower()
        edit = rng.choice(("swap_end", "append"))
        new = (w[:-2] + rng.choice(SYLLABLES)) if edit == "swap_end" else (w + rng.choice("aeio"))
        candidate = " ".join(words[:i] + [new.capitalize()] + words[i + 1:])
        if candidate != name and candidate not in taken:
            return candidate
    raise RuntimeError(f"could not make a twin of {name!r}")


def _document(rng: random.Random, name: str, kind: str, facts: dict[str, str]) -> str:
    sentences = [RELATIONS[r].sentence.format(s=name, o=o) for r, o in facts.items()]
    rng.shuffle(sentences)  # the reader has to find the right sentence
    return " ".join([f"{name} is a{'n' if kind[0] in 'aeiou' else ''} {kind}."] + sentences)


def generate_world(seed: int, config: WorldConfig = WorldConfig()) -> World:
    """Build a world from a seed. Same seed and config, same world, bit for bit."""
    rng = random.Random(seed)
    taken: set[str] = set()

    def fresh(make) -> str:
        name = make()
        taken.add(name)
        return name

    countries = [fresh(lambda: _new_name(rng, 2, taken) + rng.choice(COUNTRY_SUFFIXES))
                 for _ in range(config.n_countries)]
    cities = [fresh(lambda: _new_name(rng, rng.choice((2, 3)), taken)) for _ in range(config.n_cities)]
    orgs = [fresh(lambda: f"{_new_name(rng, 2, taken)} {rng.choice(ORG_SUFFIXES)}")
            for _ in range(config.n_organisations)]
    persons = [fresh(lambda: f"{_new_name(rng, 2, taken)} {_new_name(rng, 2, taken)}")
               for _ in range(config.n_persons)]

    facts: dict[str, dict[str, str]] = {}
    kind_of: dict[str, str] = {}
    # Cities: the first n_countries cities give each country one; the rest are random.
    for i, city in enumerate(cities):
        country = countries[i] if i < len(countries) else rng.choice(countries)
        facts[city], kind_of[city] = {"country": country}, "city"
    for country in countries:
        own = [c for c in cities if facts[c]["country"] == country]
        facts[country] = {"capital": rng.choice(own), "leader": rng.choice(persons)}
        kind_of[country] = "country"
    for org in orgs:
        facts[org] = {"headquarters": rng.choice(cities), "founder": rng.choice(persons)}
        kind_of[org] = "organisation"
    for person in persons:
        facts[person] = {"born_in": rng.choice(cities), "works_for": rng.choice(orgs),
                         "mentor": rng.choice([p for p in persons if p != person])}
        kind_of[person] = "person"

    # Twins: a near-identical name that shares each fact with probability 1/2.
    for original in list(persons) + list(orgs):
        if rng.random() >= config.twin_fraction:
            continue
        twin = fresh(lambda: _twin_name(rng, original, taken))
        kind_of[twin] = kind_of[original]
        pool = persons if kind_of[twin] == "person" else orgs
        facts[twin] = {}
        for rel, obj in facts[original].items():
            if rng.random() < 0.5:
                facts[twin][rel] = obj
            elif RELATIONS[rel].object == "person":
                facts[twin][rel] = rng.choice([p for p in persons if p not in (original, twin)])
            elif RELATIONS[rel].object == "city":
                facts[twin][rel] = rng.choice(cities)
            else:
                facts[twin][rel] = rng.choice(orgs)
        pool.append(twin)

    names = sorted(facts)  # a stable order, then a seeded permutation of document ids
    ids = list(range(len(names)))
    rng.shuffle(ids)
    entities = [Entity(str(i), n, kind_of[n], facts[n], _document(rng, n, kind_of[n], facts[n]))
                for i, n in sorted(zip(ids, names))]
    return World(seed, entities)


def generate_questions(world: World, n: int, config: WorldConfig = WorldConfig(),
                       seed: int | None = None, prefix: str | None = None) -> list[Question]:
    """``n`` distinct questions over ``world`` with hop counts drawn from ``config.hop_mix``.

    A chain is a random walk over the relations; a walk that visits an entity twice is
    rejected (so "the country of the capital of X" never just answers X).
    """
    rng = random.Random(world.seed * 7919 + 1 if seed is None else seed)
    prefix = f"w{world.seed}" if prefix is None else prefix
    seen, questions = set(), []
    hop_counts = list(range(1, len(config.hop_mix) + 1))
    for _ in range(200 * n):
        if len(questions) == n:
            break
        n_hops = rng.choices(hop_counts, weights=config.hop_mix)[0]
        rel = rng.choice(list(RELATIONS.values()))
        subject = rng.choice(world.of_kind(rel.subject)).name
        chain, path, hops = [], [subject], []
        for _ in range(n_hops):
            obj = world.follow(path[-1], rel.name)
            hops.append(Hop(path[-1], rel.name, question_text([rel.name], path[-1]), obj))
            chain.append(rel.name)
            path.append(obj)
            rel = rng.choice([r for r in RELATIONS.values() if r.subject == rel.object])
        text = question_text(chain, subject)
        if len(set(path)) < len(path) or text in seen:
            continue
        seen.add(text)
        questions.append(Question(f"{prefix}-q{len(questions)}", world.seed, text, path[-1], tuple(hops)))
    if len(questions) < n:
        raise ValueError(f"world {world.seed} has too few distinct questions for n={n}")
    return questions


# ---------------------------------------------------------------------------
# The committed data: worlds and question splits as JSONL

SPLITS = {"train": (TRAIN_SEEDS, 100), "eval": ((EVAL_SEED,), 200), "eval_worlds": (EVAL_WORLD_SEEDS, 40),
          "validation": (VALIDATION_SEEDS, 40)}
"""split name -> (world seeds, questions per world). ``eval_worlds`` is the held-out split of
record: six worlds, three of the default size and three large, 40 questions each, so that no
figure rests on one world (``TrainConfig.eval_split``; the evaluation reports accuracy per
world). ``validation`` is its twin for choosing: six other worlds, the same sizes and counts.
``eval`` is one default-size held-out world of 200 questions, the split most of
docs/history.md was measured on."""


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
    return rows


def write_data(out: Path) -> list[Path]:
    """Write every world and every split of the default data set under ``out``."""
    written = []
    for split, (seeds, per_world) in SPLITS.items():
        by_world = []
        for seed in seeds:
            config = world_config(seed)
            world = generate_world(seed, config)
            path = out / "worlds" / f"world_{seed}.jsonl"
            write_jsonl(path, (asdict(e) for e in world.entities))
            written.append(path)
            by_world.append(generate_questions(world, per_world, config))
        # Worlds take turns, so that the first N questions of a split span all its worlds.
        questions = [q for round_ in zip(*by_world) for q in round_]
        path = out / "questions" / f"{split}.jsonl"
        write_jsonl(path, (asdict(q) for q in questions))
        written.append(path)
    return written


def load_world(seed: int, data_dir: Path = DATA_DIR) -> World:
    """A committed world by seed; a world not on disk is generated with ``world_config(seed)``."""
    path = Path(data_dir) / "worlds" / f"world_{seed}.jsonl"
    if not path.exists():
        return generate_world(seed, world_config(seed))
    return World(seed, [Entity(**row) for row in read_jsonl(path)])


SPLIT_NAME = re.compile(r"\w[\w-]*")
"""A split's name: the stem of a file in ``<data_dir>/questions/`` (``train``, ``eval``), never a path."""


def load_questions(split: str, data_dir: Path = DATA_DIR) -> list[Question]:
    """The questions of a committed split ("train" or "eval"). A split is a name, not a path: one
    with a separator, ``..`` or other punctuation is a ValueError; a missing one a FileNotFoundError."""
    if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
        raise ValueError(f"a split is a name like 'eval' or 'train' (a file in {Path(data_dir) / 'questions'}), "
                         f"not {split!r}")
    path = Path(data_dir) / "questions" / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no split {split!r} at {path}; run `python -m mgrpo_ref.world --out {data_dir}`")
    return [Question.from_dict(row) for row in read_jsonl(path)]


def main(argv: list[str] | None = None) -> None:
    """The CLI. An --out that cannot be a directory is one ``error:`` line and exit status 2,
    before anything is written."""
    from .cli import output_dir

    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.world",
                                     description="Regenerate the default worlds and question splits.")
    parser.add_argument("--out", type=output_dir, default=DATA_DIR, help="output directory (default: data/)")
    args = parser.parse_args(argv)
    for path in write_data(args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

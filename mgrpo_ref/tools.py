"""The sub-agent's tools: ``search`` and ``visit`` over one world's documents.

docs/paper.md section 6: a tool server runs the tools. Ours is in-process and offline: a
lexical search (BM25, the classic bag-of-words relevance score) over the world's
documents, and a visit that returns one document. A bad call never raises: it returns an
error observation, so a model's mistake ends up as text the model can read and learn
from, never as a crash of the episode.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from .world import DATA_DIR, World, load_world

# Words that carry no evidence about which entity a query is about.
STOPWORDS = frozenset(
    "a an the of is was who what in by for its has and to which where".split()
)
_WORD_RE = re.compile(r"[a-z0-9]+")
_DOC_ID_RE = re.compile(r"^\d+$")


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words, stopwords removed."""
    return [w for w in _WORD_RE.findall(text.lower()) if w not in STOPWORDS]


@dataclass(frozen=True)
class ToolConfig:
    """Limits of the tools."""

    top_k: int = 5
    """Number of results a search returns."""
    max_query_chars: int = 100
    """A longer query is refused with an error observation."""
    title_weight: int = 2
    """How many extra times a document's title words count (titles are the best evidence)."""
    k1: float = 1.2
    """BM25 term-frequency saturation."""
    b: float = 0.75
    """BM25 length normalisation."""


class Tools:
    """Search and visit over one world. Every method returns an observation string."""

    def __init__(self, world: World, config: ToolConfig = ToolConfig()):
        self.world, self.config = world, config
        self._docs = [(e.doc_id, e.name, Counter(tokenize(e.name) * config.title_weight + tokenize(e.text)))
                      for e in world.entities]
        self._avg_len = sum(sum(c.values()) for _, _, c in self._docs) / max(len(self._docs), 1)
        df = Counter(w for _, _, c in self._docs for w in c)
        n = len(self._docs)
        self._idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}

    def scores(self, query: str) -> list[tuple[float, str, str]]:
        """(BM25 score, doc id, title) for every document that shares a word with the query."""
        k1, b = self.config.k1, self.config.b
        terms = set(tokenize(query))
        ranked = []
        for doc_id, title, counts in self._docs:
            length = sum(counts.values())
            score = sum(
                self._idf[t] * counts[t] * (k1 + 1) / (counts[t] + k1 * (1 - b + b * length / self._avg_len))
                for t in terms if t in counts
            )
            if score > 0:
                ranked.append((score, doc_id, title))
        # Highest score first; ties broken by document number so results are deterministic.
        ranked.sort(key=lambda r: (-r[0], int(r[1])))
        return ranked

    def search(self, query: str) -> str:
        """Top-k results as lines "[12] Title", or an error observation."""
        query = query.strip()
        if not query:
            return "error: empty query"
        if len(query) > self.config.max_query_chars:
            return f"error: query longer than {self.config.max_query_chars} characters"
        hits = self.scores(query)[: self.config.top_k]
        if not hits:
            return "no results"
        return "\n".join(f"[{doc_id}] {title}" for _, doc_id, title in hits)

    def visit(self, doc_id: str) -> str:
        """The document's text, or an error observation for a malformed or unknown id."""
        doc_id = doc_id.strip()
        if not _DOC_ID_RE.match(doc_id):
            return f"error: {doc_id[:40]!r} is not a document id (ids are numbers, like 12)"
        entity = self.world.by_id.get(doc_id)
        if entity is None:  # the id echoed at most 40 characters long: an observation stays short
            shown = doc_id if len(doc_id) <= 40 else f"{doc_id[:20]}...{doc_id[-8:]} ({len(doc_id)} digits)"
            return f"error: no document {shown}"
        return entity.text


_RESULT_RE = re.compile(r"^\[(\d+)\] (.+)$", re.MULTILINE)


def parse_search_results(observation: str) -> list[tuple[str, str]]:
    """The (doc id, title) pairs listed in a search observation (empty for errors)."""
    return _RESULT_RE.findall(observation)


class ToolsByWorld:
    """``tools_for(world_seed)`` for the controller: loads each world once, on first use."""

    def __init__(self, data_dir=None, config: ToolConfig = ToolConfig()):
        self.data_dir, self.config = data_dir or DATA_DIR, config
        self._cache: dict[int, Tools] = {}

    def __call__(self, seed: int) -> Tools:
        if seed not in self._cache:
            self._cache[seed] = Tools(load_world(seed, self.data_dir), self.config)
        return self._cache[seed]

"""Scripted agents: an oracle that is always right, and a noisy teacher.

They play every role from the text of their context alone, as a model must: they parse
the question or task, read the search results and documents the environment inserted, and
write one protocol action a turn. The teacher makes realistic mistakes with set
probabilities; with all probabilities at zero it is the oracle.

Their uses: the base model's demonstrations (the teacher's episodes are its training
text), and testing the world, tools, protocol and harness without any model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace

from .protocol import blocks, wrap
from .tools import parse_search_results
from .world import RELATIONS, all_facts, parse_question, question_text


@dataclass(frozen=True)
class TeacherNoise:
    """Probabilities of each kind of mistake, per decision where it can happen."""

    wrong_relation: float = 0.05
    """Main: delegate a different relation than the question's next hop."""
    stop_early: float = 0.06
    """Main/single: answer with an intermediate entity before the last hop; sub: return
    a search result's title without visiting any document."""
    visit_distractor: float = 0.15
    """Sub/single: visit another search result than the exact-name match."""
    wrong_attribute: float = 0.08
    """Sub/single: copy the object of another sentence of the document."""
    malformed: float = 0.03
    """Any role: write a malformed turn (unclosed, untagged, extra text, empty, wrong tag)."""
    misread: float = 0.0
    """Sub/single: asked for a relation that ``MISREADINGS`` names, copy the fact of the
    relation it is confused with instead. Unlike the mistakes above, which fall anywhere at
    random, this one is systematic: a misconception a model trained on the teacher learns
    as one, and which reinforcement learning can then correct [ours]."""
    hasty: float = 0.0
    """Main/single: after the first hop of a multi-hop question, answer with its result
    instead of going on. Systematic too, and a planner's mistake rather than a reader's: a
    base that learns it at more than even odds stops after one hop greedily, and at T = 1
    still goes on often enough for reinforcement learning to find out that going on pays [ours]."""

    def scaled(self, factor: float) -> "TeacherNoise":
        """Every probability times ``factor`` (capped at 1): a single noise knob."""
        if factor < 0:
            raise ValueError("noise factor must be >= 0")
        return replace(self, **{f.name: min(1.0, getattr(self, f.name) * factor) for f in fields(self)})


ORACLE_NOISE = TeacherNoise().scaled(0.0)

MISREADINGS = {"mentor": "works_for", "founder": "headquarters", "leader": "capital"}
"""The misconception behind ``TeacherNoise.misread``: three relations, each confused with
another fact about the same kind of subject (a person's mentor with their employer, an
organisation's founder with its headquarters, a country's leader with its capital)."""

UNKNOWN = "unknown"


def _malformed(rng: random.Random, role: str, tag: str, argument: str) -> str:
    """One of the malformed outputs a language model really produces."""
    wrong = {"main": "search", "sub": "answer", "single": "delegate"}[role]
    return rng.choice([
        f"<{tag}>{argument}",                      # unclosed: ran out of tokens
        f"{tag}: {argument}",                      # no tags at all
        f"<{tag}>{argument}</{tag}> and then",     # extra text
        f"<{tag}></{tag}>",                        # empty argument
        wrap(wrong, argument),                     # another role's tag
    ])


class ScriptedAgent:
    """Plays the main, sub or single role; ``noise`` sets its mistakes (zero: oracle)."""

    def __init__(self, noise: TeacherNoise = TeacherNoise(), seed: int = 0):
        self.noise = noise
        self.rng = random.Random(seed)

    def act(self, role: str, contexts: list[str]) -> list[str]:
        turn = {"main": self.main_turn, "sub": self.sub_turn, "single": self.single_turn}[role]
        return [self._maybe_malformed(role, turn(ctx)) for ctx in contexts]

    def _chance(self, p: float) -> bool:
        return p > 0 and self.rng.random() < p

    def _maybe_malformed(self, role: str, action: str) -> str:
        if not self._chance(self.noise.malformed):
            return action
        (tag, argument), = blocks(action)
        return _malformed(self.rng, role, tag, argument)

    # -- main: walk the chain hop by hop, one delegation per hop ---------------------------

    def main_turn(self, context: str) -> str:
        history = blocks(context)
        parsed = parse_question(history[0][1])
        if parsed is None:
            return wrap("answer", UNKNOWN)
        relations, subject = parsed
        results = [c for t, c in history if t == "result"]
        hop = len(results)
        current = results[-1] if results else subject
        if (hop >= len(relations) or (0 < hop and self._chance(self.noise.stop_early))
                or (hop == 1 and self._chance(self.noise.hasty))):
            return wrap("answer", current)
        relation = relations[hop]
        if self._chance(self.noise.wrong_relation):
            relation = self.rng.choice([r for r in RELATIONS if r != relation])
        return wrap("delegate", question_text([relation], current))

    # -- sub: search the subject, visit its document, read the fact -------------------------

    def sub_turn(self, context: str) -> str:
        history = blocks(context)
        parsed = parse_question(history[0][1])
        if parsed is None or len(parsed[0]) != 1:
            return wrap("return", UNKNOWN)
        (relation,), subject = parsed
        return self._research_step(history, relation, subject, final="return")

    def _research_step(self, history, relation: str, subject: str, final: str) -> str:
        """One hop of research: search -> visit -> read, decided from the latest action."""
        last_action = next((t for t, _ in reversed(history) if t in ("search", "visit")), None)
        observation = history[-1][1] if history[-1][0] == "obs" else ""
        if last_action is None:
            return wrap("search", subject)
        if last_action == "search":
            results = parse_search_results(observation)
            if not results:
                return wrap(final, UNKNOWN)
            if self._chance(self.noise.stop_early):
                return wrap(final, self.rng.choice(results)[1])
            exact = [doc for doc, title in results if title == subject]
            others = [doc for doc, title in results if title != subject]
            if not exact or (others and self._chance(self.noise.visit_distractor)):
                return wrap("visit", self.rng.choice(others or exact))
            return wrap("visit", exact[0])
        return wrap(final, self._read(observation, relation))

    def _read(self, document: str, relation: str) -> str:
        """The object of ``relation`` in a visited document (or another fact's, by mistake)."""
        facts = all_facts(document)
        if relation in MISREADINGS and self._chance(self.noise.misread):
            confused = [o for r, o in facts if r == MISREADINGS[relation]]
            if confused:
                return confused[0]
        right = [o for r, o in facts if r == relation]
        wrong = [o for r, o in facts if r != relation]
        if not right or (wrong and self._chance(self.noise.wrong_attribute)):
            return self.rng.choice(wrong) if wrong else UNKNOWN
        return right[0]

    # -- single: every hop itself ------------------------------------------------------------

    def single_turn(self, context: str) -> str:
        """Hop j is searched with the entity believed after hop j-1, so the search queries
        in the history record the agent's beliefs and no hidden state is needed."""
        history = blocks(context)
        parsed = parse_question(history[0][1])
        if parsed is None:
            return wrap("answer", UNKNOWN)
        relations, subject = parsed
        hop = max(0, sum(t == "search" for t, _ in history) - 1)
        last_action = next((t for t, _ in reversed(history) if t in ("search", "visit")), None)
        if last_action == "visit":  # hop finished: read it, then answer or start the next hop
            found = self._read(history[-1][1], relations[hop])
            if (hop + 1 >= len(relations) or self._chance(self.noise.stop_early)
                    or (hop == 0 and self._chance(self.noise.hasty))):
                return wrap("answer", found)
            return wrap("search", found)
        current = subject if hop == 0 else [c for t, c in history if t == "search"][-1]
        return self._research_step(history, relations[hop], current, final="answer")

"""The protocol: the text tags each role speaks, and a parser per role.

docs/paper.md section 1: the main agent delegates subtasks and writes the final answer; a
sub-agent receives one subtask, uses tools and returns a result (call-return: the main
agent waits). Our protocol is plain text tags, which any tokenizer can produce [ours]:

    role    the agent writes (one action a turn)           the environment inserts
    main    <delegate>sub-question</delegate>              <result>sub-agent's result</result>
            <answer>final answer</answer>                  (episode ends)
    sub     <search>query</search>                         <obs>top-k "[12] Title" lines</obs>
            <visit>12</visit>                              <obs>the document</obs>
            <return>result</return>                        (trajectory ends)
    single  <search>, <visit> as the sub-agent, then <answer> as the main agent

A trajectory opens with an environment prompt: a one-line instruction naming the role
(``ROLE_INSTRUCTIONS``; the main and the single agent see the same question, so only this
line tells them which protocol to speak), then ``<question>...</question>`` for the main
and single agents or ``<task>...</task>`` for a sub-agent.

Every turn's text is parsed into exactly one :class:`Action` or a :class:`FormatError`
with one of the reasons in ``FORMAT_ERRORS``. What happens next is defined in
``episode.py``: a format error ends that agent's trajectory as format-invalid.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

ROLES = ("main", "sub", "single")

ACTIONS = {
    "main": ("delegate", "answer"),
    "sub": ("search", "visit", "return"),
    "single": ("search", "visit", "answer"),
}
"""The action tags each role may write."""

FINAL_ACTION = {"main": "answer", "sub": "return", "single": "answer"}
"""The action that ends each role's trajectory."""

ENV_TAGS = ("question", "task", "result", "obs")
"""Tags only the environment writes."""

ALL_TAGS = ("delegate", "answer", "search", "visit", "return") + ENV_TAGS

FORMAT_ERRORS = {
    "empty": "the turn is empty or only whitespace",
    "overlong": "the turn is longer than the per-turn limit",
    "no_action": "no action tag at all",
    "unclosed": "an action tag is opened but never closed (e.g. generation hit its token limit)",
    "extra_text": "text outside the single action tag",
    "multiple_actions": "more than one action in one turn",
    "wrong_tag": "a tag this role may not write (another role's, or the environment's)",
    "nested_tag": "a tag inside the action's argument",
    "empty_argument": "the action tag holds nothing",
}
"""Every way a turn can be malformed, with what it means."""


@dataclass(frozen=True)
class Action:
    kind: str
    argument: str


@dataclass(frozen=True)
class FormatError:
    reason: str  # a key of FORMAT_ERRORS

    def __post_init__(self):
        if self.reason not in FORMAT_ERRORS:
            raise ValueError(f"unknown format error {self.reason!r}; one of {sorted(FORMAT_ERRORS)}")


def open_tag(tag: str) -> str:
    return f"<{tag}>"


def close_tag(tag: str) -> str:
    return f"</{tag}>"


def wrap(tag: str, content: str) -> str:
    """``<tag> content</tag>``: the space after the opening tag means a word is preceded by a
    space wherever it appears (in a document, a question, an action), so its tokens are the
    same everywhere and copying it is copying token ids. Parsers strip it."""
    return f"<{tag}> {content}</{tag}>"


def stop_strings(role: str) -> list[str]:
    """Closing tags at which a sampler should stop generating for ``role``."""
    return [close_tag(t) for t in ACTIONS[role]]


ROLE_INSTRUCTIONS = {
    "main": "You plan: delegate one sub-question per hop, then answer.",
    "sub": "You research: search, visit, then return the answer.",
    "single": "You research alone: search and visit for every hop, then answer.",
}
"""The first line of every prompt, per role."""

PROMPT_TAG = {"main": "question", "sub": "task", "single": "question"}


def prompt(role: str, text: str) -> str:
    """The environment's opening segment of a ``role`` trajectory about ``text``."""
    return f"{ROLE_INSTRUCTIONS[role]}\n{wrap(PROMPT_TAG[role], text)}\n"


_TAG_RE = re.compile(r"</?([a-z]+)>")
_BLOCK_RE = re.compile(r"<([a-z]+)>(.*?)</\1>", re.DOTALL)


def parse_action(role: str, text: str, max_chars: int = 200) -> Action | FormatError:
    """Turn one generated turn into an Action, or a FormatError saying what is wrong.

    Only leading and trailing whitespace is tolerated around the one action tag.
    """
    if role not in ACTIONS:
        raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
    body = text.strip()
    if not body:
        return FormatError("empty")
    if len(text) > max_chars:
        return FormatError("overlong")
    blocks = list(_BLOCK_RE.finditer(body))
    if not blocks:
        opened = _TAG_RE.search(body)
        return FormatError("unclosed" if opened and not opened.group(0).startswith("</") else "no_action")
    if len(blocks) > 1:
        return FormatError("multiple_actions")
    block = blocks[0]
    tag, argument = block.group(1), block.group(2)
    if tag not in ACTIONS[role]:
        return FormatError("wrong_tag")
    if "<" in argument or ">" in argument:
        return FormatError("nested_tag")
    if block.start() != 0 or block.end() != len(body):
        return FormatError("extra_text")
    if not argument.strip():
        return FormatError("empty_argument")
    return Action(tag, argument.strip())


def blocks(context: str) -> list[tuple[str, str]]:
    """Every complete ``<tag>content</tag>`` block of a context, in order: what ``_BLOCK_RE``
    finds (each opening tag closed by the first closing tag of its name after it, the blocks not
    overlapping), in O(n log n). The regex itself rescans the rest of the text from every
    unclosed opening tag, which takes seconds on a context of many thousands of them."""
    tags = [(m.start(), m.end(), m.group(0)[1] == "/", m.group(1)) for m in _TAG_RE.finditer(context)]
    closing: dict[str, list[tuple[int, int]]] = {}  # tag name -> (start, end) of each closing tag, in order
    for start, end, is_closing, name in tags:
        if is_closing:
            closing.setdefault(name, []).append((start, end))
    found, resume_at = [], 0
    for start, end, is_closing, name in tags:
        if is_closing or start < resume_at:  # inside the block found last
            continue
        ends = closing.get(name, [])
        i = bisect.bisect_left(ends, (end, -1))  # the first closing tag after this opening one
        if i < len(ends):
            found.append((name, context[end:ends[i][0]].strip()))
            resume_at = ends[i][1]
    return found

"""Our protocol inside a model's own chat format (for pretrained instruct models).

A trajectory is text segments: the environment's prompt (a role instruction line and the
question or subtask), the agent's turns, and what the environment inserts between them
(tool observations, the sub-agent's results). Our tiny base reads that text as it is. An
instruct model was trained on conversations in its chat template, so each segment is
rendered as a message of that template instead, with the tag protocol kept inside the
messages (the same parsers apply):

    segment   plain text (our base)                 chat messages (an instruct model)
    prompt    "You plan: ...\\n<question> q</question>\\n"
                                                    system: the instruction; user: <question> q</question>;
                                                    then the assistant's header
    agent     "<delegate> ...</delegate>"           the assistant's message, and its end-of-turn token
    env       "\\n<result> x</result>\\n"             user: <result> x</result>; the assistant's header

Each chat segment is a string, so a trajectory is still a list of segments: the loss mask
(``batching.encode_trajectory``) is 1 on exactly the agent's turns and the end-of-turn token
that closes each, and 0 on everything the template or the environment wrote. Rendering a
longer conversation only appends segments, so it extends the shorter one token for token
as long as the tokenizer splits at every segment boundary (tested on SmolLM2's tokenizer,
where each boundary is a special token or a newline).

A few-shot prompt (``few_shot``) puts worked conversations of the agent's role between the
system message and the real question: each a question, the teacher's turns as the
assistant's messages and the environment's inserts as the user's, exactly as the template
would render that conversation. They are part of the prompt, so they are never trained on.

The pieces of the template (``ChatFormat``) are read off the tokenizer's own chat template by
rendering marker messages and cutting the text around the markers, so any template of the
usual shape (a header before each message, an end-of-turn after it) works without code for
it here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .episode import Segment, Trajectory

MARKERS = ("\u2460SYSTEM\u2460", "\u2461USER\u2461", "\u2462ASSISTANT\u2462", "\u2463NEXT\u2463")
"""Strings no template writes, used to find where a message's content sits in a rendering."""


@dataclass(frozen=True)
class ChatFormat:
    """The text a chat template writes around messages, for the three segment kinds."""

    before_system: str
    """Everything up to the system message's content (e.g. "<|im_start|>system\\n")."""
    system_to_user: str
    """From the end of the system content to the start of the first user content."""
    user_to_assistant: str
    """From the end of a user content to the start of the assistant's content (its header)."""
    end_of_turn: str
    """What closes an assistant message, trained on as the agent's own (e.g. "<|im_end|>")."""
    assistant_to_user: str
    """From after the end-of-turn to the start of the next user content."""
    examples: tuple[tuple[str, str], ...] = ()
    """(role, rendered worked conversations) shown before each of that role's questions (``few_shot``)."""
    end_of_turn_ids: tuple[int, ...] = ()
    """The token ids of ``end_of_turn``, appended to a turn's sampled ids (``render``)."""

    def prompt(self, instruction: str, body: str, role: str | None = None) -> str:
        shown = dict(self.examples).get(role, "")
        return self.before_system + instruction + self.system_to_user + shown + body + self.user_to_assistant

    def agent(self, turn: str) -> str:
        return turn + self.end_of_turn

    def env(self, insert: str) -> str:
        return self.assistant_to_user + insert + self.user_to_assistant


def chat_format(tokenizer) -> ChatFormat | None:
    """The ``ChatFormat`` of a tokenizer's chat template, or None when it has none (our base).
    A template whose renderings do not have the usual shape is a ValueError naming what is off."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    system, user, assistant, nxt = MARKERS
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    first = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    longer = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": assistant}, {"role": "user", "content": nxt}],
        tokenize=False, add_generation_prompt=True)
    for text in (first, longer):
        if not (text.count(system) == text.count(user) == 1 and text.index(system) < text.index(user)):
            raise ValueError("the chat template does not render a system and a user message in order")
    if not longer.startswith(first[: first.index(user) + len(user)]):
        raise ValueError("the chat template renders the same opening differently in a longer conversation")
    after_assistant = longer[longer.index(assistant) + len(assistant): longer.index(nxt)]
    eos = tokenizer.eos_token or ""
    end_of_turn = eos if eos and after_assistant.startswith(eos) else ""
    user_to_assistant = first[first.index(user) + len(user):]
    if not longer.endswith(nxt + user_to_assistant):
        raise ValueError("the chat template closes a second user message differently from the first")
    return ChatFormat(before_system=first[: first.index(system)],
                      system_to_user=first[first.index(system) + len(system): first.index(user)],
                      user_to_assistant=user_to_assistant, end_of_turn=end_of_turn,
                      assistant_to_user=after_assistant[len(end_of_turn):],
                      end_of_turn_ids=tuple(tokenizer(end_of_turn, add_special_tokens=False)["input_ids"]))


def render(trajectory: Trajectory, fmt: ChatFormat | None) -> Trajectory:
    """The trajectory with each segment in the chat format (the same one if ``fmt`` is None):
    the same sources, so the loss mask follows; the other fields are kept. A turn's sampled ids
    are kept, followed by the end-of-turn's ids; with a format that knows the end-of-turn only
    as text, the turn is encoded from its text."""
    if fmt is None:
        return trajectory
    segments = []
    for segment in trajectory.segments:
        ids = None
        if segment.source == "prompt":
            instruction, _, body = segment.text.partition("\n")
            text = fmt.prompt(instruction, body.strip("\n"), trajectory.role)
        elif segment.source == "agent":
            text = fmt.agent(segment.text)
            if segment.ids is not None and (fmt.end_of_turn_ids or not fmt.end_of_turn):
                ids = list(segment.ids) + list(fmt.end_of_turn_ids)
        else:
            text = fmt.env(segment.text.strip("\n"))
        segments.append(Segment(segment.source, text, ids))
    return replace(trajectory, segments=segments)


def few_shot(fmt: ChatFormat, shots: list[Trajectory]) -> ChatFormat:
    """``fmt`` with the finished trajectories ``shots`` shown as worked conversations before
    every question of their role (each role's shots in the order given, replacing any
    ``fmt`` had for that role).

    A shot is rendered as the template renders a conversation: its question as a user
    message, then its turns and inserts as they alternate, its last turn closed by the
    end-of-turn token; the real question follows as the next user message.
    """
    shown: dict[str, str] = {}
    for shot in shots:
        if not shot.segments or shot.segments[0].source != "prompt" or shot.segments[-1].source != "agent":
            raise ValueError(f"a shot must be a finished trajectory (prompt first, a turn last), not {shot.role}'s "
                             f"{[s.source for s in shot.segments]}")
        question = shot.segments[0].text.partition("\n")[2].strip("\n")
        rest = "".join(s.text for s in render(shot, replace(fmt, examples=())).segments[1:])
        shown[shot.role] = shown.get(shot.role, "") + question + fmt.user_to_assistant + rest + fmt.assistant_to_user
    return replace(fmt, examples=tuple(dict(fmt.examples, **shown).items()))

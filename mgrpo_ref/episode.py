"""Episodes: the controller that runs the call-return interaction between the agents.

docs/paper.md sections 1 and 6: an agent controller drives the multi-turn interaction; the
main agent's delegation call blocks until the sub-agent returns. One rollout of a question
is a main trajectory tau_M and d >= 0 sub trajectories tau_S(1..d).

Each episode is written as a Python generator that ``yield``s a generation request
``(role, trajectory)`` and receives the agent's turn back (its text, or a ``Turn`` that also
carries the token ids a policy sampled). A delegation is ``yield from`` the sub-agent's
generator, which is exactly call-return: the main trajectory cannot go on until the sub
trajectory has returned. :func:`run_episodes` drives many such generators
at once and hands the pending requests of each role to its agent as one batch.

Every trajectory records its text as segments marked ``prompt``, ``agent`` or ``env``, so
a loss can later be masked to the tokens the agent generated itself (section 1); a policy's
turns also keep the ids it sampled, so that those very tokens are the ones trained on.

What happens on bad output (all of it decided here, [ours]):

* a format error (see ``protocol.FORMAT_ERRORS``) ends that agent's trajectory as
  format-invalid. A failed sub-agent's result reaches the main agent as
  ``SUB_FAILED``; a main or single agent with a format error gives no answer;
* an action repeated within a trajectory (the same search, visit or delegation again) is
  not executed: the environment answers ``REPEATED`` and the turn counts, so a looping
  agent runs into its turn limit;
* running out of turns ends the trajectory without a final action: format-invalid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Protocol

from .checks import check_int
from .grading import exact_match, lenient_match
from .protocol import FINAL_ACTION, FormatError, parse_action, prompt, wrap
from .tools import Tools
from .world import Question

SUB_FAILED = "error: the sub-agent returned no result"
REPEATED = "error: repeated action, not executed again"


@dataclass(frozen=True)
class Limits:
    """Bounds on every agent's behaviour in an episode."""

    main_turns: int = 6
    """Turns of the main agent (delegations plus the answer)."""
    sub_turns: int = 5
    """Turns of one sub-agent (searches and visits plus the return)."""
    single_turns: int = 12
    """Turns of the single agent, which does every hop itself."""
    max_turn_chars: int = 200
    """A longer turn is a format error ("overlong"); models are also bounded in tokens."""

    def __post_init__(self):
        for name in ("main_turns", "sub_turns", "single_turns", "max_turn_chars"):
            check_int(name, getattr(self, name), minimum=1)

    def turns(self, role: str) -> int:
        return {"main": self.main_turns, "sub": self.sub_turns, "single": self.single_turns}[role]


@dataclass
class Segment:
    source: str  # "prompt" | "agent" | "env"
    text: str
    ids: list[int] | None = None
    """An agent turn's token ids as the policy sampled them (``text`` is their decoding), or None
    when only the text is known (a scripted agent's turn, the prompt, the environment's inserts).
    Training encodes a segment with ids by its ids, not by encoding its text again: a tokenizer
    may split the same text differently ("o" + "pe" sampled, "ope" when re-encoded), and the
    update must score the tokens that were drawn (batching.encode_trajectory)."""


@dataclass(frozen=True)
class Turn:
    """What a policy writes for one context: the turn's text and the token ids it sampled."""

    text: str
    ids: list[int] | None
    """None when no run of the sampled ids decodes to exactly ``text`` (a closing tag that ends
    inside a token): the turn is then encoded from its text, as a scripted agent's is."""


@dataclass
class Trajectory:
    """One agent's side of an episode, as the exact text it saw and wrote."""

    role: str
    segments: list[Segment]
    outcome: str = "running"  # "final" | "format_error" | "turn_limit"
    error: str | None = None  # the FormatError reason, when outcome == "format_error"
    final: str | None = None  # the answer (main, single) or returned result (sub)
    actions: list[tuple[str, str]] = field(default_factory=list)  # the kind and argument of each executed turn
    subtask: str | None = None  # the subtask a sub-agent was given (None for main and single)

    @property
    def context(self) -> str:
        """Everything so far: what the agent conditions on for its next turn."""
        return "".join(s.text for s in self.segments)

    @property
    def format_valid(self) -> bool:
        return self.outcome == "final"

    @property
    def n_turns(self) -> int:
        return sum(s.source == "agent" for s in self.segments)

    @property
    def prompt(self) -> str:
        return self.segments[0].text


@dataclass
class Episode:
    """One rollout of one question: a main (or single) trajectory and its sub trajectories."""

    question: Question
    mode: str  # "multi" | "single"
    main: Trajectory | None  # None in the copy a sub-agent's trainer gets: it never sees the main agent's
    subs: list[Trajectory]
    rollout: int = 0

    @property
    def answer(self) -> str | None:
        return self.main.final

    @property
    def correct(self) -> bool:
        """correct(M): a well-formed main (or single) trajectory whose answer is an exact match.
        The one definition of correctness: rewards, training statistics and evaluation read it."""
        return self.main.format_valid and exact_match(self.answer, self.question.answer)

    @property
    def lenient(self) -> bool:
        return lenient_match(self.answer, self.question.answer)

    def to_dict(self) -> dict:
        return {"qid": self.question.qid, "question": self.question.text, "gold": self.question.answer,
                "n_hops": self.question.n_hops, "mode": self.mode, "rollout": self.rollout,
                "answer": self.answer, "correct": self.correct, "lenient": self.lenient,
                "main": asdict(self.main), "subs": [asdict(s) for s in self.subs]}


def transcript(episode: Episode) -> str:
    """A readable rendering of an episode, sub-agent turns indented under their delegation.

    A main-agent turn followed by an environment segment is an executed delegation; a repeated
    one (its (kind, argument) seen before) ran no sub-agent and gets none drawn under it.
    """
    lines = []
    subs, actions, seen = iter(episode.subs), iter(episode.main.actions), set()
    segments = episode.main.segments
    for i, seg in enumerate(segments):
        lines += [("> " if seg.source == "agent" else "  ") + t for t in seg.text.strip().splitlines()]
        executed = seg.source == "agent" and i + 1 < len(segments) and segments[i + 1].source == "env"
        if episode.mode != "multi" or not executed:
            continue
        action = next(actions)
        if action in seen:  # a repeated delegation: the environment answered REPEATED
            continue
        seen.add(action)
        sub = next(subs)
        lines += ["      " + ("> " if s.source == "agent" else "  ") + t
                  for s in sub.segments[1:] for t in s.text.strip().splitlines()]
    lines.append(f"gold: {episode.question.answer}   correct: {episode.correct}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Episodes as generators: yield (role, trajectory), receive the generated text.


def _agent_turn(traj: Trajectory, written: str | Turn, limits: Limits):
    """Record the agent's turn (its text, and its ids when it is a ``Turn``) and parse it;
    returns the Action, or None if the trajectory ended."""
    text, ids = (written.text, written.ids) if isinstance(written, Turn) else (written, None)
    traj.segments.append(Segment("agent", text, ids))
    action = parse_action(traj.role, text, limits.max_turn_chars)
    if isinstance(action, FormatError):
        traj.outcome, traj.error = "format_error", action.reason
        return None
    if action.kind == FINAL_ACTION[traj.role]:
        traj.outcome, traj.final = "final", action.argument
        return None
    return action


def _tool_observation(tools: Tools, kind: str, argument: str) -> str:
    return tools.search(argument) if kind == "search" else tools.visit(argument)


def _tool_trajectory(role: str, text: str, tools: Tools, limits: Limits):
    """A search/visit trajectory that ends with ``<return>`` (sub) or ``<answer>`` (single)."""
    traj = Trajectory(role, [Segment("prompt", prompt(role, text))], subtask=text if role == "sub" else None)
    for _ in range(limits.turns(role)):
        turn = yield role, traj
        action = _agent_turn(traj, turn, limits)
        if action is None:
            return traj
        key = (action.kind, action.argument)
        observation = REPEATED if key in traj.actions else _tool_observation(tools, *key)
        traj.actions.append(key)
        traj.segments.append(Segment("env", "\n" + wrap("obs", observation) + "\n"))
    traj.outcome = "turn_limit"
    return traj


def sub_episode(subtask: str, tools: Tools, limits: Limits):
    """One sub-agent call: search and visit until it returns a result."""
    return (yield from _tool_trajectory("sub", subtask, tools, limits))


def multi_agent_episode(question: Question, tools: Tools, limits: Limits, rollout: int = 0):
    """The main agent plans and delegates; each delegation runs a sub-agent to completion."""
    main = Trajectory("main", [Segment("prompt", prompt("main", question.text))])
    subs: list[Trajectory] = []
    for _ in range(limits.main_turns):
        turn = yield "main", main
        action = _agent_turn(main, turn, limits)
        if action is None:
            return Episode(question, "multi", main, subs, rollout)
        key = (action.kind, action.argument)
        if key in main.actions:
            result = REPEATED
        else:
            sub = yield from sub_episode(action.argument, tools, limits)  # call-return
            subs.append(sub)
            result = sub.final if sub.format_valid else SUB_FAILED
        main.actions.append(key)
        main.segments.append(Segment("env", "\n" + wrap("result", result) + "\n"))
    main.outcome = "turn_limit"
    return Episode(question, "multi", main, subs, rollout)


def single_agent_episode(question: Question, tools: Tools, limits: Limits, rollout: int = 0):
    """One agent does every hop itself with search and visit, then answers."""
    traj = yield from _tool_trajectory("single", question.text, tools, limits)
    return Episode(question, "single", traj, [], rollout)


# ---------------------------------------------------------------------------
# The controller


class Agent(Protocol):
    """Anything that writes the next turn for a batch of contexts of one role: as text, or as a
    ``Turn`` that also carries the token ids it sampled. A context is what ``agent_context``
    gives the agent."""

    def act(self, role: str, contexts: list) -> list[str | Turn]: ...


def agent_context(agent: Agent, trajectory: Trajectory) -> str | Trajectory:
    """What an agent continues. An agent with a ``render`` method (a policy) gets the trajectory
    in its own format (chat.py), segments and all, and encodes it segment by segment with each
    turn's sampled ids, exactly as training will encode it; any other agent gets the text."""
    render = getattr(agent, "render", None)
    return render(trajectory) if render is not None else trajectory.context


def run_episodes(
    questions: Iterable[Question],
    tools_for: Callable[[int], Tools],
    agents: dict[str, Agent],
    mode: str = "multi",
    limits: Limits = Limits(),
    rollouts: int = 1,
) -> list[Episode]:
    """Run ``rollouts`` episodes of every question, batching requests per role.

    ``tools_for(world_seed)`` gives the tools of a question's world; ``agents`` maps a role
    ("main" and "sub", or "single") to its agent. Episodes come back in the order
    (question, rollout).
    """
    if mode not in ("multi", "single"):
        raise ValueError(f"mode must be 'multi' or 'single', not {mode!r}")
    needed = ("main", "sub") if mode == "multi" else ("single",)
    missing = [r for r in needed if r not in agents]
    if missing:
        raise ValueError(f"mode {mode!r} needs agents for roles {needed}; missing {missing}")
    make = multi_agent_episode if mode == "multi" else single_agent_episode
    gens = [make(q, tools_for(q.world_seed), limits, k) for q in questions for k in range(rollouts)]
    results: list[Episode | None] = [None] * len(gens)
    pending = {i: g.send(None) for i, g in enumerate(gens)}  # i -> (role, trajectory)
    while pending:
        for role in needed:
            batch = [i for i, (r, _) in pending.items() if r == role]
            if not batch:
                continue
            turns = agents[role].act(role, [agent_context(agents[role], pending[i][1]) for i in batch])
            if len(turns) != len(batch):
                raise RuntimeError(f"agent for {role!r} returned {len(turns)} turns for {len(batch)} contexts")
            for i, turn in zip(batch, turns):
                try:
                    pending[i] = gens[i].send(turn)
                except StopIteration as done:
                    results[i] = done.value
                    del pending[i]
    return results  # type: ignore[return-value]

"""Shared test helpers: a replaying agent and question lookup."""

from mgrpo_ref.world import load_questions


class Replay:
    """An agent that writes fixed turns, one list per role, in order."""

    def __init__(self, **turns):
        self.turns = {role: list(t) for role, t in turns.items()}

    def act(self, role, contexts):
        return [self.turns[role].pop(0) for _ in contexts]


def one_question(hops):
    """The first evaluation question with ``hops`` hops."""
    return next(q for q in load_questions("eval") if q.n_hops == hops)

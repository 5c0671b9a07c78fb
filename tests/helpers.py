"""Shared test helpers: a replaying agent, question lookup, and a metrics line without what varies run to run."""

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


def deterministic(record: dict) -> dict:
    """A metrics line without what a seed does not decide: wall-clock timings and memory peaks."""
    return {k: v for k, v in record.items()
            if not k.startswith(("time/", "memory/")) and not k.endswith(("update_s", "store_s"))}

"""Rewards of the main agent and of the sub-agent (docs/paper.md section 2).

The main agent is rewarded for a well-formed trajectory and a correct final answer; the
sub-agent for its own well-formed trajectory, for the main agent's final correctness (the
two share a fate) and for an offline check of its own result. Because R_S carries the main
agent's correctness, credit flows down the hierarchy without any gradient crossing.

    Eq. (R1)  R_M = 0                                  if M's format is invalid
              R_M = a1 * 1 + a2 * correct(M)           otherwise
    Eq. (R2)  R_S = 0                                  if S's format is invalid
              R_S = b1 + b2 * correct(M) + b3 * r_eval(S)   otherwise

r_eval(S) is our offline stand-in for the paper's LLM scorer [ours]: 1 when the subtask
S was given is one of the question's gold hop sub-questions and S returned that hop's
gold answer, 0 otherwise (a subtask that matches no gold hop too). No tensors: Python values in, floats out.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import check_number
from .episode import Episode, Trajectory
from .grading import exact_match, normalize_answer
from .world import Question


@dataclass(frozen=True)
class RewardConfig:
    """Reward coefficients. Defaults put both agents' rewards in [0, 1]."""

    a1: float = 0.1
    """Main: weight of a valid format. 0.1 as in the release (valid but wrong -> 0.1)."""
    a2: float = 0.9
    """Main: weight of correctness (valid and correct -> 1.0, as in the release)."""
    b1: float = 0.1
    """Sub: weight of its own valid format; small, so a well-formed but useless call earns little."""
    b2: float = 0.5
    """Sub: weight of the main agent's correctness (shared fate); the largest term, because the
    team's outcome is what the sub-agent exists for."""
    b3: float = 0.4
    """Sub: weight of the offline verifier of its own result; keeps a local signal when the main
    agent fails for reasons that are not the sub-agent's fault (and vice versa)."""

    def __post_init__(self):
        for name in ("a1", "a2", "b1", "b2", "b3"):
            check_number(name, getattr(self, name), low=0)


def main_reward(format_valid: bool, correct: bool, cfg: RewardConfig = RewardConfig()) -> float:
    """Eq. (R1): format-gated format + correctness."""
    if not format_valid:
        return 0.0
    return cfg.a1 + cfg.a2 * float(correct)  # Eq. (R1)


def sub_reward(format_valid: bool, main_correct: bool, verified: bool,
               cfg: RewardConfig = RewardConfig()) -> float:
    """Eq. (R2): format-gated composite of shared fate and the sub-agent's own result."""
    if not format_valid:
        return 0.0
    return cfg.b1 + cfg.b2 * float(main_correct) + cfg.b3 * float(verified)  # Eq. (R2)


def verify_sub_result(subtask: str, result: str | None, question: Question) -> bool:
    """r_eval: the subtask is a gold hop's sub-question and the result is that hop's answer."""
    asked = normalize_answer(subtask)
    for hop in question.hops:
        if normalize_answer(hop.question) == asked:
            return exact_match(result, hop.answer)
    return False


def rollout_main_reward(episode: Episode, cfg: RewardConfig = RewardConfig()) -> float:
    """Eq. (R1) of one rollout, from its main (or single) trajectory and correct(M)."""
    return main_reward(episode.main.format_valid, episode.correct, cfg)


def rollout_sub_rewards(question: Question, subs: list[Trajectory], main_correct: bool,
                        cfg: RewardConfig = RewardConfig()) -> tuple[list[float], list[bool]]:
    """Eq. (R2) of each sub trajectory of one rollout, and r_eval of each.

    ``main_correct`` is correct(M) of the rollout: the sub-agent's trainer reads it from the
    store, never from the main trajectory, which it does not see.
    """
    verified = [verify_sub_result(s.subtask, s.final, question) for s in subs]
    rewards = [sub_reward(s.format_valid, main_correct, ok, cfg) for s, ok in zip(subs, verified)]
    return rewards, verified


def episode_rewards(episode: Episode, cfg: RewardConfig = RewardConfig()) -> tuple[float, list[float]]:
    """(R_M, [R_S for each sub trajectory]) of one rollout; a single agent gets Eq. (R1) alone.

    The same two functions the training step calls (``step.py``), composed in one process.
    """
    r_subs, _ = rollout_sub_rewards(episode.question, episode.subs, episode.correct, cfg)
    return rollout_main_reward(episode, cfg), r_subs

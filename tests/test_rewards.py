"""Tests for mgrpo_ref.rewards: Eq. (R1), Eq. (R2) and the offline verifier, by hand.

Default coefficients: a1 = 0.1, a2 = 0.9 (main); b1 = 0.1, b2 = 0.5, b3 = 0.4 (sub).
"""

import itertools

import pytest
import torch

from mgrpo_ref.advantages import main_advantages, sub_advantages
from mgrpo_ref.episode import run_episodes
from mgrpo_ref.rewards import RewardConfig, episode_rewards, main_reward, sub_reward, verify_sub_result
from mgrpo_ref.tools import ToolsByWorld
from mgrpo_ref.world import load_questions

from helpers import Replay, one_question  # noqa: E402

TOOLS = ToolsByWorld()




def delegate(text):
    return f"<delegate>{text}</delegate>"


def play(question, main, sub=()):
    """One multi-agent episode with fixed turns for the main agent and for its sub-agents."""
    agents = {"main": Replay(main=main), "sub": Replay(sub=list(sub))}
    (episode,) = run_episodes([question], TOOLS, agents)
    return episode


# ---------------------------------------------------------------------------
# Eq. (R1) and Eq. (R2) by hand


@pytest.mark.parametrize("format_valid, correct, expected", [
    (True, True, 1.0),    # a1 + a2 = 0.1 + 0.9
    (True, False, 0.1),   # a1 only: well formed but wrong
    (False, True, 0.0),   # format-gated: nothing, whatever the answer
    (False, False, 0.0),
])
def test_main_reward_by_hand(format_valid, correct, expected):
    assert main_reward(format_valid, correct) == pytest.approx(expected)


@pytest.mark.parametrize("main_correct, verified, expected", [
    (True, True, 1.0),    # b1 + b2 + b3 = 0.1 + 0.5 + 0.4
    (True, False, 0.6),   # b1 + b2: the team won, this sub's own result did not check out
    (False, True, 0.5),   # b1 + b3: right result, but the main agent still failed
    (False, False, 0.1),  # b1 only: well formed, nothing else
])
def test_sub_reward_by_hand(main_correct, verified, expected):
    assert sub_reward(True, main_correct, verified) == pytest.approx(expected)


def test_invalid_format_gives_zero_whatever_else():
    for main_correct, verified in itertools.product([False, True], repeat=2):
        assert sub_reward(False, main_correct, verified) == 0.0
    for cfg in (RewardConfig(), RewardConfig(a1=0.5, a2=2.0, b1=0.3, b2=1.0, b3=1.0)):
        assert main_reward(False, True, cfg) == 0.0
        assert sub_reward(False, True, True, cfg) == 0.0


def test_custom_coefficients():
    # Release-like sub reward: only "format x main score" (b1 = b3 = 0, b2 = 1).
    release = RewardConfig(b1=0.0, b2=1.0, b3=0.0)
    assert sub_reward(True, True, False, release) == 1.0
    assert sub_reward(True, False, True, release) == 0.0  # its own verified result earns nothing
    # A main reward that pays more for format: 0.3 + 0.7 * correct.
    cfg = RewardConfig(a1=0.3, a2=0.7)
    assert main_reward(True, False, cfg) == pytest.approx(0.3)
    assert main_reward(True, True, cfg) == pytest.approx(1.0)
    # Sub: 0.2 + 0.3 * correct(M) + 0.5 * verified -> 0.2 + 0.5 = 0.7 when M failed.
    assert sub_reward(True, False, True, RewardConfig(b1=0.2, b2=0.3, b3=0.5)) == pytest.approx(0.7)


def test_default_rewards_lie_in_unit_interval():
    cfg = RewardConfig()
    assert cfg.a1 + cfg.a2 == pytest.approx(1.0)
    assert cfg.b1 + cfg.b2 + cfg.b3 == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# the offline verifier r_eval


def test_verify_sub_result_matches_gold_hop_after_normalisation():
    # hops: "What is the headquarters of X?" -> h1, then "What is the country of h1?" -> h2
    q = one_question(2)
    first, second = q.hops
    assert verify_sub_result(first.question, first.answer, q)
    # case, punctuation and whitespace are normalised, in the subtask and in the result
    shouted = "  " + first.question.upper().replace("?", " ?!") + " "
    assert verify_sub_result(shouted, f" {first.answer.lower()}. ", q)
    assert verify_sub_result(second.question, second.answer, q)


def test_verify_sub_result_rejects_wrong_or_unmatched():
    q = one_question(2)
    first, second = q.hops
    assert not verify_sub_result(first.question, "Nowhere", q)  # wrong result
    assert not verify_sub_result(first.question, None, q)  # no result (format-invalid sub)
    # the answer of another hop is wrong for this hop
    assert not verify_sub_result(first.question, second.answer, q)
    # a subtask that is no gold hop earns nothing, even with a gold answer in it
    assert not verify_sub_result("What is the founder of Kaun?", second.answer, q)
    assert not verify_sub_result(q.text, q.answer, q)  # the whole 2-hop question is not a hop


# ---------------------------------------------------------------------------
# episode_rewards on crafted episodes


def test_everything_right():
    q = one_question(2)
    first, second = q.hops
    main = [delegate(first.question), delegate(second.question), f"<answer>{q.answer}</answer>"]
    episode = play(q, main,
                   ["<search>a</search>", f"<return>{first.answer}</return>",
                    "<search>b</search>", f"<return>{second.answer}</return>"])
    assert [s.subtask for s in episode.subs] == [first.question, second.question]
    # R_M = a1 + a2 = 1.0; each sub: b1 + b2 + b3 = 1.0
    r_main, r_subs = episode_rewards(episode)
    assert r_main == pytest.approx(1.0) and r_subs == pytest.approx([1.0, 1.0])


def test_good_sub_and_bad_sub_when_main_fails():
    q = one_question(2)
    first, _ = q.hops
    main = [delegate(first.question), delegate("What is the founder of Kaun?"), "<answer>Kaun</answer>"]
    episode = play(q, main,
                   ["<search>a</search>", f"<return>{first.answer}</return>",
                    "<search>b</search>", "<return>Someone</return>"])
    r_main, r_subs = episode_rewards(episode)
    # main: valid but wrong (it answered the first hop's answer) -> a1 = 0.1
    # sub 1: valid, M wrong, verified -> b1 + b3 = 0.5
    # sub 2: valid, M wrong, subtask matches no gold hop -> b1 = 0.1
    assert r_main == pytest.approx(0.1)
    assert r_subs == pytest.approx([0.5, 0.1])


def test_failed_sub_gets_zero_even_when_main_is_right():
    q = one_question(1)
    main = [delegate(q.hops[0].question), f"<answer>{q.answer}</answer>"]
    episode = play(q, main, ["<search>oops"])
    assert not episode.subs[0].format_valid and episode.correct
    # main: 1.0 (it guessed right); sub: format-invalid -> 0, shared fate does not help
    assert episode_rewards(episode) == (pytest.approx(1.0), [0.0])


def test_main_format_error_means_main_not_correct_for_the_sub():
    q = one_question(1)
    hop = q.hops[0]
    episode = play(q, [delegate(hop.question), f"answer: {hop.answer}"],
                   ["<search>a</search>", f"<return>{hop.answer}</return>"])
    assert episode.main.error == "no_action"
    r_main, r_subs = episode_rewards(episode)
    # main: format-invalid -> 0; sub: valid, M not correct, verified -> b1 + b3 = 0.5
    assert r_main == 0.0 and r_subs == pytest.approx([0.5])


def test_episode_rewards_with_custom_coefficients():
    q = one_question(1)
    hop = q.hops[0]
    episode = play(q, [delegate(hop.question), f"<answer>{q.answer}</answer>"],
                   ["<search>a</search>", "<return>wrong</return>"])
    cfg = RewardConfig(a1=0.2, a2=0.8, b1=0.0, b2=1.0, b3=0.0)
    # main: 0.2 + 0.8 = 1.0; sub: 0 + 1.0 * correct(M) + 0 = 1.0 although its own result was wrong
    assert episode_rewards(episode, cfg) == (pytest.approx(1.0), [pytest.approx(1.0)])
    # with the defaults the wrong sub result costs b3: 0.1 + 0.5 = 0.6
    assert episode_rewards(episode)[1] == [pytest.approx(0.6)]


def test_single_agent_gets_main_reward_and_no_sub_rewards():
    q = one_question(1)
    agents = {"single": Replay(single=[f"<answer>{q.answer}</answer>"])}
    (episode,) = run_episodes([q], TOOLS, agents, mode="single")
    assert episode_rewards(episode) == (pytest.approx(1.0), [])


def test_non_finite_or_negative_coefficients_are_refused_when_the_config_is_built():
    # A mistyped coefficient (nan), an overflowing one (inf) or a negative weight is refused
    # at once, with the field named, instead of turning every advantage of a group into NaN.
    for field, value in (("a2", float("inf")), ("b2", float("nan")), ("b1", -0.1)):
        with pytest.raises(ValueError, match=f"{field}=.* is invalid: must be a finite number >= 0"):
            RewardConfig(**{field: value})


def test_non_finite_rewards_are_rejected_by_the_advantages():
    with pytest.raises(ValueError, match="finite"):
        main_advantages(torch.tensor([[float("inf"), 0.1]]))
    with pytest.raises(ValueError, match="finite"):
        sub_advantages(torch.tensor([float("nan"), 0.5]), torch.zeros(2, dtype=torch.long))


def test_the_subtask_is_kept_as_the_main_agent_delegated_it():
    """The sub trajectory keeps its subtask as given, equal to the <task> block of its prompt."""
    from mgrpo_ref.protocol import blocks
    from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise

    teacher = ScriptedAgent(TeacherNoise().scaled(2.0), seed=5)
    episodes = run_episodes(load_questions("eval")[:40], TOOLS, {"main": teacher, "sub": teacher}, rollouts=2)
    subs = [s for e in episodes for s in e.subs]
    assert len(subs) > 50
    for s in subs:
        assert s.subtask == next(content for tag, content in blocks(s.prompt) if tag == "task")

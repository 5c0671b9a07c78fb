"""Episodes, the controller and the scripted agents, end to end without any model."""

from dataclasses import replace

import pytest

from mgrpo_ref.episode import REPEATED, SUB_FAILED, Limits, run_episodes, transcript
from mgrpo_ref.evaluate import evaluate, make_agent, summarize
from mgrpo_ref.protocol import prompt, wrap
from mgrpo_ref.scripted import MISREADINGS, ORACLE_NOISE, ScriptedAgent, TeacherNoise
from mgrpo_ref.tools import ToolsByWorld
from mgrpo_ref.world import EVAL_SEED, generate_world, load_questions

from helpers import Replay, one_question  # noqa: E402

TOOLS = ToolsByWorld()




@pytest.mark.parametrize("split", ["train", "eval", "eval_worlds"])
def test_oracle_answers_every_question_of_every_split(split):
    questions = load_questions(split)
    oracle = make_agent("oracle")
    multi, _ = evaluate(questions, {"main": oracle, "sub": oracle}, "multi", progress=False)
    single, _ = evaluate(questions, {"single": oracle}, "single", progress=False)
    assert multi["accuracy"] == 1.0 and single["accuracy"] == 1.0
    assert multi["format_valid"] == 1.0 and multi["sub_format_valid"] == 1.0
    # the oracle delegates exactly one sub-question per hop
    assert multi["mean_sub_calls"] == pytest.approx(sum(q.n_hops for q in questions) / len(questions))


def test_teacher_accuracy_falls_as_noise_rises():
    questions = load_questions("eval")
    accuracies = []
    for factor in (0.0, 0.5, 1.0, 2.0, 4.0):
        agents = {"main": make_agent("teacher", factor, 0), "sub": make_agent("teacher", factor, 1)}
        accuracies.append(evaluate(questions, agents, progress=False)[0]["accuracy"])
    assert accuracies[0] == 1.0
    assert all(a > b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert 0.3 <= accuracies[2] <= 0.7  # the default teacher: room to learn, not broken


def test_the_report_gives_accuracy_per_held_out_world():
    questions = load_questions("eval_worlds")
    agents = {"main": make_agent("teacher", 1.0, 0), "sub": make_agent("teacher", 1.0, 1)}
    report, episodes = evaluate(questions, agents, progress=False)
    by_world = report["accuracy_by_world"]
    assert sorted(by_world) == sorted({q.world_seed for q in questions}) and len(by_world) == 6
    for seed, accuracy in by_world.items():
        mine = [e.correct for e in episodes if e.question.world_seed == seed]
        assert accuracy == sum(mine) / len(mine)
    assert report["accuracy"] == pytest.approx(sum(by_world.values()) / 6)  # 40 questions in each


def test_teacher_makes_every_kind_of_mistake():
    questions = load_questions("eval")
    agents = {"main": make_agent("teacher", 2.0, 0), "sub": make_agent("teacher", 2.0, 1)}
    report, episodes = evaluate(questions, agents, progress=False)
    errors = {k.split("/")[1] for k in report["format_errors"]}
    assert {"unclosed", "no_action", "extra_text", "empty_argument", "wrong_tag"} <= errors
    delegated = [seg.text for e in episodes for seg in e.main.segments if seg.source == "agent"]
    gold = {h.question for q in questions for h in q.hops}
    assert any(t.startswith("<delegate>") and t[10:-11] not in gold for t in delegated)  # wrong relation


def test_episode_records_agent_and_environment_text():
    q = one_question(2)
    oracle = ScriptedAgent(ORACLE_NOISE)
    (episode,) = run_episodes([q], TOOLS, {"main": oracle, "sub": oracle})
    assert [s.source for s in episode.main.segments] == ["prompt", "agent", "env", "agent", "env", "agent"]
    assert episode.main.context == "".join(s.text for s in episode.main.segments)
    assert len(episode.subs) == 2
    for sub, hop in zip(episode.subs, q.hops):
        assert sub.prompt == prompt("sub", hop.question)
        assert sub.prompt.endswith(f"<task> {hop.question}</task>\n")
        assert [s.source for s in sub.segments] == ["prompt", "agent", "env", "agent", "env", "agent"]
        assert sub.final == hop.answer
    assert episode.correct and "correct: True" in transcript(episode)


def test_sub_format_error_reaches_main_as_failure():
    q = one_question(1)
    agents = {"main": Replay(main=["<delegate>" + q.hops[0].question + "</delegate>", "<answer>x</answer>"]),
              "sub": Replay(sub=["<search>oops"])}
    (episode,) = run_episodes([q], TOOLS, agents)
    sub = episode.subs[0]
    assert sub.outcome == "format_error" and sub.error == "unclosed" and not sub.format_valid
    assert wrap("result", SUB_FAILED) in episode.main.context
    assert episode.main.format_valid and not episode.correct


def test_main_format_error_ends_the_episode_without_answer():
    q = one_question(1)
    agents = {"main": Replay(main=["I would delegate"]), "sub": Replay(sub=[])}
    (episode,) = run_episodes([q], TOOLS, agents)
    assert episode.main.outcome == "format_error" and episode.main.error == "no_action"
    assert episode.answer is None and not episode.correct and episode.subs == []


def test_repeated_actions_are_not_executed_and_loops_hit_the_turn_limit():
    q = one_question(1)
    limits = Limits(sub_turns=3, main_turns=3)
    delegate = "<delegate>" + q.hops[0].question + "</delegate>"
    agents = {"main": Replay(main=[delegate] * 3),
              "sub": Replay(sub=["<search>ba</search>"] * 3)}
    (episode,) = run_episodes([q], TOOLS, agents, limits=limits)
    sub = episode.subs[0]
    assert sub.outcome == "turn_limit" and not sub.format_valid
    assert sub.context.count(wrap("obs", REPEATED)) == 2
    # the main agent repeated its delegation: no second sub-agent ran
    assert len(episode.subs) == 1
    assert episode.main.outcome == "turn_limit" and episode.main.context.count(REPEATED) == 2


def test_bad_tool_calls_become_observations():
    q = one_question(1)
    agents = {"single": Replay(single=["<visit>9999</visit>", "<search></search>", "<answer>x</answer>"])}
    (episode,) = run_episodes([q], TOOLS, agents, mode="single")
    assert "<obs> error: no document 9999</obs>" in episode.main.context
    assert episode.main.outcome == "format_error" and episode.main.error == "empty_argument"


def test_rollouts_batching_and_bad_arguments():
    questions = load_questions("eval")[:5]
    teacher = ScriptedAgent(TeacherNoise(), seed=3)
    episodes = run_episodes(questions, TOOLS, {"main": teacher, "sub": teacher}, rollouts=4)
    assert [(e.question.qid, e.rollout) for e in episodes] == [(q.qid, k) for q in questions for k in range(4)]
    with pytest.raises(ValueError, match="missing"):
        run_episodes(questions, TOOLS, {"main": teacher}, mode="multi")
    with pytest.raises(ValueError, match="mode"):
        run_episodes(questions, TOOLS, {"main": teacher}, mode="solo")
    with pytest.raises(ValueError, match="no episodes to summarize"):
        summarize([])


def test_misread_is_a_systematic_confusion_of_the_named_relations_only():
    """With misread = 1 and no other noise, the teacher answers every question that asks none
    of MISREADINGS' relations, and at the first hop that asks one it copies the confused
    relation's fact. (What follows a wrong hop is the world's business: it rarely, by luck,
    leads back to the gold answer.)"""
    questions = load_questions("eval")[:120]
    teacher = ScriptedAgent(replace(ORACLE_NOISE, misread=1.0))
    report, episodes = evaluate(questions, {"main": teacher, "sub": teacher}, progress=False)
    world = generate_world(EVAL_SEED)
    for q, e in zip(questions, episodes):
        confused = [h for h in q.hops if h.relation in MISREADINGS]
        assert e.correct or confused, q.text
        if confused:  # the hops before it are right, so its sub-agent got the gold subject
            h = confused[0]
            assert f"<result> {world.follow(h.subject, MISREADINGS[h.relation])}</result>" in e.main.context
    n_clear = sum(not any(h.relation in MISREADINGS for h in q.hops) for q in questions)
    assert 0 < n_clear / len(questions) <= report["accuracy"] < n_clear / len(questions) + 0.05


@pytest.mark.parametrize("mode", ["multi", "single"])
def test_hasty_answers_a_multi_hop_question_after_its_first_hop(mode):
    """With hasty = 1 and no other noise, one-hop questions are answered right and every
    multi-hop question is answered with its first hop's answer, by the main or single agent."""
    questions = load_questions("eval")[:80]
    teacher = ScriptedAgent(replace(ORACLE_NOISE, hasty=1.0))
    agents = {"main": teacher, "sub": teacher} if mode == "multi" else {"single": teacher}
    report, episodes = evaluate(questions, agents, mode, progress=False)
    n_one_hop = sum(len(q.hops) == 1 for q in questions)
    assert 0 < n_one_hop < len(questions)
    for q, e in zip(questions, episodes):
        assert e.correct == (len(q.hops) == 1), q.text
        assert e.main.context.rstrip().endswith(f"<answer> {q.hops[0].answer}</answer>"), q.text
        if mode == "multi":
            assert len(e.subs) == 1
    assert report["accuracy"] == n_one_hop / len(questions)


def test_failure_kind_names_the_first_step_off_the_gold_chain():
    from copy import deepcopy

    from mgrpo_ref.evaluate import failure_kind

    oracle = ScriptedAgent(ORACLE_NOISE)
    (good,) = run_episodes([one_question(2)], TOOLS, {"main": oracle, "sub": oracle})
    assert failure_kind(good) == "correct" and len(good.subs) == 2

    def broken(**changes):
        e = deepcopy(good)
        e.main.final = "nobody at all"  # every broken copy also answers wrongly
        for what, value in changes.items():
            if what == "main_outcome":
                e.main.outcome = value
            elif what == "sub_result":
                e.subs[value].final = "nobody at all"
            elif what == "sub_task":
                e.subs[value].subtask = "Who founded the moon?"
        return e

    assert failure_kind(broken()) == "wrong final answer"
    assert failure_kind(broken(main_outcome="format_error")) == "main format"
    assert failure_kind(broken(sub_result=0)) == "sub failed a gold hop"
    assert failure_kind(broken(sub_result=1)) == "sub failed a gold hop"
    assert failure_kind(broken(sub_task=1)) == "off the gold chain"
    assert failure_kind(broken(sub_task=0, sub_result=1)) == "off the gold chain"  # the first step decides
    overshot = broken()
    overshot.subs.append(deepcopy(overshot.subs[-1]))
    overshot.subs[-1].subtask = f"What is the country of {good.question.answer}?"  # one hop too many
    overshot.main.final = overshot.subs[-1].final = "Somewhere Else"
    assert failure_kind(overshot) == "past the last hop"
    overshot.subs[0].final = "nobody at all"
    assert failure_kind(overshot) == "sub failed a gold hop"  # only after every hop was answered right
    hasty = ScriptedAgent(replace(ORACLE_NOISE, hasty=1.0))
    (early,) = run_episodes([one_question(2)], TOOLS, {"main": hasty, "sub": hasty})
    assert len(early.subs) == 1 and failure_kind(early) == "stopped early"
    (single,) = run_episodes([one_question(1)], TOOLS, {"single": oracle}, "single")
    with pytest.raises(ValueError, match="multi-agent episodes only"):
        failure_kind(single)


def test_transcript_draws_each_sub_agent_under_its_own_delegation():
    """A repeated delegation runs no sub-agent: nothing is drawn under it, and the next
    delegation shows its own sub-agent (it used to show the next one's, one step off)."""
    q = one_question(2)
    first, second = q.hops
    main = Replay(main=[f"<delegate>{first.question}</delegate>", f"<delegate>{first.question}</delegate>",
                        f"<delegate>{second.question}</delegate>", f"<answer>{q.answer}</answer>"],
                  sub=["<search>first hop</search>", f"<return>{first.answer}</return>",
                       "<search>second hop</search>", f"<return>{second.answer}</return>"])
    (episode,) = run_episodes([q], TOOLS, {"main": main, "sub": main})
    assert len(episode.subs) == 2 and episode.correct
    lines = transcript(episode).splitlines()
    delegations = [i for i, line in enumerate(lines) if line.startswith("> <delegate>")]
    assert len(delegations) == 3
    under = [lines[a + 1:b] for a, b in zip(delegations, delegations[1:] + [len(lines)])]
    assert any("first hop" in line for line in under[0]) and not any("second hop" in line for line in under[0])
    assert not any(line.startswith("      ") for line in under[1])  # the repeat: no sub-agent
    assert REPEATED in "\n".join(under[1])
    assert any("second hop" in line for line in under[2]) and not any("first hop" in line for line in under[2])


@pytest.mark.parametrize("field", ["main_turns", "sub_turns", "single_turns", "max_turn_chars"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "3"])
def test_limits_refuse_a_turn_limit_below_one(field, value):
    with pytest.raises(ValueError, match=f"{field}=.* is invalid: must be an integer >= 1"):
        Limits(**{field: value})

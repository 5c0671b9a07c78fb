"""The next-turn probe (probes.py) on the committed base model, in full precision."""

import pytest
import torch

from mgrpo_ref import probes
from mgrpo_ref.evaluate import make_agent
from mgrpo_ref.tools import ToolsByWorld
from mgrpo_ref.world import load_questions


@pytest.fixture(scope="module")
def contexts():
    return probes.after_first_result(load_questions("eval_worlds")[:30], ToolsByWorld())


def test_each_context_ends_right_after_the_first_result_of_a_multi_hop_question(contexts):
    questions = [q for q in load_questions("eval_worlds")[:30] if q.n_hops >= 2]
    assert len(contexts) == len(questions) > 5
    for trajectory, question in zip(contexts, questions):
        context = trajectory.context
        assert question.text in context and context.count("<delegate>") == context.count("<result>") == 1
        assert context.endswith("</result>\n") and f"<result> {question.hops[0].answer}</result>" in context
        assert [s.source for s in trajectory.segments] == ["prompt", "agent", "env"]


def test_the_base_prefers_to_answer_after_the_first_result(contexts):
    """The base's known habit (docs/base-model.md): it stops after the first hop."""
    p = probes.next_token_probabilities(make_agent("data/base", quantization="none"), contexts)  # (n, 2)
    assert p.shape == (len(contexts), 2) and ((p > 0) & (p < 1)).all() and (p.sum(dim=1) <= 1 + 1e-6).all()
    assert (p[:, 1] > p[:, 0]).float().mean() > 0.8
    (row,) = probes.probe_adapters({0: "data/base"}, contexts, quantization="none")
    assert row["step"] == 0 and row["<answer>"] == pytest.approx(p[:, 1].mean().item(), abs=1e-6)
    assert row["delegate_preferred"] == pytest.approx((p[:, 0] > p[:, 1]).float().mean().item())


def test_a_batch_of_contexts_gives_each_context_its_own_probabilities(contexts):
    """Right padding must not move a shorter context's last position."""
    policy = make_agent("data/base", quantization="none")
    together = probes.next_token_probabilities(policy, contexts[:4])
    alone = torch.cat([probes.next_token_probabilities(policy, [c]) for c in contexts[:4]])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)

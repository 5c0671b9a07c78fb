"""One agent's side of a step: rewards from records, advantages, aligned batch, the update."""

import pytest
import torch

from mgrpo_ref.episode import run_episodes
from mgrpo_ref.objective import clipped_surrogate_loss
from mgrpo_ref.policy import load_policy
from mgrpo_ref.pretrain import SIZES, pretrain
from mgrpo_ref.rewards import RewardConfig
from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise
from mgrpo_ref.tools import ToolsByWorld
from mgrpo_ref.update import (PolicyBatch, RolloutRecord, concat_batches, main_batch, main_rewards,
                              policy_update, sub_batch, sub_rewards)
from mgrpo_ref.world import load_questions

B, K, D = 3, 4, 3


@pytest.fixture(scope="module")
def records():
    questions = load_questions("eval")[:B]
    teacher = ScriptedAgent(TeacherNoise().scaled(1.5), seed=2)
    episodes = run_episodes(questions, ToolsByWorld(), {"main": teacher, "sub": teacher}, rollouts=K)
    return [RolloutRecord(i // K, i % K, e.question, e.main, e.subs) for i, e in enumerate(episodes)]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    pretrain(SIZES["tiny"], out, progress=False)
    return load_policy(out)


def test_main_rewards_rows_match_eq_r1(records):
    rows = main_rewards(records, RewardConfig())
    assert [(r["question"], r["rollout"]) for r in rows] == [(b, k) for b in range(B) for k in range(K)]
    for rec, row in zip(records, rows):
        expected = 0.0 if not rec.main.format_valid else (1.0 if row["correct"] else 0.1)
        assert row["main_reward"] == pytest.approx(expected) and row["n_sub"] == len(rec.subs)


def test_sub_rewards_use_the_stored_correctness_not_the_trajectories(records):
    rows = main_rewards(records, RewardConfig())
    flipped = [dict(r, correct=not r["correct"]) for r in rows]  # what the store says wins
    r_true, groups, verified = sub_rewards(records, rows, RewardConfig())
    r_flip, _, _ = sub_rewards(records, flipped, RewardConfig())
    valid = torch.tensor([s.format_valid for r in records for s in r.subs])
    # a valid sub trajectory gains or loses exactly b2 = 0.5 with the main agent's correctness
    assert torch.allclose((r_true - r_flip).abs()[valid], torch.full((int(valid.sum()),), 0.5))
    assert torch.all(r_true[~valid] == 0) and torch.all(r_flip[~valid] == 0)
    assert groups.tolist() == [r.question_index for r in records for _ in r.subs]


def test_batches_have_the_fixed_shapes(records, policy):
    rows = main_rewards(records, RewardConfig())
    pad = policy.tokenizer.pad_token_id
    mb, mstats = main_batch(records, rows, policy.encode, pad, B, K, 1e-6)
    assert len(mb) == B * K and mb.advantages.shape == (B * K,)
    assert torch.allclose(mb.advantages.view(B, K).sum(dim=1), torch.zeros(B), atol=1e-4)  # centred per group
    sb, sstats = sub_batch(records, rows, policy.encode, pad, B, K, D, 0, RewardConfig(), 1e-6)
    assert len(sb) == B * K * D and sb.loss_mask.shape[0] == B * K * D
    assert 0 <= sstats["align_duplicated_frac"] <= 1 and sstats["n_trajectories"] == sum(len(r.subs) for r in records)
    both = concat_batches([mb, sb], pad)
    assert len(both) == B * K + B * K * D and both.input_ids.shape[1] == max(mb.input_ids.shape[1], sb.input_ids.shape[1])


def test_policy_update_moves_the_adapter_only_with_a_signal(policy):
    ids = torch.tensor([policy.encode("<answer>Kaun</answer>")] * 2)
    batch = PolicyBatch(ids, torch.ones_like(ids), torch.ones(ids.shape), torch.tensor([1.0, -1.0]))
    lora = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    kwargs = dict(epochs=1, microbatch=1, eps_low=0.2, eps_high=0.28, kl_coef=0.0, max_grad_norm=1.0)
    # identical sequences with advantages +1 and -1 cancel exactly: no signal, no move
    stats = policy_update(policy, opt, batch, **kwargs)
    assert stats["mean_ratio"] == pytest.approx(1.0) and stats["clip_frac"] == 0.0
    assert all(torch.equal(p, lora[n]) for n, p in policy.model.named_parameters() if p.requires_grad)
    zero = PolicyBatch(ids, torch.ones_like(ids), torch.ones(ids.shape), torch.zeros(2))
    frozen = policy_update(policy, opt, zero, train=False, **kwargs)
    assert frozen["trained"] is False
    # a real signal moves the adapter
    signal = PolicyBatch(ids, torch.ones_like(ids), torch.ones(ids.shape), torch.tensor([1.0, 1.0]))
    policy_update(policy, opt, signal, **kwargs)
    moved = [n for n, p in policy.model.named_parameters() if p.requires_grad and not torch.equal(p, lora[n])]
    assert moved and all("lora_" in n for n in moved)


def test_update_on_a_single_one_token_row(policy):
    """A microbatch holding one masked slot (one pad token) must not hit bitsandbytes'
    inference-only single-vector kernel under autograd."""
    pad = policy.tokenizer.pad_token_id
    batch = PolicyBatch(torch.tensor([[pad]]), torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1),
                        torch.zeros(1))
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    stats = policy_update(policy, opt, batch, epochs=1, microbatch=1, eps_low=0.2, eps_high=0.28,
                          kl_coef=0.0, max_grad_norm=1.0)
    assert stats["n_tokens"] == 0 and stats["loss"] == 0.0


def test_one_epoch_update_equals_the_textbook_one_with_a_separate_pi_old_pass(policy):
    """With one epoch, policy_update reuses the current log-probs (detached) as pi_old. The
    adapter must land where the textbook recipe puts it: a no-grad pi_old pass first, then
    the clipped loss, backward, clipping and one optimiser step."""
    rows = [policy.encode(t) for t in ("<answer>Kaun</answer>", "<answer>Mira Sol</answer>", "<task>who is it</task>")]
    ids = torch.tensor([r[:min(map(len, rows))] for r in rows])  # (3, T): equal lengths, no padding
    mask = torch.ones(ids.shape)
    mask[2, :3] = 0.0  # a row with part of its tokens out of the loss
    batch = PolicyBatch(ids, torch.ones_like(ids), mask, torch.tensor([1.5, -0.5, 0.7]))
    params = [p for p in policy.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]

    def fresh_optimizer():
        for p, s in zip(params, start):
            p.data.copy_(s)
        return torch.optim.AdamW(policy.trainable_parameters(), lr=5e-2, weight_decay=0.0)

    stats = policy_update(policy, fresh_optimizer(), batch, epochs=1, microbatch=8, eps_low=0.2,
                          eps_high=0.28, kl_coef=0.0, max_grad_norm=0.5)
    fast = [p.detach().clone() for p in params]

    optimizer = fresh_optimizer()
    with torch.no_grad():
        old = policy.token_logprobs(batch.input_ids, batch.attention_mask)  # pi_old, its own pass
    optimizer.zero_grad()
    logp = policy.token_logprobs(batch.input_ids, batch.attention_mask)
    loss, _ = clipped_surrogate_loss(logp, old, batch.advantages, batch.loss_mask, 0.2, 0.28)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), 0.5)
    optimizer.step()

    assert stats["loss"] == pytest.approx(loss.item(), abs=1e-6) and stats["mean_ratio"] == 1.0
    assert any(not torch.equal(f, s) for f, s in zip(fast, start))  # the update did move the adapter
    for f, p in zip(fast, params):
        torch.testing.assert_close(f, p.detach())
    for p, s in zip(params, start):  # leave the shared fixture as it was
        p.data.copy_(s)

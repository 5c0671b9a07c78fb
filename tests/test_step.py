"""One M-GRPO step (step.py): each half from episodes, the update, and the whole step in one
process against the two-process pipeline."""

from dataclasses import replace

import pytest
import torch

from mgrpo_ref.batching import PolicyBatch, concat_batches
from mgrpo_ref.config import TrainConfig
from mgrpo_ref.episode import run_episodes
from mgrpo_ref.objective import clipped_surrogate_loss
from mgrpo_ref.policy import load_policy
from mgrpo_ref.rewards import episode_rewards
from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise
from mgrpo_ref.step import LAYOUTS, check_episodes, clipped_update, main_half, sampling_logprobs, sub_half
from mgrpo_ref.store import correct_from_rows, rollout_rows
from mgrpo_ref.config import VARIANTS
from mgrpo_ref.tools import ToolsByWorld
from mgrpo_ref.world import load_questions

B, K, D = 3, 4, 3
CFG = TrainConfig(questions_per_step=B, rollouts=K, d_max=D)


@pytest.fixture(scope="module")
def episodes():
    questions = load_questions("eval")[:B]
    teacher = ScriptedAgent(TeacherNoise().scaled(1.5), seed=2)
    return run_episodes(questions, ToolsByWorld(), {"main": teacher, "sub": teacher}, rollouts=K)


@pytest.fixture(scope="module")
def base(tiny_base):
    return tiny_base


@pytest.fixture(scope="module")
def policy(base):
    return load_policy(base)


def test_every_variant_has_a_layout():
    assert set(LAYOUTS) == set(VARIANTS)
    assert LAYOUTS["shared"].main_learner == LAYOUTS["shared"].sub_learner == "shared"
    assert LAYOUTS["single_agent"].sub_learner is None and LAYOUTS["frozen_sub"].frozen == ("sub",)


def test_the_halves_reward_exactly_as_episode_rewards(episodes, policy):
    """The rewards training uses are the notebooks' rewards (rewards.episode_rewards)."""
    main = main_half(episodes, CFG, policy)
    sub = sub_half(episodes, main.correct, CFG, policy, step=1)
    expected = [episode_rewards(e, CFG.reward) for e in episodes]
    assert main.rewards == [r_main for r_main, _ in expected]
    assert sub.rewards == [r for _, r_subs in expected for r in r_subs]
    assert main.correct.flatten().tolist() == [e.correct for e in episodes]


def test_the_halves_keep_each_trajectory_s_advantage_and_slot_count(episodes, policy):
    """What the rollout viewer reads: A_M per rollout (the main rows, in episode order), and per
    sub trajectory A_S and the slots it fills (the distinct batch holds the filled ones, weighted
    by that count; without alignment each counts once)."""
    from mgrpo_ref.alignment import align_sub_trajectories
    from mgrpo_ref.seeding import SALT_ALIGNMENT, step_seed

    main = main_half(episodes, CFG, policy)
    sub = sub_half(episodes, main.correct, CFG, policy, step=1)
    assert torch.equal(main.advantages, main.batch.advantages)
    assert [(i, call, copies) for i, call, _, copies in main.trajectories(episodes)] == [
        (i, None, 1) for i in range(B * K)]
    subs = sub.trajectories(episodes)
    assert [t for _, _, t, _ in subs] == [s for e in episodes for s in e.subs]
    assert [copies for *_, copies in subs] == sub.copies.tolist()
    counts = [[len(e.subs) for e in episodes[q * K:(q + 1) * K]] for q in range(B)]
    alignment = align_sub_trajectories(counts, D, step_seed(CFG.seed, 1, SALT_ALIGNMENT))
    assert torch.equal(sub.copies, alignment.copies) and len(sub.advantages) == len(sub.rewards)
    kept = sub.copies > 0
    assert torch.equal(sub.batch.advantages, sub.advantages[kept])
    assert sub.batch.token_weights.max(dim=1).values.tolist() == sub.copies[kept].float().tolist()
    unaligned = sub_half(episodes, main.correct, replace(CFG, alignment="none"), policy, step=1)
    assert unaligned.copies.tolist() == [1] * len(sub.rewards) and torch.equal(unaligned.advantages, sub.advantages)


def test_store_rows_carry_correct_m_by_question_and_rollout(episodes, policy):
    main = main_half(episodes, CFG, policy)
    rows = rollout_rows(episodes, main.rewards, main.correct, K)
    assert [(r["question_index"], r["rollout"]) for r in rows] == [(b, k) for b in range(B) for k in range(K)]
    for e, row in zip(episodes, rows):
        expected = 0.0 if not e.main.format_valid else (1.0 if row["correct"] else 0.1)
        assert row["main_reward"] == pytest.approx(expected) and row["n_sub"] == len(e.subs)
    assert torch.equal(correct_from_rows(rows, episodes, K), main.correct)
    with pytest.raises(ValueError, match="11 rollout rows for the step's 12 episodes"):
        correct_from_rows(rows[1:], episodes, K)
    swapped = [dict(rows[0], qid=rows[-1]["qid"])] + rows[1:]
    with pytest.raises(ValueError, match="question 0, rollout 0 does not describe"):
        correct_from_rows(swapped, episodes, K)
    beyond = rows[:-1] + [dict(rows[-1], rollout=K)]
    with pytest.raises(ValueError, match="does not describe"):
        correct_from_rows(beyond, episodes, K)


def test_the_store_carries_correct_m_as_a_variable_does(episodes, policy, tmp_path):
    """The two channels of ``learner_step``: the store of the pipeline gives the sub-agent's half
    the correct(M) that the one-process variable gives, and a sub half cannot come first."""
    from mgrpo_ref.step import DirectChannel
    from mgrpo_ref.store import Store, StoreChannel

    main = main_half(episodes, CFG, policy)
    direct, stored = DirectChannel(), StoreChannel(Store(tmp_path / "store.sqlite", create=True), K)
    with pytest.raises(RuntimeError, match="main agent's learner takes its share first"):
        direct.receive(1, episodes)
    for channel in (direct, stored):
        channel.send(1, episodes, main)
    assert torch.equal(stored.receive(1, episodes), direct.receive(1, episodes))
    assert torch.equal(direct.receive(1, episodes), main.correct) and stored.seconds > 0


def test_the_sub_half_uses_the_given_correctness_not_the_trajectories(episodes, policy):
    correct = main_half(episodes, CFG, policy).correct
    blind = [replace(e, main=None) for e in episodes]  # what the sub-agent's worker gets
    r_true = torch.tensor(sub_half(blind, correct, CFG, policy, 1).rewards)
    r_flip = torch.tensor(sub_half(blind, ~correct, CFG, policy, 1).rewards)
    valid = torch.tensor([s.format_valid for e in episodes for s in e.subs])
    # a valid sub trajectory gains or loses exactly b2 = 0.5 with the main agent's correctness
    assert torch.allclose((r_true - r_flip).abs()[valid], torch.full((int(valid.sum()),), 0.5))
    assert torch.all(r_true[~valid] == 0) and torch.all(r_flip[~valid] == 0)


def test_batches_have_the_fixed_shapes(episodes, policy):
    main = main_half(episodes, CFG, policy)
    mb = main.batch
    assert len(mb) == B * K and mb.advantages.shape == (B * K,)
    assert torch.allclose(mb.advantages.view(B, K).sum(dim=1), torch.zeros(B), atol=1e-4)  # centred per group
    sub = sub_half(episodes, main.correct, replace(CFG, sub_batch="slots"), policy, step=1)
    sb = sub.batch
    assert len(sb) == B * K * D and sb.token_weights.shape[0] == B * K * D  # the fixed shape
    distinct = sub_half(episodes, main.correct, replace(CFG, sub_batch="distinct"), policy, step=1).batch
    assert len(distinct) <= min(sub.stats["sub/n_trajectories"], B * K * D)
    assert distinct.token_weights.sum() == sb.token_weights.sum()  # the same tokens, counted as often
    assert 0 <= sub.stats["sub/align_duplicated_frac"] <= 1
    assert sub.stats["sub/n_trajectories"] == sum(len(e.subs) for e in episodes)
    both = concat_batches([mb, sb], policy.pad_id)
    assert len(both) == B * K + B * K * D and both.input_ids.shape[1] == max(mb.input_ids.shape[1], sb.input_ids.shape[1])


def test_the_halves_check_their_inputs(episodes, policy):
    with pytest.raises(ValueError, match="B\\*K = 3\\*4 = 12 episodes, got 11"):
        main_half(episodes[:-1], CFG, policy)
    shuffled = [episodes[1], episodes[0]] + episodes[2:]
    with pytest.raises(ValueError, match="episode 0 must be rollout 0 of question 0"):
        check_episodes(shuffled, CFG, with_main=True)
    with pytest.raises(ValueError, match="no main trajectory"):
        main_half([replace(e, main=None) for e in episodes], CFG, policy)
    with pytest.raises(ValueError, match="main_correct must be"):
        sub_half(episodes, torch.zeros(B * K, dtype=torch.bool), CFG, policy, 1)


def test_a_policy_batch_checks_its_shapes():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="token_weights"):
        PolicyBatch(ids, torch.ones_like(ids), torch.ones(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="advantages"):
        PolicyBatch(ids, torch.ones_like(ids), torch.ones(2, 3), torch.zeros(3))


def test_clipped_update_moves_the_adapter_only_with_a_signal(policy):
    ids = torch.tensor([policy.encode("<answer>Kaun</answer>")] * 2)
    batch = PolicyBatch(ids, torch.ones_like(ids), torch.ones(ids.shape), torch.tensor([1.0, -1.0]))
    lora = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    cfg = TrainConfig(epochs=1, microbatch=1, clip_eps_low=0.2, clip_eps_high=0.28, kl_coef=0.0, max_grad_norm=1.0)
    # identical sequences with advantages +1 and -1 cancel exactly: no signal, no move
    stats = clipped_update(policy, opt, batch, cfg)
    assert stats["mean_ratio"] == pytest.approx(1.0) and stats["clip_frac"] == 0.0
    assert all(torch.equal(p, lora[n]) for n, p in policy.model.named_parameters() if p.requires_grad)
    zero = PolicyBatch(ids, torch.ones_like(ids), torch.ones(ids.shape), torch.zeros(2))
    frozen = clipped_update(policy, opt, zero, cfg, train=False)
    assert frozen["trained"] is False
    # a real signal moves the adapter
    signal = PolicyBatch(ids, torch.ones_like(ids), torch.ones(ids.shape), torch.tensor([1.0, 1.0]))
    clipped_update(policy, opt, signal, cfg)
    moved = [n for n, p in policy.model.named_parameters() if p.requires_grad and not torch.equal(p, lora[n])]
    assert moved and all("lora_" in n for n in moved)


def test_update_on_a_single_one_token_row(policy):
    """A microbatch holding one masked slot (one pad token) must not hit bitsandbytes'
    inference-only single-vector kernel under autograd."""
    pad = policy.tokenizer.pad_token_id
    batch = PolicyBatch(torch.tensor([[pad]]), torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1),
                        torch.zeros(1))
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    stats = clipped_update(policy, opt, batch, replace(CFG, microbatch=1, max_grad_norm=1.0))
    assert stats["n_tokens"] == 0 and stats["loss"] == 0.0


def test_one_epoch_update_equals_the_textbook_one_with_a_separate_pi_old_pass(policy):
    """With one epoch, clipped_update reuses the current log-probs (detached) as pi_old. The
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

    stats = clipped_update(policy, fresh_optimizer(), batch, replace(CFG, microbatch=8, max_grad_norm=0.5))
    fast = [p.detach().clone() for p in params]

    optimizer = fresh_optimizer()
    with torch.no_grad():
        old = policy.token_logprobs(batch.input_ids, batch.attention_mask)  # pi_old, its own pass
    optimizer.zero_grad()
    logp = policy.token_logprobs(batch.input_ids, batch.attention_mask)
    loss, _ = clipped_surrogate_loss(logp, old, batch.advantages, batch.token_weights, 0.2, 0.28)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), 0.5)
    optimizer.step()

    assert stats["loss"] == pytest.approx(loss.item(), abs=1e-6) and stats["mean_ratio"] == 1.0
    assert any(not torch.equal(f, s) for f, s in zip(fast, start))  # the update did move the adapter
    for f, p in zip(fast, params):
        torch.testing.assert_close(f, p.detach())
    for p, s in zip(params, start):  # leave the shared fixture as it was
        p.data.copy_(s)


# ---------------------------------------------------------------------------
# The whole step in one process gives the two-process pipeline's numbers


@pytest.mark.parametrize("variant", ["mgrpo", "shared"])
def test_one_step_in_one_process_matches_the_two_process_run(tmp_path, variant):
    from safetensors.torch import load_file

    from mgrpo_ref.rundir import read_jsonl
    from mgrpo_ref.seeding import rollout_salt, step_seed
    from mgrpo_ref.step import make_learner, one_step
    from mgrpo_ref.train import Trainer, sample_questions

    # The committed base, not the tiny test one: its rollouts differ in reward, so the step has
    # a gradient and the adapters it leaves are worth comparing.
    cfg = TrainConfig(variant=variant, base="data/base", steps=1, questions_per_step=2, rollouts=4, d_max=2,
                      eval_questions=2, eval_sampled_temperature=0.0, max_new_tokens=24, microbatch=8)
    with Trainer(cfg, tmp_path / "run", progress=False) as trainer:
        trainer.run()
    piped = read_jsonl(tmp_path / "run" / "metrics.jsonl")[1]

    layout = LAYOUTS[variant]
    learners = {name: make_learner(cfg.base, cfg) for name in dict.fromkeys(layout.learners.values())}
    for i, learner in enumerate(learners.values()):  # the trainer's per-step seeds
        learner.policy.generator.manual_seed(step_seed(cfg.seed, 1, rollout_salt(i)))
    questions = sample_questions(load_questions("train"), cfg.questions_per_step, cfg.seed, 1)
    agents = {role: learners[name].policy for role, name in layout.learners.items()}
    episodes = run_episodes(questions, ToolsByWorld(), agents, layout.mode, cfg.limits, rollouts=cfg.rollouts)
    stats = one_step(episodes, learners, cfg, step=1)

    assert any(v > 0 for k, v in stats.items() if k.endswith("/grad_norm"))  # the step moved an adapter
    assert stats["main/reward_mean"] == piped["main/reward_mean"]
    assert stats["sub/reward_mean"] == piped["sub/reward_mean"]
    assert stats["sub/d_histogram"] == piped["sub/d_histogram"]
    for key, value in stats.items():
        if key.endswith(("update_s", "store_s")):
            continue
        assert value == pytest.approx(piped[key], rel=1e-4, abs=1e-6), key
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00001"
    for name, learner in learners.items():
        saved = load_file(checkpoint / name / "adapter_model.safetensors")
        here = {n: p for n, p in learner.policy.model.named_parameters() if p.requires_grad}
        assert len(saved) == len(here)
        for n, p in here.items():
            saved_name = n.replace(".default", "")
            # Adam divides each gradient element by its own size (sqrt(v) + eps): where an element
            # is near 0, the rounding of two processes' sums against one process's moves its
            # update by up to a few 1e-6 (seen on an Intel Xeon; within 1e-6 on an AMD EPYC). At lr 1e-3,
            # 1e-5 is a hundredth of a step.
            torch.testing.assert_close(p.detach(), saved[saved_name], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Duplicating a trajectory is weighting it: the slot batch against the distinct batch


def test_distinct_rows_weighted_by_copies_give_the_slot_batch_loss_and_gradient(episodes, policy):
    from mgrpo_ref.episode import Episode

    # Reshape the teacher's step so that every case of alignment occurs (D = 2):
    # question 0: d = 0 (borrows), 1 (duplicates), 3 and 5 (drop); question 1: no sub
    # trajectory at all (masked slots); question 2: as the teacher played it.
    pool = [s for e in episodes for s in e.subs]
    shapes = {0: [0, 1, 3, 5], 1: [0, 0, 0, 0]}
    reshaped, taken = [], 0
    for i, e in enumerate(episodes):
        b, k = divmod(i, K)
        if b in shapes:
            subs = pool[taken:taken + shapes[b][k]]
            taken += shapes[b][k]
            e = Episode(e.question, e.mode, e.main, subs, e.rollout)
        reshaped.append(e)
    cfg = replace(CFG, d_max=2, sub_batch="slots")
    correct = main_half(reshaped, cfg, policy).correct
    slots = sub_half(reshaped, correct, cfg, policy, step=3)
    distinct = sub_half(reshaped, correct, replace(cfg, sub_batch="distinct"), policy, step=3)
    for key in ("sub/align_duplicated_frac", "sub/align_dropped_frac", "sub/align_masked_frac"):
        assert slots.stats[key] > 0, key  # every case is there
    assert len(slots.batch) == B * K * 2 and len(distinct.batch) < len(slots.batch)

    params = [p for p in policy.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]

    def loss_and_gradient(half):
        optimizer = torch.optim.SGD(params, lr=0.0)  # lr 0: the adapter stays where it is
        stats = clipped_update(policy, optimizer, half.batch, replace(CFG, microbatch=5, max_grad_norm=1e9))  # no clipping
        return stats, [p.grad.detach().clone() for p in params]

    slot_stats, slot_grads = loss_and_gradient(slots)
    distinct_stats, distinct_grads = loss_and_gradient(distinct)
    assert slot_stats["n_tokens"] == distinct_stats["n_tokens"]  # the same token-level denominator
    assert distinct_stats["loss"] == pytest.approx(slot_stats["loss"], rel=1e-5, abs=1e-7)
    assert any(g.abs().sum() > 0 for g in slot_grads)
    for g_slots, g_distinct in zip(slot_grads, distinct_grads):
        torch.testing.assert_close(g_distinct, g_slots, rtol=1e-4, atol=1e-7)
    for p, s in zip(params, start):
        assert torch.equal(p.detach(), s)


def test_microbatches_longest_first_give_the_same_loss_and_gradient(episodes, policy, monkeypatch):
    """Taking rows longest first (less padding per microbatch) reorders a sum: the loss and
    the adapter gradient equal those of one microbatch holding the batch in its own order."""
    import functools

    from mgrpo_ref import step as step_module

    half = sub_half(episodes, main_half(episodes, CFG, policy).correct, CFG, policy, step=1)
    batch = half.batch
    lengths = batch.attention_mask.sum(dim=1)
    assert len(set(lengths.tolist())) > 2
    taken = [att.sum(dim=1) for _, att, _, _ in step_module._microbatches(batch, 5)]
    assert torch.equal(torch.cat(taken), lengths.sort(descending=True).values)  # every row once, longest first
    widths = [ids.shape[1] for ids, _, _, _ in step_module._microbatches(batch, 5)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < batch.input_ids.shape[1]

    params = [p for p in policy.model.parameters() if p.requires_grad]

    def loss_and_gradient(microbatch):
        optimizer = torch.optim.SGD(params, lr=0.0)
        stats = clipped_update(policy, optimizer, batch, replace(CFG, microbatch=microbatch, max_grad_norm=1e9))
        return stats, [p.grad.detach().clone() for p in params]

    sorted_stats, sorted_grads = loss_and_gradient(5)
    monkeypatch.setattr(step_module, "_microbatches", functools.partial(step_module._microbatches,
                                                                         longest_first=False))
    whole_stats, whole_grads = loss_and_gradient(len(batch))
    assert sorted_stats["n_tokens"] == whole_stats["n_tokens"]
    assert sorted_stats["loss"] == pytest.approx(whole_stats["loss"], rel=1e-5, abs=1e-7)
    assert any(g.abs().sum() > 0 for g in sorted_grads)
    for a, b in zip(sorted_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_microbatches_within_a_token_budget_hold_every_row_once_and_stay_within_it(episodes, policy):
    from mgrpo_ref import step as step_module

    batch = sub_half(episodes, main_half(episodes, CFG, policy).correct, CFG, policy, step=1).batch
    lengths = batch.attention_mask.sum(dim=1)
    longest = int(lengths.max())
    for budget in (longest, 2 * longest, 3 * longest + 1, 10 ** 6):
        parts = [(ids.shape, att.sum(dim=1)) for ids, att, _, _ in step_module._microbatches(batch, 5, budget)]
        assert torch.equal(torch.cat([taken for _, taken in parts]), lengths.sort(descending=True).values)
        assert all(rows <= 5 and (rows == 1 or rows * width <= budget) for (rows, width), _ in parts)
    alone = list(step_module._microbatches(batch, 5, 1))  # a budget below every row: one row each
    assert len(alone) == len(batch)
    unbounded = [ids.shape for ids, *_ in step_module._microbatches(batch, 5, 0)]
    assert unbounded == [ids.shape for ids, *_ in step_module._microbatches(batch, 5, 10 ** 9)]


@pytest.mark.parametrize("role", ["main", "sub"])
@pytest.mark.parametrize("change", [dict(microbatch_tokens=1), dict(microbatch_tokens=120),
                                    dict(activation_checkpointing=True), dict(share_prefix=8),
                                    dict(share_prefix=8, microbatch_tokens=300),
                                    dict(share_prefix=8, activation_checkpointing=True)])
def test_the_update_s_memory_savings_give_the_same_loss_and_gradient(episodes, policy, change, role, monkeypatch):
    """Token-budget microbatches regroup a sum; activation checkpointing recomputes what it
    did not keep; a shared prefix is encoded once for every row that begins with it. None
    moves the loss, the statistics or the adapter's gradient."""
    from mgrpo_ref import policy as policy_module

    shared_passes = []
    encode_once = policy_module.hidden_with_shared_prefix
    monkeypatch.setattr(policy_module, "hidden_with_shared_prefix",
                        lambda *a: shared_passes.append(a[-1]) or encode_once(*a))
    main = main_half(episodes, CFG, policy)
    batch = main.batch if role == "main" else sub_half(episodes, main.correct, CFG, policy, step=1).batch
    params = [p for p in policy.model.parameters() if p.requires_grad]

    def loss_and_gradient(cfg):
        optimizer = torch.optim.SGD(params, lr=0.0)
        stats = clipped_update(policy, optimizer, batch, replace(cfg, max_grad_norm=1e9))
        return stats, [p.grad.detach().clone() for p in params]

    before, before_grads = loss_and_gradient(replace(CFG, microbatch=5))
    after, after_grads = loss_and_gradient(replace(CFG, microbatch=5, **change))
    assert before["n_tokens"] == after["n_tokens"] and before["n_rows"] == after["n_rows"]
    for key in ("loss", "clip_frac", "mean_ratio"):
        assert after[key] == pytest.approx(before[key], rel=1e-5, abs=1e-7), key
    assert any(g.abs().sum() > 0 for g in before_grads)
    for a, b in zip(after_grads, before_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert not policy.model.get_base_model().is_activation_checkpointing  # generation keeps its cache
    # the prefix is shared only where asked, and never under checkpointing (no cache is kept there)
    assert bool(shared_passes) == ("share_prefix" in change and "activation_checkpointing" not in change)
    assert all(p >= 8 for p in shared_passes)


def _record_passes(policy, monkeypatch) -> list[tuple[int, bool]]:
    """Each scoring pass of ``policy`` as it runs: (rows, whether it keeps a graph for a backward pass)."""
    passes, score = [], policy.token_logprobs
    monkeypatch.setattr(policy, "token_logprobs",
                        lambda ids, *a, **k: passes.append((len(ids), torch.is_grad_enabled())) or score(ids, *a, **k))
    return passes


@pytest.mark.parametrize("role", ["main", "sub"])
def test_rows_with_no_advantage_skip_the_backward_pass_and_change_nothing(episodes, policy, role, monkeypatch):
    """skip_zero_advantage: a row whose advantage is 0 has a loss of 0 for any weights (no KL
    term, a ratio of 1), so it runs forward only. The loss, the statistics (its sampled_nll
    included) and the gradient stay as they were; only the other rows go through a backward pass."""
    main = main_half(episodes, CFG, policy)
    batch = main.batch if role == "main" else sub_half(episodes, main.correct, CFG, policy, step=1).batch
    advantages = batch.advantages.clone()
    advantages[::3] = 0.0  # as if a third of the rows' groups had one reward each
    batch = replace(batch, advantages=advantages)
    still = int((advantages == 0).sum())
    assert 0 < still < len(batch) and (advantages != 0).any()
    params = [p for p in policy.model.parameters() if p.requires_grad]
    passes = _record_passes(policy, monkeypatch)

    def run(cfg):
        passes.clear()
        stats = clipped_update(policy, torch.optim.SGD(params, lr=0.0), batch, replace(cfg, max_grad_norm=1e9))
        return stats, [p.grad.detach().clone() for p in params], list(passes)

    cfg = replace(CFG, microbatch=5, share_prefix=8)
    before, before_grads, every = run(cfg)
    after, after_grads, skipped = run(replace(cfg, skip_zero_advantage=True))
    assert all(grad for _, grad in every) and sum(rows for rows, _ in every) == len(batch)
    assert sum(rows for rows, grad in skipped if grad) == len(batch) - still  # backward: the moving rows only
    assert sum(rows for rows, grad in skipped if not grad) == still  # the others: forward only, once each
    for key in ("loss", "clip_frac", "mean_ratio", "approx_kl", "sampled_nll", "n_tokens", "n_rows"):
        assert after[key] == pytest.approx(before[key], rel=1e-5, abs=1e-7), key
    assert any(g.abs().sum() > 0 for g in before_grads)
    for a, b in zip(after_grads, before_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # Where a row's loss may move (a KL term; a stale pi_old, whose ratio is not 1), every row goes backward.
    stale = sampling_logprobs(policy, batch, cfg)
    for other, old in ((dict(kl_coef=0.1), None), ({}, stale)):
        passes.clear()
        clipped_update(policy, torch.optim.SGD(params, lr=0.0), batch, replace(cfg, skip_zero_advantage=True, **other),
                       old_logprobs=old)
        assert sum(rows for rows, grad in passes if grad) == len(batch), other


def test_a_batch_with_no_advantage_at_all_still_takes_the_optimiser_s_step(episodes, policy, monkeypatch):
    """Every row still: no backward pass runs, and the gradient is 0 as the backward pass would
    have made it, so AdamW still takes its step on the momentum of the steps before."""
    import copy

    batch = main_half(episodes, CFG, policy).batch
    params = [p for p in policy.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    signal = replace(batch, advantages=torch.linspace(-1, 1, len(batch)))
    none = replace(batch, advantages=torch.zeros(len(batch)))
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    passes = _record_passes(policy, monkeypatch)
    try:
        clipped_update(policy, optimizer, signal, CFG)  # momentum to carry
        state = copy.deepcopy(optimizer.state_dict()), [p.detach().clone() for p in params]
        landed = {}
        for skip in (False, True):
            optimizer.load_state_dict(copy.deepcopy(state[0]))
            with torch.no_grad():
                for p, value in zip(params, state[1]):
                    p.copy_(value)
            passes.clear()
            stats = clipped_update(policy, optimizer, none, replace(CFG, skip_zero_advantage=skip))
            assert stats["grad_norm"] == 0.0 and any(grad for _, grad in passes) == (not skip)  # skipped: no backward
            landed[skip] = [p.detach().clone() for p in params]
        assert any(not torch.equal(a, b) for a, b in zip(landed[False], state[1]))  # the momentum moved it
        for a, b in zip(landed[True], landed[False]):
            assert torch.equal(a, b)
    finally:  # the module's policy is shared: leave its adapter as it was
        with torch.no_grad():
            for p, value in zip(params, start):
                p.copy_(value)


def test_rows_that_begin_alike_share_a_microbatch_and_every_row_is_taken_once(episodes, policy):
    """With share_prefix, a question's rollouts (which begin with the same instruction and
    question) are neighbours; cutting where sharing stops paying keeps every row once, and a
    token budget counts the shared prefix once."""
    from mgrpo_ref import step as step_module

    batch = main_half(episodes, CFG, policy).batch  # B*K rows, the K of a question one after the other
    lengths = batch.attention_mask.sum(dim=1)
    groups = step_module._prefix_groups(batch.input_ids, lengths, 16, 0, 8)
    assert sorted(torch.cat(groups).tolist()) == list(range(len(batch)))
    for rows in groups:  # each group is one question's rollouts, or part of them
        assert len({int(r) // K for r in rows}) == 1
    shared = [step_module._common_prefix(batch.input_ids[0].tolist(), batch.input_ids[i].tolist()) for i in range(K)]
    assert min(shared) >= 8  # the premise: a question's rollouts share their first tokens
    # at most this many tokens encoded per microbatch, a shared prefix counted once
    for budget in (int(lengths.max()), 2 * int(lengths.max())):
        for rows in step_module._prefix_groups(batch.input_ids, lengths, 16, budget, 8):
            if len(rows) > 1:
                rows_ = [batch.input_ids[r, :int(lengths[r])].tolist() for r in rows.tolist()]
                p = min(step_module._common_prefix(rows_[0], x) for x in rows_)
                assert step_module._encoded_tokens(p, len(rows), max(map(len, rows_)), 8) <= budget
    assert step_module._encoded_tokens(10, 4, 30, 8) == 10 + 4 * 20
    assert step_module._encoded_tokens(10, 4, 30, 11) == step_module._encoded_tokens(10, 1, 30, 8) * 4 == 120


def test_the_unaligned_ablation_trains_every_sub_trajectory_once_at_weight_one(episodes, policy):
    """alignment="none": N rows, each trajectory's own loss mask, its own advantage; the
    alignment statistics are still those of D slots (what alignment would have done)."""
    from mgrpo_ref.batching import encode_trajectory

    cfg = replace(CFG, alignment="none")
    correct = main_half(episodes, cfg, policy).correct
    unaligned = sub_half(episodes, correct, cfg, policy, step=1)
    aligned = sub_half(episodes, correct, CFG, policy, step=1)
    subs = [s for e in episodes for s in e.subs]
    assert len(unaligned.batch) == len(subs) > 0
    masks = [encode_trajectory(s, policy.encode)[1] for s in subs]
    for row, mask in enumerate(masks):
        assert unaligned.batch.token_weights[row, :len(mask)].tolist() == [float(m) for m in mask]
    by_calls = "sub/weight_by_calls"
    assert ({k: v for k, v in unaligned.stats.items() if k != by_calls}
            == {k: v for k, v in aligned.stats.items() if k != by_calls})  # same rewards, advantages, alignment statistics
    assert unaligned.batch.token_weights.sum() != aligned.batch.token_weights.sum()  # but other weights
    # ... and so another share of the loss weight for each number of calls d, read off each
    # batch's own token weights: unaligned, one row per trajectory; aligned (the distinct
    # batch), one row per trajectory that fills a slot, in order
    calls = [len(e.subs) for e in episodes for _ in e.subs]
    rows = unaligned.batch.token_weights.sum(dim=1).tolist()  # (N,)
    kept = aligned.copies.nonzero().flatten().tolist()
    aligned_rows = [0.0] * len(subs)
    for i, weight in zip(kept, aligned.batch.token_weights.sum(dim=1).tolist()):
        aligned_rows[i] = weight
    for stats, weights in ((unaligned.stats, rows), (aligned.stats, aligned_rows)):
        shares = {str(d): sum(w for c, w in zip(calls, weights) if c == d) / sum(weights) for d in sorted(set(calls))}
        assert stats[by_calls] == pytest.approx(shares)
    assert unaligned.stats[by_calls] != pytest.approx(aligned.stats[by_calls])


def test_the_unaligned_ablation_with_no_sub_trajectory_is_one_row_that_weighs_nothing(episodes, policy):
    from mgrpo_ref.episode import Episode

    bare = [Episode(e.question, e.mode, e.main, [], e.rollout) for e in episodes]
    cfg = replace(CFG, alignment="none")
    half = sub_half(bare, torch.zeros(B, K, dtype=torch.bool), cfg, policy, step=1)
    assert len(half.batch) == 1 and half.batch.token_weights.sum() == 0


# ---------------------------------------------------------------------------
# The one-step-stale sub-agent (sub_staleness=1): trained on the step before, with its pi_old


def test_a_stale_sub_agent_trains_on_the_step_before_with_the_log_probs_that_sampled_it(episodes, policy):
    from mgrpo_ref.step import Learner, SubHalf, learner_update, sampling_logprobs

    cfg = replace(CFG, sub_staleness=1, microbatch=4, lr=5e-2)
    main = main_half(episodes, cfg, policy)
    halves = [sub_half(episodes, main.correct, cfg, policy, step) for step in (1, 2, 3)]
    halves[1] = replace(halves[1], batch=replace(halves[1].batch, advantages=-halves[1].batch.advantages))  # another signal
    assert all(isinstance(h, SubHalf) for h in halves)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    now = lambda: [p.detach().clone() for p in params]  # noqa: E731

    def reset():
        for p, s in zip(params, start):
            p.data.copy_(s)
        return torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr, weight_decay=0.0)

    learner = Learner(policy, reset())
    first = learner_update("sub", learner, [halves[0]], cfg, 1)
    assert first["sub/trained"] is False and all(torch.equal(a, b) for a, b in zip(now(), start))
    assert learner.held_back.half is halves[0]
    old_of_second = sampling_logprobs(policy, halves[1].batch, cfg)  # the weights that sample step 2
    second = learner_update("sub", learner, [halves[1]], cfg, 2)
    after_second = now()
    third = learner_update("sub", learner, [halves[2]], cfg, 3)
    after_third = now()
    assert second["sub/trained"] is True and second["sub/mean_ratio"] == pytest.approx(1.0)
    assert third["sub/mean_ratio"] != pytest.approx(1.0, abs=1e-6)  # the adapter moved after step 2 was sampled

    # by hand: step 2 trains on step 1's half; step 3 on step 2's, with the log-probs taken before step 2's update
    optimizer = reset()  # at cfg.lr, the constant schedule's rate at every step
    clipped_update(policy, optimizer, halves[0].batch, cfg)
    for a, b in zip(now(), after_second):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, s) for a, s in zip(after_second, start))
    by_hand = clipped_update(policy, optimizer, halves[1].batch, cfg, old_logprobs=old_of_second)
    for a, b in zip(now(), after_third):
        torch.testing.assert_close(a, b)
    assert by_hand["loss"] == pytest.approx(third["sub/loss"], abs=1e-6)
    reset()  # leave the shared fixture as it was


def test_only_mgrpo_may_have_a_stale_sub_agent():
    assert TrainConfig(sub_staleness=1).sub_staleness == 1
    for variant in ("frozen_sub", "shared", "single_agent"):
        with pytest.raises(ValueError, match="sub_staleness.*variant=mgrpo only"):
            TrainConfig(variant=variant, sub_staleness=1)
    with pytest.raises(ValueError, match="sub_staleness"):
        TrainConfig(sub_staleness=2)

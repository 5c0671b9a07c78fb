"""Tests for mgrpo_ref.batching: the loss mask on real episodes, padding, alignment rows.

A char-level toy encoder (one id per character) makes every check readable: decoding
is chr(), and a token's text is one character of the trajectory.
"""

import pytest
import torch

from mgrpo_ref.alignment import align_sub_trajectories
from mgrpo_ref.batching import aligned_sub_batch, collate, encode_trajectory
from mgrpo_ref.episode import run_episodes
from mgrpo_ref.evaluate import make_agent
from mgrpo_ref.tools import ToolsByWorld
from mgrpo_ref.world import load_questions

PAD = 0  # chr(0) never occurs in the world's text


def encode(text):
    return [ord(c) for c in text]


def decode(ids):
    return "".join(chr(i) for i in ids)


@pytest.fixture(scope="module")
def episodes():
    """Teacher episodes: 6 questions x 4 rollouts, with format errors and varied d."""
    agents = {"main": make_agent("teacher", 2.0, 0), "sub": make_agent("teacher", 2.0, 1)}
    return run_episodes(load_questions("eval")[:6], ToolsByWorld(), agents, rollouts=4)


def all_trajectories(episodes):
    return [e.main for e in episodes] + [s for e in episodes for s in e.subs]


def masked_text(ids, mask, keep):
    return decode(i for i, m in zip(ids, mask) if m == keep)


# ---------------------------------------------------------------------------
# encode_trajectory


def test_mask_covers_exactly_the_agents_own_text(episodes):
    for traj in all_trajectories(episodes):
        ids, mask = encode_trajectory(traj, encode)
        assert len(ids) == len(mask)
        assert decode(ids) == traj.context  # nothing lost or reordered
        agent_text = "".join(s.text for s in traj.segments if s.source == "agent")
        other_text = "".join(s.text for s in traj.segments if s.source != "agent")
        assert masked_text(ids, mask, 1) == agent_text
        assert masked_text(ids, mask, 0) == other_text


def test_mask_never_covers_environment_text(episodes):
    trajectories = all_trajectories(episodes)
    assert any("<obs>" in t.context for t in trajectories)
    assert any("<result>" in t.context for t in trajectories)
    for traj in trajectories:
        ids, mask = encode_trajectory(traj, encode)
        trained = masked_text(ids, mask, 1)
        for tag in ("<obs>", "</obs>", "<result>", "</result>", "<question>", "<task>"):
            assert tag not in trained
        # the first token is prompt text, so a causal shift loses no trained token
        assert mask[0] == 0


def test_segments_are_encoded_separately():
    # An encoder with two-character tokens: encoding the whole context would merge
    # characters across a segment boundary, encoding each segment never does.
    from mgrpo_ref.episode import Segment, Trajectory

    def pairs(text):
        return [hash(text[i:i + 2]) % 1000 + 1 for i in range(0, len(text), 2)]

    segments = [Segment("prompt", "abc"), Segment("agent", "def"), Segment("env", "g")]
    traj = Trajectory("sub", segments)
    ids, mask = encode_trajectory(traj, pairs)
    assert ids == pairs("abc") + pairs("def") + pairs("g")  # 2 + 2 + 1 tokens, not ceil(7 / 2) = 4
    assert mask == [0, 0, 1, 1, 0]


def test_a_turn_with_sampled_ids_is_encoded_by_them_not_by_its_text():
    """A policy may sample "o" + "pe" where encoding the text gives "ope": training must score
    the two tokens it drew, so a segment's ids, when it has them, are taken as they are."""
    from mgrpo_ref.episode import Segment, Trajectory

    traj = Trajectory("sub", [Segment("prompt", "ab"), Segment("agent", "cd", ids=[7, 8, 9]), Segment("env", "e")])
    ids, mask = encode_trajectory(traj, lambda text: [ord(c) for c in text])
    assert ids == [ord("a"), ord("b"), 7, 8, 9, ord("e")]
    assert mask == [0, 0, 1, 1, 1, 0]


# ---------------------------------------------------------------------------
# collate


def test_collate_pads_right_hand_case():
    batch = collate([([5, 6, 7], [0, 1, 1]), ([8], [0])], pad_id=PAD)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, PAD, PAD]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(batch["loss_mask"], torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["loss_mask"].dtype == torch.float


def test_collate_real_episodes(episodes):
    trajectories = all_trajectories(episodes)
    sequences = [encode_trajectory(t, encode) for t in trajectories]
    batch = collate(sequences, pad_id=PAD)
    lengths = [len(ids) for ids, _ in sequences]
    n, t = batch["input_ids"].shape
    assert (n, t) == (len(sequences), max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, (ids, mask) in enumerate(sequences):
        length = len(ids)
        assert batch["input_ids"][row, :length].tolist() == ids
        assert (batch["input_ids"][row, length:] == PAD).all()
        assert batch["loss_mask"][row].tolist() == mask + [0.0] * (t - length)
    # loss only where attention is on
    assert (batch["loss_mask"] <= batch["attention_mask"]).all()


def test_collate_overlong_raises_with_index_and_length():
    sequences = [([1, 2], [0, 1]), ([1, 2, 3, 4], [0, 1, 1, 1])]
    with pytest.raises(ValueError, match=r"sequence 1 has 4 tokens, more than max_len = 3"):
        collate(sequences, pad_id=PAD, max_len=3)
    # exactly max_len is fine
    assert collate(sequences, pad_id=PAD, max_len=4)["input_ids"].shape == (2, 4)


def test_collate_empty_batch_and_bad_sequences():
    batch = collate([], pad_id=PAD)
    assert all(v.shape == (0, 0) for v in batch.values())
    with pytest.raises(ValueError, match="sequence 0 is empty"):
        collate([([], [])], pad_id=PAD)
    with pytest.raises(ValueError, match="2 ids but 1 loss-mask"):
        collate([([1, 2], [0])], pad_id=PAD)
    with pytest.raises(ValueError, match="0 or 1"):
        collate([([1, 2], [0, 2])], pad_id=PAD)


# ---------------------------------------------------------------------------
# aligned_sub_batch


def sub_counts(episodes, n_rollouts):
    """(B, K) nested list of d per rollout; episodes come in (question, rollout) order."""
    d = [len(e.subs) for e in episodes]
    return [d[i:i + n_rollouts] for i in range(0, len(d), n_rollouts)]


def test_aligned_batch_from_real_episodes(episodes):
    counts = sub_counts(episodes, 4)
    sequences = [encode_trajectory(s, encode) for e in episodes for s in e.subs]
    d_max = 2
    alignment = align_sub_trajectories(counts, d_max=d_max, seed=0)
    assert alignment.n_dropped > 0 and alignment.n_duplicated > 0  # both cases occur
    batch = aligned_sub_batch(sequences, alignment, pad_id=PAD)

    rows = len(counts) * 4 * d_max  # B * K * D
    assert batch["input_ids"].shape[0] == rows
    assert batch["slot_weight"].shape == batch["source"].shape == (rows,)
    assert torch.equal(batch["source"], alignment.source.reshape(-1))
    reference = collate(sequences, pad_id=PAD)  # every distinct trajectory once
    t = batch["input_ids"].shape[1]
    for r, i in enumerate(batch["source"].tolist()):
        length = len(sequences[i][0])
        for key in ("input_ids", "attention_mask", "loss_mask"):
            assert torch.equal(batch[key][r, :length], reference[key][i, :length])
            assert not batch[key][r, length:].any()  # padding: PAD = 0, no attention, no loss
    # T is the longest trajectory that reached a slot, not the longest dropped one
    assert t == max(len(sequences[i][0]) for i in set(batch["source"].tolist()))


def test_aligned_batch_masked_and_duplicated_slots():
    # Question 0 has no sub trajectory: its 2 x 3 slots are masked.
    # Question 1: rollout 0 made "abcd" (0), rollout 1 made "xy" (1) and "z" (2).
    counts = [[0, 0], [1, 2]]
    texts = ["abcd", "xy", "z"]
    sequences = [(encode(s), [0] + [1] * (len(s) - 1)) for s in texts]
    alignment = align_sub_trajectories(counts, d_max=3, seed=0)
    batch = aligned_sub_batch(sequences, alignment, pad_id=PAD)

    assert batch["input_ids"].shape == (2 * 2 * 3, 4)  # (B*K*D, T)
    masked = batch["source"] < 0
    assert masked.tolist() == [True] * 6 + [False] * 6
    assert torch.equal(batch["slot_weight"], (~masked).float())
    assert not batch["loss_mask"][masked].any()
    assert (batch["input_ids"][masked] == PAD).all()
    assert (batch["attention_mask"].sum(dim=1) >= 1).all()  # every row attends somewhere

    # rollout (1, 0) has d = 1 < D = 3: all three slots hold "abcd", identical rows
    first = batch["input_ids"][6:9]
    assert decode(first[0].tolist()) == "abcd"
    for key in ("input_ids", "attention_mask", "loss_mask"):
        assert torch.equal(batch[key][6], batch[key][7])
        assert torch.equal(batch[key][6], batch[key][8])


def attend(x, allowed):
    """Plain causal self-attention with masked scores set to -inf, as textbook code does it."""
    scores = (x @ x.transpose(1, 2)).masked_fill(~allowed, float("-inf"))  # (M, T, T)
    return torch.softmax(scores, dim=-1) @ x  # (M, T, H)


def test_masked_rows_give_no_nan_in_attention():
    # The reason masked slots keep one attended token: over a row whose attention mask
    # were all zero, the softmax would see only -inf and return NaN. (Some fused
    # kernels return 0 there instead; we do not rely on which one runs.)
    alignment = align_sub_trajectories([[0, 0], [1, 0]], d_max=2, seed=0)
    batch = aligned_sub_batch([(encode("hello"), [0, 1, 1, 1, 1])], alignment, pad_id=PAD)
    n, t = batch["input_ids"].shape
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # (T, T)
    allowed = causal & batch["attention_mask"].bool()[:, None, :]  # (M, T, T)
    x = torch.randn(n, t, 8)  # (M, T, H) stand-in embeddings
    assert torch.isfinite(attend(x, allowed)).all()
    nothing = causal & torch.zeros(n, 1, t, dtype=torch.bool)  # an all-zero attention mask
    assert torch.isnan(attend(x, nothing)).all()


def test_aligned_batch_errors():
    sequences = [(encode("abc"), [0, 1, 1]), (encode("abcdefgh"), [0] + [1] * 7)]
    alignment = align_sub_trajectories([[2]], d_max=2, seed=0)
    with pytest.raises(ValueError, match="got 3 sub sequences but the alignment has 2"):
        aligned_sub_batch(sequences + sequences[:1], alignment, pad_id=PAD)
    with pytest.raises(ValueError, match="sub trajectory 1 has 8 tokens"):
        aligned_sub_batch(sequences, alignment, pad_id=PAD, max_len=5)
    # a dropped trajectory is never trained on, so its length does not matter
    seed = next(s for s in range(100)
                if align_sub_trajectories([[2]], d_max=1, seed=s).source.item() == 0)
    dropping = align_sub_trajectories([[2]], d_max=1, seed=seed)  # keeps 0, drops 1
    batch = aligned_sub_batch(sequences, dropping, pad_id=PAD, max_len=5)
    assert batch["input_ids"].shape == (1, 3)


def test_all_slots_masked():
    alignment = align_sub_trajectories([[0, 0, 0]], d_max=2, seed=0)
    batch = aligned_sub_batch([], alignment, pad_id=PAD)
    assert batch["input_ids"].shape == (6, 1)
    assert not batch["slot_weight"].any() and not batch["loss_mask"].any()
    assert batch["attention_mask"].all()

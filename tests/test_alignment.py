"""Tests for mgrpo_ref.alignment: hand cases and property tests of the slot rules."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mgrpo_ref.alignment import align_sub_trajectories, gather_slots, weight_by_calls


def _own_ranges(counts):
    """(b, k) -> set of flat indices of rollout k of question b, and per question."""
    own, per_question, start = {}, {}, 0
    for b, row in enumerate(counts):
        per_question[b] = set()
        for k, d in enumerate(row):
            own[b, k] = set(range(start, start + d))
            per_question[b] |= own[b, k]
            start += d
    return own, per_question


# ---------------------------------------------------------------------------
# hand cases


def test_d_below_dmax_duplicates_own():
    # One question, one rollout with d = 2 trajectories (0, 1), D = 4:
    # slots are 0, 1 and two copies drawn from {0, 1}.
    a = align_sub_trajectories([[2]], d_max=4, seed=0)
    slots = a.source[0, 0].tolist()
    assert slots[:2] == [0, 1] and set(slots[2:]) <= {0, 1}
    assert a.filled.all()
    assert (a.n_slots, a.n_duplicated, a.n_dropped, a.n_borrowed, a.n_masked) == (4, 2, 0, 0, 0)
    assert a.duplicated_fraction == 0.5


def test_d_above_dmax_drops():
    # d = 5, D = 2: two of 0..4 kept, distinct, in call order; three dropped.
    a = align_sub_trajectories([[5]], d_max=2, seed=3)
    slots = a.source[0, 0].tolist()
    assert len(set(slots)) == 2 and set(slots) <= set(range(5)) and slots == sorted(slots)
    assert (a.n_dropped, a.n_duplicated) == (3, 0)
    assert a.dropped_fraction == 3 / 5


def test_d_zero_borrows_from_same_question():
    # Question 0: rollouts d = [0, 2] -> trajectories 0, 1 (in rollout 1).
    # Question 1: rollouts d = [1, 1] -> trajectories 2, 3.
    a = align_sub_trajectories([[0, 2], [1, 1]], d_max=3, seed=1)
    assert set(a.source[0, 0].tolist()) <= {0, 1}  # borrowed, never from question 1
    assert a.n_borrowed == 3
    # 3 borrowed + 1 extra copy in rollout (0, 1) + 2 + 2 extra copies in question 1.
    assert a.n_duplicated == 3 + 1 + 2 + 2
    assert a.filled.all()


def test_question_without_trajectory_is_masked():
    a = align_sub_trajectories([[0, 0], [1, 0]], d_max=2, seed=0)
    assert not a.filled[0].any() and (a.source[0] == -1).all()
    assert a.filled[1].all() and (a.source[1] == 0).all()  # only trajectory 0 exists there
    assert a.n_masked == 4 and a.masked_fraction == 0.5
    assert a.d_histogram == {0: 3, 1: 1}


def test_dmax_one():
    # D = 1: d = 1 keeps its one, d = 3 keeps one of three, d = 0 borrows one.
    a = align_sub_trajectories([[1, 3, 0]], d_max=1, seed=0)
    assert a.source.shape == (1, 3, 1)
    assert a.source[0, 0, 0] == 0
    assert a.source[0, 1, 0] in (1, 2, 3)
    assert a.n_dropped == 2 and a.n_borrowed == 1


def test_empty_batch_and_fraction_denominators():
    a = align_sub_trajectories([], d_max=3, seed=0)
    assert a.n_slots == 0 and a.source.shape == (0, 0, 3)
    assert (a.duplicated_fraction, a.masked_fraction, a.dropped_fraction) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "counts, d_max, match",
    [
        ([[1, -1]], 2, "counts\\[0\\]\\[1\\]"),
        ([[1, 2], [1]], 2, "same number K"),
        ([[1]], 0, "d_max"),
        ([[1.5]], 2, "int >= 0"),
    ],
)
def test_invalid_inputs(counts, d_max, match):
    with pytest.raises(ValueError, match=match):
        align_sub_trajectories(counts, d_max=d_max, seed=0)


def test_gather_slots_hand_case():
    a = align_sub_trajectories([[0, 0], [2, 0]], d_max=2, seed=0)
    values = torch.tensor([10.0, 20.0])
    out = gather_slots(values, a, fill=-1.0)
    assert torch.equal(out[0], torch.full((2, 2), -1.0))
    assert torch.equal(out[1, 0], torch.tensor([10.0, 20.0]))
    with pytest.raises(ValueError, match="distinct"):
        gather_slots(torch.zeros(3), a)


# ---------------------------------------------------------------------------
# properties

counts_strategy = st.integers(1, 4).flatmap(
    lambda k: st.lists(st.lists(st.integers(0, 6), min_size=k, max_size=k), min_size=1, max_size=5)
)


@settings(max_examples=150, deadline=None)
@given(counts=counts_strategy, d_max=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_alignment_invariants(counts, d_max, seed):
    a = align_sub_trajectories(counts, d_max=d_max, seed=seed)
    n_questions, n_rollouts = len(counts), len(counts[0])
    own, per_question = _own_ranges(counts)
    n = sum(map(sum, counts))

    assert a.source.shape == a.filled.shape == (n_questions, n_rollouts, d_max)
    assert a.n_slots == n_questions * n_rollouts * d_max == a.source.numel()
    assert a.n_distinct == n
    assert torch.equal(a.filled, a.source >= 0)

    used = set()
    expected_duplicated = expected_borrowed = 0
    for b, row in enumerate(counts):
        for k, d in enumerate(row):
            slots = a.source[b, k].tolist()
            real = [s for s in slots if s >= 0]
            # masked only when the question has no trajectory, and then entirely
            assert (len(real) == 0) == (len(per_question[b]) == 0)
            assert len(real) in (0, d_max)
            # every unmasked slot belongs to its own question
            assert set(real) <= per_question[b]
            used |= set(real)
            if 1 <= d <= d_max:
                # each of its own at least once, and only its own
                assert set(real) == own[b, k]
                expected_duplicated += d_max - d
            elif d > d_max:
                # no duplicate, only its own
                assert len(set(real)) == d_max and set(real) <= own[b, k]
            elif real:
                expected_borrowed += d_max
                assert not set(real) & own[b, k]  # own is empty: borrowed from others

    assert a.n_borrowed == expected_borrowed
    assert a.n_duplicated == expected_duplicated + expected_borrowed
    assert a.n_dropped == sum(max(d - d_max, 0) for row in counts for d in row)
    assert a.n_dropped == n - len(used)  # dropped trajectories reach no slot at all
    assert a.n_masked == int((~a.filled).sum())
    # every slot is either a first occurrence, a copy, or masked
    assert a.n_slots == (n - a.n_dropped) + a.n_duplicated + a.n_masked
    assert sum(a.d_histogram.values()) == n_questions * n_rollouts
    assert a.d_histogram == {d: sum(r.count(d) for r in counts) for r in counts for d in r}


@settings(max_examples=40, deadline=None)
@given(counts=counts_strategy, d_max=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_same_seed_same_alignment(counts, d_max, seed):
    first = align_sub_trajectories(counts, d_max=d_max, seed=seed)
    second = align_sub_trajectories(counts, d_max=d_max, seed=seed)
    assert torch.equal(first.source, second.source)
    for name in ("n_duplicated", "n_borrowed", "n_dropped", "n_masked", "d_histogram"):
        assert getattr(first, name) == getattr(second, name)


def test_different_seeds_can_differ():
    sources = {
        tuple(align_sub_trajectories([[1, 5, 0]], d_max=3, seed=s).source.flatten().tolist())
        for s in range(20)
    }
    assert len(sources) > 1


@settings(max_examples=60, deadline=None)
@given(counts=counts_strategy, d_max=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_gather_slots_copies_values(counts, d_max, seed):
    a = align_sub_trajectories(counts, d_max=d_max, seed=seed)
    ids = torch.arange(a.n_distinct, dtype=torch.float64)  # (N,)
    values = torch.stack([ids, -ids], dim=1)  # (N, 2): distinct value per trajectory
    out = gather_slots(values, a, fill=7.0)  # (B, K, D, 2)
    assert out.shape == a.source.shape + (2,)
    n_questions, n_rollouts, d = a.source.shape
    for b, k, slot in itertools.product(range(n_questions), range(n_rollouts), range(d)):
        src = a.source[b, k, slot].item()
        expected = [7.0, 7.0] if src < 0 else values[src].tolist()
        assert out[b, k, slot].tolist() == expected


def test_gather_slots_is_differentiable():
    a = align_sub_trajectories([[1, 0], [2, 3]], d_max=2, seed=0)
    values = torch.randn(a.n_distinct, requires_grad=True)
    gather_slots(values, a).sum().backward()
    # each value's gradient counts the slots it fills
    expected = torch.bincount(a.source[a.filled], minlength=a.n_distinct).float()
    torch.testing.assert_close(values.grad, expected)


# ---------------------------------------------------------------------------
# the loss weight by number of calls


def test_weight_by_calls_hand_case():
    # three rollouts (d = 1, 2, 0) at D = 4, every trajectory 10 trained tokens; aligned, the
    # d = 1 rollout's one trajectory fills its 4 slots, the d = 2 rollout's two fill 2 each,
    # and the d = 0 rollout borrows 4 slots, say 3 from the d = 2 rollout and 1 from d = 1
    calls, copies = [1, 2, 2], [4 + 1, 2 + 2, 2 + 1]
    assert weight_by_calls(calls, [c * 10 for c in copies]) == pytest.approx({1: 5 / 12, 2: 7 / 12})
    assert weight_by_calls(calls, [10, 10, 10]) == pytest.approx({1: 1 / 3, 2: 2 / 3})  # unaligned: one each
    assert weight_by_calls(calls, [0, 10, 30]) == pytest.approx({1: 0.0, 2: 1.0})  # tokens weigh too
    assert list(weight_by_calls([3, 1, 2], [1, 1, 1])) == [1, 2, 3]  # in order of d
    assert weight_by_calls([], []) == {} and weight_by_calls([1], [0]) == {}
    with pytest.raises(ValueError, match="2 call counts for 1 weights"):
        weight_by_calls([1, 2], [1])


@settings(max_examples=100, deadline=None)
@given(counts=counts_strategy, d_max=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_aligned_a_rollout_with_calls_carries_its_d_max_slots_whatever_its_d(counts, d_max, seed):
    """With one token per trajectory and no d = 0 rollout, every rollout that delegated carries
    D slots: d's share is its rollouts' share of the rollouts; unaligned it is d's share of
    the trajectories."""
    counts = [[max(d, 1) for d in row] for row in counts]  # no borrowing
    a = align_sub_trajectories(counts, d_max=d_max, seed=seed)
    calls = [d for row in counts for d in row for _ in range(d)]
    rollouts = [d for row in counts for d in row]
    aligned = weight_by_calls(calls, a.copies.tolist())
    assert aligned == pytest.approx({d: rollouts.count(d) / len(rollouts) for d in set(rollouts)})
    unaligned = weight_by_calls(calls, [1] * len(calls))
    assert unaligned == pytest.approx({d: rollouts.count(d) * d / len(calls) for d in set(rollouts)})

"""Tests for mgrpo_ref.advantages: hand-computed cases, loop equivalence, edge cases."""

import math

import pytest
import torch

from mgrpo_ref.advantages import equal_reward_fraction, main_advantages, sub_advantages

EPS = 1e-6


def test_hand_computed_group():
    # rewards [1, 0, 0, 1]: mean 0.5; population std sqrt(mean((+-0.5)^2)) = 0.5,
    # so A = (+-0.5) / (0.5 + eps) = +-1 / (1 + 2 eps) ~ [1, -1, -1, 1].
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    expected = torch.tensor([[1.0, -1.0, -1.0, 1.0]]) * 0.5 / (0.5 + EPS)
    torch.testing.assert_close(main_advantages(rewards), expected)


def test_hand_computed_uneven_group():
    # rewards [1, 0, 0, 0]: mean 0.25, deviations [0.75, -0.25, -0.25, -0.25],
    # variance (0.5625 + 3 * 0.0625) / 4 = 0.1875, std = sqrt(0.1875) ~ 0.4330.
    # A = [0.75, -0.25, -0.25, -0.25] / 0.4330 ~ [1.732, -0.577, -0.577, -0.577],
    # i.e. [sqrt 3, -1/sqrt 3, -1/sqrt 3, -1/sqrt 3] (eps = 0 here to compare exactly).
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    s3 = math.sqrt(3)
    expected = torch.tensor([[s3, -1 / s3, -1 / s3, -1 / s3]], dtype=torch.float64)
    torch.testing.assert_close(main_advantages(rewards, eps=0.0), expected)


def test_rows_are_independent_groups():
    rewards = torch.tensor([[1.0, 0.0], [5.0, 3.0]])
    adv = main_advantages(rewards)
    # Each row is centred and scaled on its own: both become ~[1, -1].
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0], [1.0, -1.0]]), atol=1e-5, rtol=0)


def test_equal_rewards_give_exactly_zero():
    # 0.1 repeated: the float mean is not exactly 0.1, so without the explicit zeroing
    # the advantage would be a tiny nonzero number divided by eps.
    rewards = torch.tensor([[0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    adv = main_advantages(rewards)
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    assert (adv[2] != 0).all()


def test_single_rollout_group_is_zero():
    adv = main_advantages(torch.tensor([[0.7], [0.2]]))
    assert torch.equal(adv, torch.zeros(2, 1))


def test_integer_rewards_are_accepted():
    adv = main_advantages(torch.tensor([[1, 0]]))
    assert adv.is_floating_point()
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0]]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rewards_raise(bad):
    rewards = torch.tensor([[1.0, 0.0], [0.0, bad]])
    with pytest.raises(ValueError, match=r"\(1, 1\)"):
        main_advantages(rewards)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        sub_advantages(rewards.flatten(), torch.tensor([0, 0, 1, 1]))


def test_wrong_ndim_raises():
    with pytest.raises(ValueError, match="B, K"):
        main_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="N,"):
        sub_advantages(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="N,"):
        sub_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        sub_advantages(torch.zeros(3), torch.zeros(3))


def _sub_loop(rewards, group_ids, eps=EPS):
    """Reference: one group at a time, in plain Python."""
    out = [0.0] * len(rewards)
    for g in set(group_ids):
        members = [i for i, gi in enumerate(group_ids) if gi == g]
        values = [rewards[i] for i in members]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        for i in members:
            out[i] = 0.0 if max(values) == min(values) else (rewards[i] - mean) / (std + eps)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_sub_advantages_match_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 60
    # Sparse ids (not 0..G-1) and a mix of binary and continuous rewards, so that
    # some groups are all-equal and some are singletons.
    group_ids = torch.randint(0, 12, (n,), generator=gen) * 7 - 20
    rewards = torch.where(
        torch.rand(n, generator=gen) < 0.5,
        torch.randint(0, 2, (n,), generator=gen).double(),
        torch.rand(n, generator=gen, dtype=torch.float64),
    )
    expected = _sub_loop(rewards.tolist(), group_ids.tolist())
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(sub_advantages(rewards, group_ids), expected)


def test_sub_advantages_of_one_group_equal_main_advantages():
    rewards = torch.tensor([0.3, 1.0, 0.0, 0.55, 0.9])
    flat = sub_advantages(rewards, torch.full((5,), 4, dtype=torch.long))
    torch.testing.assert_close(flat, main_advantages(rewards[None, :])[0])


def test_sub_advantages_by_row_equal_main_advantages():
    # A (B, K) layout flattened with row ids must give the same numbers.
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.2, 0.2], [3.0, 1.0, 2.0]])
    ids = torch.arange(3).repeat_interleave(3)
    torch.testing.assert_close(
        sub_advantages(rewards.flatten(), ids), main_advantages(rewards).flatten()
    )


def test_sub_advantages_empty():
    out = sub_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)


def test_equal_reward_fraction():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.4]])
    assert equal_reward_fraction(rewards) == 0.5
    # Flat layout: groups 7 -> [1, 1] equal, 3 -> [0, 2] not, 9 -> [5] singleton, equal.
    flat = torch.tensor([1.0, 0.0, 1.0, 2.0, 5.0])
    ids = torch.tensor([7, 3, 7, 3, 9])
    assert equal_reward_fraction(flat, ids) == pytest.approx(2 / 3)
    assert equal_reward_fraction(torch.zeros(0, 4)) == 0.0
    assert equal_reward_fraction(torch.zeros(0), torch.zeros(0, dtype=torch.long)) == 0.0

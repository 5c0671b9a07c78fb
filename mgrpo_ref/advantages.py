"""Group-relative advantages for each agent (docs/paper.md section 3).

GRPO has no value network. Its baseline for a sample is the mean reward of all the
samples drawn for the same question (the sample itself included), and the spread of those
rewards sets the scale:

    A_i = (R_i - mean_{j in g} R_j) / (std_{j in g} R_j + eps)

where g is the group of sample i. The two agents differ only in what a group is:

* main agent, Eq. (1): the K rollouts of one question; rewards arrive as a (B, K)
  tensor and every row is a group -> `main_advantages`.
* sub-agent, Eq. (2) [ours]: all the distinct (un-duplicated) sub trajectories that
  the K rollouts of one question produced; their number varies from question to
  question, so rewards arrive flat, (N,), with a group id per trajectory ->
  `sub_advantages`. Alignment comes after and never moves the baseline: the default
  batch holds each trajectory once with its advantage, weighted by its slot count
  (batching.distinct_batch); only `sub_batch="slots"` copies it into the slots (gather_slots).

Conventions shared by both:

* population std (divide by the group size, not size - 1), so a group of one sample
  is well defined and gets advantage 0;
* a group whose rewards are all equal gets advantage exactly 0.0: it carries no
  learning signal, and we do not want a 1e-7 leftover from rounding in the mean;
* NaN or infinite rewards are a bug upstream and raise a ValueError naming them.

Dimension letters: B questions in a step, K rollouts per question, N sub trajectories (flat, distinct).
"""

from __future__ import annotations

import torch


def main_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Main-agent advantages, one group per row. Eq. (1)

        A[b, k] = (R[b, k] - mean_k R[b]) / (std_k R[b] + eps)

    Args:
        rewards: (B, K) rewards of the K rollouts of each of B questions.
        eps: added to the std so that small spreads do not blow up.

    Returns:
        (B, K) advantages; rows whose rewards are all equal are exactly 0.
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be (B, K), got shape {tuple(rewards.shape)}")
    rewards = _as_float(rewards)
    _check_finite(rewards)
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, correction=0, keepdim=True)  # (B, 1) population std
    advantages = (rewards - mean) / (std + eps)  # (B, K)  Eq. (1)
    equal = _rows_all_equal(rewards)  # (B,)
    return advantages.masked_fill(equal[:, None], 0.0)  # (B, K)


def sub_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Sub-agent advantages: the same statistic within each group of equal id. Eq. (2)

        A[i] = (R[i] - mean_{j: g[j] = g[i]} R[j]) / (std_{j: g[j] = g[i]} R[j] + eps)

    Groups have different sizes, so instead of a (B, K) reshape we sum per group
    with `index_add_` (a scatter-add) and read the sums back with `inverse`.

    Args:
        rewards: (N,) rewards of N distinct sub trajectories.
        group_ids: (N,) integer group of each trajectory (e.g. its question index);
            any integers, not necessarily 0..G-1 or contiguous.
        eps: added to the std.

    Returns:
        (N,) advantages; members of a group whose rewards are all equal get exactly 0.
    """
    _check_flat(rewards, group_ids)
    rewards = _as_float(rewards)
    _check_finite(rewards)
    if rewards.numel() == 0:
        return rewards.clone()
    inverse, n_groups = _compact_ids(group_ids)  # (N,), G
    size = torch.bincount(inverse, minlength=n_groups).to(rewards.dtype)  # (G,)
    mean = _group_sum(rewards, inverse, n_groups) / size  # (G,)
    centred = rewards - mean[inverse]  # (N,)
    var = _group_sum(centred**2, inverse, n_groups) / size  # (G,) population variance
    std = var.sqrt()  # (G,)
    advantages = centred / (std[inverse] + eps)  # (N,)  Eq. (2)
    equal = _groups_all_equal(rewards, inverse, n_groups)  # (G,)
    return advantages.masked_fill(equal[inverse], 0.0)  # (N,)


def equal_reward_fraction(
    rewards: torch.Tensor, group_ids: torch.Tensor | None = None
) -> float:
    """Fraction of groups whose rewards are all equal (they get zero advantage).

    Logged for both agents: such groups give no learning signal, so a fraction near
    1 means the step was mostly wasted (all rollouts right, or all wrong).

    Args:
        rewards: (B, K) with one group per row (main agent), or (N,) flat rewards
            together with `group_ids` (sub-agent).
        group_ids: (N,) group of each reward, or None for the (B, K) layout.

    Returns:
        A python float in [0, 1]; 0.0 when there is no group at all.
    """
    rewards = _as_float(rewards)
    if group_ids is None:
        if rewards.ndim != 2:
            raise ValueError(
                f"without group_ids rewards must be (B, K), got {tuple(rewards.shape)}"
            )
        equal = _rows_all_equal(rewards)  # (B,)
    else:
        _check_flat(rewards, group_ids)
        if rewards.numel() == 0:
            return 0.0
        inverse, n_groups = _compact_ids(group_ids)
        equal = _groups_all_equal(rewards, inverse, n_groups)  # (G,)
    if equal.numel() == 0:
        return 0.0
    return equal.sum().item() / equal.numel()  # python division: 1 of 3 gives exactly 1/3


# ----------------------------------------------------------------------------
# helpers


def _rows_all_equal(rewards: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (B,) bool: True where every entry of the row equals its first."""
    # Compare values rather than testing std == 0: the std of [0.1, 0.1, 0.1] is not
    # exactly 0 in floating point, because the mean is rounded.
    return (rewards == rewards[:, :1]).all(dim=1)


def _groups_all_equal(
    rewards: torch.Tensor, inverse: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """(N,) rewards with compact group index -> (G,) bool: max == min in the group."""
    empty = rewards.new_zeros(n_groups)
    group_max = empty.scatter_reduce(0, inverse, rewards, "amax", include_self=False)
    group_min = empty.scatter_reduce(0, inverse, rewards, "amin", include_self=False)
    return group_max == group_min  # (G,)


def _group_sum(values: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(N,) -> (G,): sum of the values of each group."""
    return values.new_zeros(n_groups).index_add_(0, inverse, values)


def _compact_ids(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary integer ids to 0..G-1 so they can index (G,) tensors."""
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, unique.numel()


def _as_float(rewards: torch.Tensor) -> torch.Tensor:
    """Integer or bool rewards (e.g. 0/1 correctness) become the default float."""
    if rewards.is_floating_point():
        return rewards
    return rewards.to(torch.get_default_dtype())


def _check_flat(rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            "rewards and group_ids must both be (N,), got "
            f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError(f"group_ids must be integers, got dtype {group_ids.dtype}")


def _check_finite(rewards: torch.Tensor) -> None:
    bad = ~torch.isfinite(rewards)
    if bad.any():
        where = bad.nonzero().tolist()
        shown = ", ".join(str(tuple(i)) for i in where[:10])
        more = f" and {len(where) - 10} more" if len(where) > 10 else ""
        raise ValueError(
            f"rewards must be finite; NaN or inf at index {shown}{more} "
            f"(values {rewards[bad][:10].tolist()})"
        )

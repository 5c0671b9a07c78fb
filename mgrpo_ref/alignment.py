"""Trajectory alignment: a fixed number of sub-agent slots per rollout (docs/paper.md section 4).

A rollout of the main agent delegates d >= 0 subtasks, and d varies from rollout to
rollout. The sub-agent's trainer wants a fixed-size batch, so every rollout gets
exactly D = D_max sub slots and a step always has B * K * D slots [ours] (the batch is one
row per slot, or each distinct trajectory once weighted by its slot count: batching.py).
What goes into the slots of one rollout with d sub trajectories:

    1 <= d <= D   its own d trajectories once each, then D - d more drawn uniformly
                  with replacement among its own ("duplicated")          [ours]
    d > D         D of its own drawn uniformly without replacement; the other
                  d - D are left out ("dropped")                         [ours]
    d = 0         D drawn uniformly with replacement among the trajectories kept by
                  the other rollouts of the same question ("borrowed")  [ours]
    question has  every slot of every rollout of that question is masked
    no trajectory (source -1, loss weight 0)                            [ours]

The paper says only that batches must have a fixed size although d varies; duplicating and
dropping to D_max slots follow a widely read summary of it, and every rule in full is ours
(docs/paper.md section 4).

Borrowing draws from the trajectories the other rollouts *kept*, each distinct one
with equal probability, so a dropped trajectory stays dropped and `n_dropped` means
what it says: distinct trajectories that reach no slot.

Alignment only decides which trajectory fills which slot. Advantages are computed
over the distinct trajectories first (advantages.sub_advantages); the default batch then
gives each kept trajectory its advantage once, weighted by its slot count
(batching.distinct_batch), and the slot batch copies it into every slot it fills
(`gather_slots`). Either way duplicating or dropping never moves a group's
baseline. It does change how much weight each trajectory has in the token mean,
which is why the fractions are logged every step.

Dimension letters: B questions in a step, K rollouts per question, D = D_max slots
per rollout, N sub trajectories (flat, distinct), numbered in (question, rollout,
call) order.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from numbers import Integral

import torch


@dataclass(frozen=True, eq=False)
class Alignment:
    """Which distinct sub trajectory fills each of the B * K * D slots, and what it cost.

    eq=False: the fields hold tensors, so compare two alignments field by field with
    torch.equal rather than with ==.
    """

    source: torch.Tensor
    """(B, K, D) long: flat index (0..N-1) of the trajectory in each slot, -1 if masked."""
    filled: torch.Tensor
    """(B, K, D) bool: True for a slot holding a trajectory, False for a masked one (loss weight 0)."""
    n_distinct: int
    """N, the number of distinct sub trajectories that were aligned."""
    n_slots: int
    """B * K * D."""
    n_duplicated: int
    """Slots holding a copy: the D - d extra copies when d < D, plus every borrowed slot."""
    n_borrowed: int
    """Slots of d = 0 rollouts filled from other rollouts of the same question."""
    n_dropped: int
    """Distinct trajectories that reach no slot: sum over rollouts of max(d - D, 0)."""
    n_masked: int
    """Slots of questions that have no sub trajectory at all."""
    d_histogram: dict[int, int]
    """d -> number of rollouts that produced d sub trajectories."""

    @property
    def duplicated_fraction(self) -> float:
        """Duplicated slots / all slots (0 when there is no slot)."""
        return _ratio(self.n_duplicated, self.n_slots)

    @property
    def masked_fraction(self) -> float:
        """Masked slots / all slots (0 when there is no slot)."""
        return _ratio(self.n_masked, self.n_slots)

    @property
    def copies(self) -> torch.Tensor:
        """(N,) long: how many slots each distinct trajectory fills (0 if dropped)."""
        return torch.bincount(self.source[self.filled], minlength=self.n_distinct)

    @property
    def dropped_fraction(self) -> float:
        """Dropped trajectories / distinct trajectories (0 when there is none)."""
        return _ratio(self.n_dropped, self.n_distinct)


def align_sub_trajectories(counts: list[list[int]], d_max: int, seed: int) -> Alignment:
    """Assign the N distinct sub trajectories to B * K * D slots.

    Args:
        counts: B lists of K ints; counts[b][k] = d, the number of sub trajectories
            rollout k of question b produced. Trajectories are numbered flat in
            (question, rollout, call) order.
        d_max: D, the number of slots per rollout (>= 1).
        seed: seeds a private random.Random, so the same inputs and seed always
            give the same alignment, whatever else uses the global RNG.

    Returns:
        An Alignment with source and filled of shape (B, K, D) and the counts to log.
    """
    _validate(counts, d_max)
    rng = random.Random(seed)
    n_questions = len(counts)
    n_rollouts = len(counts[0]) if counts else 0
    source = torch.full((n_questions, n_rollouts, d_max), -1, dtype=torch.long)  # (B, K, D)
    n_duplicated = n_borrowed = n_dropped = n_masked = 0

    start = 0  # flat index of the first trajectory of the current rollout
    for b, row in enumerate(counts):
        own = []  # own[k]: flat indices of rollout k's trajectories
        for d in row:
            own.append(list(range(start, start + d)))
            start += d

        # Pass 1: rollouts that produced something fill their slots from their own.
        kept: list[int] = []  # distinct trajectories that reached a slot in this question
        for k, trajectories in enumerate(own):
            if trajectories:
                slots = _own_slots(trajectories, d_max, rng)
                source[b, k] = torch.tensor(slots)
                kept.extend(sorted(set(slots)))
                n_duplicated += max(d_max - len(trajectories), 0)
                n_dropped += max(len(trajectories) - d_max, 0)

        # Pass 2: rollouts with d = 0 borrow from the others, or stay masked.
        for k, trajectories in enumerate(own):
            if trajectories:
                continue
            if not kept:  # the question has no sub trajectory at all
                n_masked += d_max
                continue
            source[b, k] = torch.tensor([rng.choice(kept) for _ in range(d_max)])
            n_borrowed += d_max
            n_duplicated += d_max

    return Alignment(
        source=source,
        filled=source >= 0,  # (B, K, D)
        n_distinct=start,
        n_slots=source.numel(),
        n_duplicated=n_duplicated,
        n_borrowed=n_borrowed,
        n_dropped=n_dropped,
        n_masked=n_masked,
        d_histogram=dict(sorted(Counter(d for row in counts for d in row).items())),
    )


def gather_slots(
    values: torch.Tensor, alignment: Alignment, fill: float = 0.0
) -> torch.Tensor:
    """Copy per-trajectory values into the aligned slots.

    This is how an advantage computed once per distinct trajectory reaches every slot
    holding that trajectory. Differentiable with respect to `values`.

    Args:
        values: (N, ...) one entry per distinct trajectory (e.g. its advantage).
        alignment: the result of align_sub_trajectories for those N trajectories.
        fill: value for masked slots.

    Returns:
        (B, K, D, ...) tensor.
    """
    if values.shape[0] != alignment.n_distinct:
        raise ValueError(
            f"values has {values.shape[0]} rows but the alignment has "
            f"{alignment.n_distinct} distinct trajectories"
        )
    out = values.new_full(alignment.source.shape + values.shape[1:], fill)  # (B, K, D, ...)
    out[alignment.filled] = values[alignment.source[alignment.filled]]
    return out


def weight_by_calls(calls: list[int], weights: list[float]) -> dict[int, float]:
    """Each number of calls d's share of the sub-agent's loss weight.

    ``calls[i]`` is d for sub trajectory i's rollout (how many subtasks its main agent
    delegated), ``weights[i]`` the trajectory's weight in the token mean: its copies times its
    trained tokens (the learner's step logs this as ``sub/weight_by_calls``). Aligned, a rollout
    with d >= 1 fills its D slots with its own trajectories, so each of them fills D/d slots
    on average and the rollout as a whole carries D slots whatever its d; unaligned,
    every trajectory fills one, and a rollout carries d. The gradient is the weighted sum of
    the trajectories' per-token gradients, so this is where alignment moves it: toward the
    trajectories of rollouts with few calls. Borrowed copies (rollouts with d = 0) count for
    the trajectory copied, under its own rollout's d.

    Returns d -> share (the shares sum to 1), in order of d; empty when there is no weight.
    """
    if len(calls) != len(weights):
        raise ValueError(f"{len(calls)} call counts for {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        return {}
    shares: dict[int, float] = {}
    for d, w in sorted(zip(calls, weights)):
        shares[d] = shares.get(d, 0.0) + w / total
    return shares


# ----------------------------------------------------------------------------
# helpers


def _own_slots(trajectories: list[int], d_max: int, rng: random.Random) -> list[int]:
    """The D slots of a rollout with 1 <= d trajectories of its own."""
    d = len(trajectories)
    if d > d_max:
        # Uniform drop; keep the survivors in call order so slots read naturally.
        return sorted(rng.sample(trajectories, d_max))
    extra = [rng.choice(trajectories) for _ in range(d_max - d)]
    return trajectories + extra


def _validate(counts: list[list[int]], d_max: int) -> None:
    if not isinstance(d_max, Integral) or isinstance(d_max, bool) or d_max < 1:
        raise ValueError(f"d_max must be an int >= 1, got {d_max!r}")
    if not counts:
        return
    n_rollouts = len(counts[0])
    for b, row in enumerate(counts):
        if len(row) != n_rollouts:
            raise ValueError(
                f"every question needs the same number K of rollouts: question 0 has "
                f"{n_rollouts}, question {b} has {len(row)}"
            )
        for k, d in enumerate(row):
            if not isinstance(d, Integral) or isinstance(d, bool) or d < 0:
                raise ValueError(
                    f"counts[{b}][{k}] must be an int >= 0 (sub trajectories of "
                    f"rollout {k} of question {b}), got {d!r}"
                )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0

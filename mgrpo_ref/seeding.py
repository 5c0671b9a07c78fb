"""Per-step seeds: one run seed, one step, one salt per consumer of randomness.

Every random choice of a training step is drawn from a generator seeded by
``step_seed(run seed, step, salt)``, so a resumed run draws exactly what the uninterrupted
run would have, whatever happened before the checkpoint. Each consumer has its own salt,
so changing how much one of them draws never shifts another's numbers.
"""

from __future__ import annotations

SALT_QUESTIONS = 1
"""The step's B training questions (``train.sample_questions``)."""
SALT_ROLLOUTS = 3
"""Rollout sampling: the learner at position i of the variant's layout uses ``rollout_salt(i)``."""
SALT_ALIGNMENT = 17
"""Which sub trajectories are duplicated, dropped or borrowed (``alignment``)."""
SALT_EVALUATION = 99
"""Sampling during held-out evaluations."""


def rollout_salt(learner_position: int) -> int:
    """The rollout-sampling salt of the learner at this position of the variant's layout."""
    return SALT_ROLLOUTS + learner_position


def step_seed(seed: int, step: int, salt: int) -> int:
    """The seed of one consumer (``salt``) at one step of the run seeded ``seed``."""
    return (seed * 1_000_003 + step * 7919 + salt) % (2**31 - 1)

"""Helpers the update benchmarks share: one policy on a base, the real episodes of the
default config's first steps (played by that policy at T = 1 and seeded as the trainer seeds
them, both roles sampled by the one policy), a record of the policy's ``act`` calls, and one
update with the config's objective settings."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def policy_and_config(base: str, **overrides):
    """(policy, cfg): the default config on ``base`` (fields replaced by ``overrides``) and a
    policy loaded as make_learner does."""
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.policy import SamplingSettings, load_policy

    cfg = replace(TrainConfig(), base=base, **overrides)
    policy = load_policy(cfg.base, quantization=cfg.quantization, lora=cfg.lora,
                         sampling=SamplingSettings(cfg.temperature, cfg.top_p, cfg.max_new_tokens), seed=cfg.seed,
                         nf4_on_cpu=cfg.nf4_on_cpu)
    return policy, cfg


def real_steps(policy, cfg, steps: int):
    """Yield (step, episodes) for steps 1..``steps``: the step's B*K rollouts of ``policy``."""
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.seeding import rollout_salt, step_seed
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.train import sample_questions
    from mgrpo_ref.world import load_questions

    pool, tools = load_questions("train"), ToolsByWorld()
    for step in range(1, steps + 1):
        policy.generator.manual_seed(step_seed(cfg.seed, step, rollout_salt(0)))
        questions = sample_questions(pool, cfg.questions_per_step, cfg.seed, step)
        yield step, run_episodes(questions, tools, {"main": policy, "sub": policy}, "multi", cfg.limits,
                                 rollouts=cfg.rollouts)


@contextlib.contextmanager
def recording_act_calls(policy):
    """Within the block, every ``policy.act`` call is also appended, as (role, contexts), to
    the list this yields; ``policy.act`` is restored after."""
    calls, act = [], policy.act

    def recording_act(role, contexts):
        calls.append((role, list(contexts)))
        return act(role, contexts)

    policy.act = recording_act
    try:
        yield calls
    finally:
        policy.act = act


def update(policy, optimizer, batch, cfg, microbatch: int | None = None) -> dict:
    """``step.policy_update`` on ``batch`` with the config's objective settings (the
    optimiser's learning rate is left as it is: the benchmarks use 0)."""
    from mgrpo_ref import step

    return step.policy_update(policy, optimizer, batch, epochs=cfg.epochs, microbatch=microbatch or cfg.microbatch,
                              eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high, kl_coef=cfg.kl_coef,
                              max_grad_norm=cfg.max_grad_norm)

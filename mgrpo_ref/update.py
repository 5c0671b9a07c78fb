"""One agent's side of a training step: its rewards, advantages, batch and update.

PAPER.md sections 2-5, as each agent's worker runs them in its own process:

    main agent   R_M (Eq. R1) -> written to the store -> A_M over the K rollouts (Eq. 1)
                 -> its trajectories as a batch -> clipped update (Eq. 3-6)
    sub-agent    the main agent's correctness read from the store -> R_S (Eq. R2)
                 -> A_S over each question's distinct sub trajectories (Eq. 2)
                 -> alignment to B*K*D slots -> advantages copied into slots -> update

Only scalars cross between the agents (through the store); each agent's tokens, log-probs
and gradients stay in its own process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .advantages import equal_reward_fraction, group_advantages, grouped_advantages
from .alignment import align_sub_trajectories, gather_slots
from .batching import aligned_sub_batch, collate, encode_trajectory
from .episode import Trajectory
from .grading import exact_match
from .objective import clipped_surrogate_loss
from .rewards import RewardConfig, main_reward, sub_reward, subtask_of, verify_sub_result
from .world import Question


@dataclass
class RolloutRecord:
    """What the controller sends an agent's worker about one rollout (b, k)."""

    question_index: int  # b, position of the question in the step
    rollout: int  # k
    question: Question
    main: Trajectory  # the main (or single) trajectory
    subs: list[Trajectory]  # its sub trajectories, in call order


@dataclass
class PolicyBatch:
    """Rows an agent trains on, already weighted: loss_mask is 0 off the agent's tokens and on
    masked slots. Shapes: M rows, T tokens."""

    input_ids: torch.Tensor  # (M, T)
    attention_mask: torch.Tensor  # (M, T)
    loss_mask: torch.Tensor  # (M, T) float
    advantages: torch.Tensor  # (M,)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def concat_batches(batches: list[PolicyBatch], pad_id: int) -> PolicyBatch:
    """Stack batches of different T, right-padding to the longest (the shared variant)."""
    t = max(b.input_ids.shape[1] for b in batches)

    def pad(x, value):
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

    return PolicyBatch(torch.cat([pad(b.input_ids, pad_id) for b in batches]),
                       torch.cat([pad(b.attention_mask, 0) for b in batches]),
                       torch.cat([pad(b.loss_mask, 0.0) for b in batches]),
                       torch.cat([b.advantages for b in batches]))


# ---------------------------------------------------------------------------
# The main agent (or the single agent)


def main_rewards(records: list[RolloutRecord], cfg: RewardConfig) -> list[dict]:
    """Eq. (R1) for every rollout, as the rows the main agent writes to the store."""
    rows = []
    for r in records:
        correct = r.main.format_valid and exact_match(r.main.final, r.question.answer)
        rows.append(dict(question=r.question_index, rollout=r.rollout, qid=r.question.qid,
                         main_reward=main_reward(r.main.format_valid, correct, cfg),
                         correct=correct, format_valid=r.main.format_valid, n_sub=len(r.subs)))
    return rows


def main_batch(records: list[RolloutRecord], rows: list[dict], encode, pad_id: int,
               n_questions: int, n_rollouts: int, eps: float) -> tuple[PolicyBatch, dict]:
    """A_M over each question's K rollouts (Eq. 1) and the main trajectories as a batch."""
    rewards = torch.tensor([r["main_reward"] for r in rows]).view(n_questions, n_rollouts)  # (B, K)
    advantages = group_advantages(rewards, eps).flatten()  # (B*K,)  Eq. (1)
    batch = collate([encode_trajectory(r.main, encode) for r in records], pad_id)
    stats = {"reward_mean": rewards.mean().item(),
             "accuracy": sum(r["correct"] for r in rows) / len(rows),
             "format_valid": sum(r["format_valid"] for r in rows) / len(rows),
             "equal_reward_frac": equal_reward_fraction(rewards)}
    return PolicyBatch(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], advantages), stats


# ---------------------------------------------------------------------------
# The sub-agent


def sub_rewards(records: list[RolloutRecord], store_rows: list[dict], cfg: RewardConfig):
    """Eq. (R2) for every sub trajectory, flat in (question, rollout, call) order.

    The main agent's correctness comes from ``store_rows`` (read from the store), never from
    the controller. Returns (R_S (N,), group (N,) question index, verified (N,) bool).
    """
    correct = {(row["question"], row["rollout"]): bool(row["correct"]) for row in store_rows}
    rewards, groups, verified = [], [], []
    for r in records:
        for s in r.subs:
            ok = verify_sub_result(subtask_of(s), s.final, r.question)
            rewards.append(sub_reward(s.format_valid, correct[(r.question_index, r.rollout)], ok, cfg))
            groups.append(r.question_index)
            verified.append(ok)
    return torch.tensor(rewards, dtype=torch.float), torch.tensor(groups, dtype=torch.long), torch.tensor(verified)


def sub_batch(records: list[RolloutRecord], store_rows: list[dict], encode, pad_id: int,
              n_questions: int, n_rollouts: int, d_max: int, seed: int, cfg: RewardConfig,
              eps: float) -> tuple[PolicyBatch, dict]:
    """A_S over distinct trajectories (Eq. 2), then alignment to B*K*D slots."""
    rewards, groups, verified = sub_rewards(records, store_rows, cfg)  # (N,) each
    advantages = grouped_advantages(rewards, groups, eps)  # (N,)  Eq. (2)
    counts = [[0] * n_rollouts for _ in range(n_questions)]
    for r in records:
        counts[r.question_index][r.rollout] = len(r.subs)
    alignment = align_sub_trajectories(counts, d_max, seed)
    sequences = [encode_trajectory(s, encode) for r in records for s in r.subs]  # N, flat order
    slots = aligned_sub_batch(sequences, alignment, pad_id)  # (B*K*D, T)
    slot_adv = gather_slots(advantages, alignment).flatten()  # (B*K*D,): copies, baseline unmoved
    loss_mask = slots["loss_mask"] * slots["slot_weight"][:, None]  # (B*K*D, T)
    n = len(rewards)
    stats = {"reward_mean": rewards.mean().item() if n else 0.0,
             "verified": verified.float().mean().item() if n else 0.0,
             "format_valid": sum(s.format_valid for r in records for s in r.subs) / max(n, 1),
             "n_trajectories": n,
             "equal_reward_frac": equal_reward_fraction(rewards, groups) if n else 0.0,  # no group
             "align_duplicated_frac": alignment.duplicated_fraction,
             "align_dropped_frac": alignment.dropped_fraction,
             "align_masked_frac": alignment.masked_fraction,
             "d_histogram": {str(k): v for k, v in sorted(alignment.d_histogram.items())}}
    return PolicyBatch(slots["input_ids"], slots["attention_mask"], loss_mask, slot_adv), stats


# ---------------------------------------------------------------------------
# The update (each agent, in its own process)


def _microbatches(batch: PolicyBatch, size: int):
    """Row slices of at most ``size``, each trimmed to its own longest sequence.

    At least two positions are kept: bitsandbytes takes an inference-only kernel when a
    4-bit layer's input is a single token vector, which fails under autograd (a microbatch
    of one masked slot is one pad token). The added column is padding: attention 0, loss 0.
    """
    pad = torch.nn.functional.pad
    for start in range(0, len(batch), size):
        rows = slice(start, start + size)
        t = max(2, int(batch.attention_mask[rows].sum(dim=1).max()))
        extra = max(0, t - batch.input_ids.shape[1])
        yield (pad(batch.input_ids[rows, :t], (0, extra)), pad(batch.attention_mask[rows, :t], (0, extra)),
               pad(batch.loss_mask[rows, :t], (0, extra)), batch.advantages[rows])


def policy_update(policy, optimizer, batch: PolicyBatch, *, epochs: int, microbatch: int,
                  eps_low: float, eps_high: float, kl_coef: float, max_grad_norm: float,
                  train: bool = True) -> dict:
    """Clipped token-level objective (Eq. 3-6) over the whole batch, ``epochs`` optimiser steps.

    The loss of each microbatch is its token mean times its share of the batch's tokens, so
    the accumulated gradient is that of one token-level mean over every unmasked token of
    the batch. ``train=False`` computes the same statistics without changing the adapter
    (the frozen sub-agent).

    pi_old is the policy that sampled the batch. With more than one epoch it needs a pass of
    its own before the first optimiser step. With one pass the adapter has not moved when the
    loss is computed, so pi_old's log-probs are the current ones, detached: the ratio is
    exactly 1 and the gradient is unchanged, at one forward pass fewer (tested).
    """
    start = time.perf_counter()
    n_tokens = batch.loss_mask.sum().item()
    passes = epochs if train else 1
    with torch.no_grad():
        old = ([policy.token_logprobs(ids, att) for ids, att, _, _ in _microbatches(batch, microbatch)]
               if passes > 1 else None)
        ref = ([policy.token_logprobs(ids, att, reference=True) for ids, att, _, _ in _microbatches(batch, microbatch)]
               if kl_coef > 0 else None)
    totals: dict[str, float] = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "mean_ratio": 0.0, "kl_ref": 0.0}
    grad_norm = 0.0
    for _ in range(passes):
        optimizer.zero_grad(set_to_none=True)
        for i, (ids, att, mask, adv) in enumerate(_microbatches(batch, microbatch)):
            share = mask.sum().item() / max(n_tokens, 1.0)
            with torch.set_grad_enabled(train):
                logp = policy.token_logprobs(ids, att)  # (m, t)
                logp_old = old[i] if old is not None else logp.detach()  # pi_old, see above
                loss, diag = clipped_surrogate_loss(logp, logp_old, adv, mask, eps_low, eps_high, kl_coef,
                                                    ref[i] if ref is not None else None)
                if train:
                    (loss * share).backward()
            totals["loss"] += loss.item() * share
            for key in ("clip_frac", "approx_kl", "mean_ratio", "kl_ref"):
                totals[key] += diag[key] * share
        if train:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), max_grad_norm))
            optimizer.step()
    stats = {k: v / passes for k, v in totals.items()}
    stats.update(grad_norm=grad_norm, n_tokens=n_tokens, n_rows=len(batch),
                 update_s=time.perf_counter() - start, trained=train)
    return stats

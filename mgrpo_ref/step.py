"""One M-GRPO training step, all of it in this file (docs/paper.md sections 2-5).

It reads top to bottom in data order. The controller has run the step's B * K episodes
(``episode.run_episodes``), ordered (question, rollout): episode i is rollout k = i % K of
question b = i // K. From there, each learner takes its share of the step
(``learner_step``): the half of each agent it plays, then its update.

    main agent's learner                        sub-agent's learner
    --------------------                        -------------------
    R_M (B, K)             Eq. (R1)  main_half
    A_M (B, K)             Eq. (1)
    correct(M) (B, K)  --- the channel --->     correct(M) (B, K)
                                                R_S (N,)            Eq. (R2)  sub_half
                                                A_S (N,)            Eq. (2)   per question,
                                                                              distinct trajectories
                                                alignment: B*K*D slots
    batch: B*K rows                             batch: the B*K*D slots, or each distinct
                                                trajectory once weighted by its slot count
    update                 Eq. (3)-(6)          update              Eq. (3)-(6)   learner_update

Only correct(M), a (B, K) table of booleans, passes from the main agent's half to the
sub-agent's, through a channel. ``one_step`` runs every learner's share in one process and
the channel is a variable (``DirectChannel``: notebooks, tests); in the two-process pipeline
each worker runs its own learner's share (worker.py) and the channel is the store
(``store.StoreChannel``). Either way the same function, ``learner_step``, puts a learner's
share together.

Words: an *agent* is a role in an episode (main, sub, or the single agent); a *learner* is a
LoRA adapter with its optimiser (main, sub, single or shared), trained on the halves of the
agents it plays (``Layout``). Shape comments use the dimension letters of the glossary
(docs/glossary.md): B questions per step, K rollouts, D slots, N sub trajectories, M rows of
a batch, T tokens; m and t the rows and tokens of one microbatch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .advantages import equal_reward_fraction, main_advantages, sub_advantages
from .alignment import Alignment, align_sub_trajectories, weight_by_calls
from .batching import (PolicyBatch, batch_rows, concat_batches, distinct_batch, encode_trajectory, slot_batch,
                       trajectory_batch)
from .config import TrainConfig, learning_rate
from .episode import Episode, Trajectory
from .objective import clipped_surrogate_loss
from .policy import SamplingSettings, load_policy
from .rewards import rollout_main_reward, rollout_sub_rewards
from .seeding import SALT_ALIGNMENT, step_seed
from .viewer import half_trajectories, learner_record, write_record


# ---------------------------------------------------------------------------
# Who trains on what: the variants


@dataclass(frozen=True)
class Layout:
    """How a variant maps the episode's roles onto learners (one adapter each)."""

    mode: str
    """Episode mode: "multi" (main agent and sub-agents) or "single" (one agent does every hop)."""
    learners: dict[str, str]
    """role -> learner: "main" and "sub", or "single"."""
    frozen: tuple[str, ...] = ()
    """Learners that compute their statistics but never update."""

    @property
    def main_learner(self) -> str:
        """The learner of the main (or single) trajectories: it computes the main half."""
        return self.learners["main" if self.mode == "multi" else "single"]

    @property
    def sub_learner(self) -> str | None:
        """The learner of the sub trajectories (None without sub-agents)."""
        return self.learners.get("sub")


LAYOUTS = {
    "mgrpo": Layout("multi", {"main": "main", "sub": "sub"}),
    "frozen_sub": Layout("multi", {"main": "main", "sub": "sub"}, frozen=("sub",)),
    "single_agent": Layout("single", {"single": "single"}),
    "shared": Layout("multi", {"main": "shared", "sub": "shared"}),  # one adapter, both roles
}
"""The four variants of ``TrainConfig.variant``."""


# ---------------------------------------------------------------------------
# The two halves of a step


@dataclass
class MainHalf:
    """The main (or single) agent's half of a step: its rows and what they were made from."""

    batch: PolicyBatch
    """B*K rows, one per rollout's main trajectory."""
    stats: dict
    """``main/...`` statistics to log."""
    rewards: list[float]
    """R_M of each rollout, B*K in episode order."""
    correct: torch.Tensor
    """(B, K) bool correct(M): all the sub-agent's half needs of this one."""
    advantages: torch.Tensor
    """(B*K,) A_M of each rollout, in episode order."""

    def trajectories(self, episodes: list[Episode]) -> list[tuple[int, int | None, Trajectory, int]]:
        """(episode index, None, main trajectory, 1) for each rollout, in the order of ``rewards``."""
        return [(i, None, e.main, 1) for i, e in enumerate(episodes)]


@dataclass
class SubHalf:
    """The sub-agent's half of a step: its rows and what they were made from."""

    batch: PolicyBatch
    """The B*K*D slots, each distinct trajectory once weighted by its slot count, or (no
    alignment) each trajectory once: ``TrainConfig.sub_batch`` and ``alignment``."""
    stats: dict
    """``sub/...`` statistics to log, the alignment's among them."""
    rewards: list[float]
    """R_S of each of the N sub trajectories, flat in (question, rollout, call) order."""
    advantages: torch.Tensor
    """(N,) A_S of each sub trajectory, in the order of ``rewards``."""
    copies: torch.Tensor
    """(N,) long: the slots each sub trajectory fills (0: dropped; 1 each without alignment)."""

    def trajectories(self, episodes: list[Episode]) -> list[tuple[int, int | None, Trajectory, int]]:
        """(episode index, call, sub trajectory, copies) for each sub trajectory, in the order of ``rewards``."""
        items = [(i, call, sub) for i, e in enumerate(episodes) for call, sub in enumerate(e.subs)]
        return [(i, call, sub, int(n)) for (i, call, sub), n in zip(items, self.copies)]


def main_half(episodes: list[Episode], cfg: TrainConfig, policy) -> MainHalf:
    """The main (or single) agent: R_M, A_M over each question's K rollouts, its batch."""
    B, K = cfg.questions_per_step, cfg.rollouts  # the paper's B and K
    check_episodes(episodes, cfg, with_main=True)
    r_main = [rollout_main_reward(e, cfg.reward) for e in episodes]  # B*K  Eq. (R1)
    rewards = torch.tensor(r_main).view(B, K)  # (B, K)
    correct = torch.tensor([e.correct for e in episodes]).view(B, K)  # (B, K) bool
    advantages = main_advantages(rewards, cfg.adv_eps)  # (B, K)  Eq. (1)
    sequences = [encode_trajectory(policy.render(e.main), policy.encode) for e in episodes]  # B*K (ids, loss mask)
    batch = trajectory_batch(sequences, advantages.flatten(), policy.pad_id)  # (B*K, T)
    n = len(episodes)
    stats = {"reward_mean": rewards.mean().item(),
             "accuracy": int(correct.sum()) / n,
             "format_valid": sum(e.main.format_valid for e in episodes) / n,
             "equal_reward_frac": equal_reward_fraction(rewards)}
    return MainHalf(batch, {f"main/{key}": v for key, v in stats.items()}, r_main, correct, advantages.flatten())


def sub_half(episodes: list[Episode], main_correct: torch.Tensor, cfg: TrainConfig, policy, step: int) -> SubHalf:
    """The sub-agent: R_S with the main agent's correctness, A_S over each question's distinct
    sub trajectories, then alignment to B*K*D slots and the batch of ``cfg.sub_batch`` (or,
    with the ablation ``alignment="none"``, every trajectory once; the alignment statistics
    are still logged: what alignment would have done).

    ``main_correct`` (B, K) is correct(M) as the main agent's half found it; the episodes'
    main trajectories are not read (in the pipeline the sub-agent's learner never gets them).
    """
    B, K = cfg.questions_per_step, cfg.rollouts  # the paper's B and K
    check_episodes(episodes, cfg, with_main=False)
    if tuple(main_correct.shape) != (B, K):
        raise ValueError(f"main_correct must be (B, K) = {(B, K)}, got {tuple(main_correct.shape)}")
    r_sub, groups, verified = [], [], []
    for i, e in enumerate(episodes):
        r, ok = rollout_sub_rewards(e.question, e.subs, bool(main_correct.view(-1)[i]), cfg.reward)  # Eq. (R2)
        r_sub += r
        verified += ok
        groups += [i // K] * len(r)  # the group is the question
    rewards = torch.tensor(r_sub, dtype=torch.float)  # (N,)
    groups = torch.tensor(groups, dtype=torch.long)  # (N,)
    advantages = sub_advantages(rewards, groups, cfg.adv_eps)  # (N,)  Eq. (2), before any copy
    counts = [[len(e.subs) for e in episodes[q * K:(q + 1) * K]] for q in range(B)]  # (B, K) d per rollout
    alignment = align_sub_trajectories(counts, cfg.d_max, step_seed(cfg.seed, step, SALT_ALIGNMENT))
    sequences = [encode_trajectory(policy.render(s), policy.encode) for e in episodes for s in e.subs]  # N
    if cfg.alignment == "none":  # the ablation: no slots, every trajectory once at weight 1
        batch = trajectory_batch(sequences, advantages, policy.pad_id)  # (N, T)
    elif cfg.sub_batch == "slots":
        batch = slot_batch(sequences, advantages, alignment, policy.pad_id)  # (B*K*D, T)
    else:  # the same loss and gradient from each distinct trajectory once, weighted by its copies
        batch = distinct_batch(sequences, advantages, alignment, policy.pad_id)  # (M, T), M <= min(N, B*K*D)
    copies = torch.ones(len(r_sub), dtype=torch.long) if cfg.alignment == "none" else alignment.copies  # (N,)
    stats = sub_statistics(episodes, rewards, groups, verified, alignment, copies, sequences)
    return SubHalf(batch, {f"sub/{key}": v for key, v in stats.items()}, r_sub, advantages, copies)


def sub_statistics(episodes: list[Episode], rewards: torch.Tensor, groups: torch.Tensor, verified: list[bool],
                   alignment: Alignment, copies: torch.Tensor, sequences: list) -> dict:
    """What the sub-agent's half logs (``sub/...``): its rewards, format and verifier, its
    silent groups, what alignment did to the step's trajectories (also with ``alignment="none"``:
    what it would have done), and each number of calls d's share of the loss weight
    (``alignment.weight_by_calls``), each trajectory weighing its ``copies`` times its trained
    tokens."""
    n = len(rewards)
    calls = [len(e.subs) for e in episodes for _ in e.subs]  # (N,) d of each trajectory's rollout
    weights = [int(c) * sum(mask) for c, (_, mask) in zip(copies.tolist(), sequences)]  # copies x trained tokens
    return {"reward_mean": rewards.mean().item() if n else 0.0,
            "verified": torch.tensor(verified).float().mean().item() if n else 0.0,
            "format_valid": sum(s.format_valid for e in episodes for s in e.subs) / max(n, 1),
            "n_trajectories": n,
            "equal_reward_frac": equal_reward_fraction(rewards, groups) if n else 0.0,
            "align_duplicated_frac": alignment.duplicated_fraction,
            "align_dropped_frac": alignment.dropped_fraction,
            "align_masked_frac": alignment.masked_fraction,
            "d_histogram": {str(d): count for d, count in alignment.d_histogram.items()},
            "weight_by_calls": {str(d): share for d, share in weight_by_calls(calls, weights).items()}}


def check_episodes(episodes: list[Episode], cfg: TrainConfig, with_main: bool) -> None:
    """B*K episodes in (question, rollout) order, the K of a question on the same question."""
    B, K = cfg.questions_per_step, cfg.rollouts  # the paper's B and K
    if len(episodes) != B * K:
        raise ValueError(f"a step needs B*K = {B}*{K} = {B * K} episodes, got {len(episodes)}")
    for i, e in enumerate(episodes):
        if e.rollout != i % K or e.question.qid != episodes[i - i % K].question.qid:
            raise ValueError(f"episode {i} must be rollout {i % K} of question {i // K} "
                             f"(got rollout {e.rollout} of {e.question.qid})")
        if with_main and e.main is None:
            raise ValueError(f"episode {i} has no main trajectory")


# ---------------------------------------------------------------------------
# The update of one batch: Eq. (3)-(6)


def clipped_update(policy, optimizer, batch: PolicyBatch, cfg: TrainConfig, *, train: bool = True,
                   old_logprobs: list[torch.Tensor] | None = None) -> dict:
    """The clipped token-level objective (Eq. 3-6) over one batch: ``cfg.epochs`` optimiser
    steps, each on the gradient of every microbatch (``_microbatches``: ``cfg.microbatch``
    rows, or fewer within ``cfg.microbatch_tokens``), clipped to ``cfg.max_grad_norm``, at the
    learning rate the optimiser holds. With ``cfg.activation_checkpointing`` each decoder
    layer is recomputed in the backward pass instead of kept (``Policy.checkpointing``). With
    ``cfg.skip_zero_advantage`` rows whose advantage is 0 run forward only, where their loss is
    0 whatever the weights (see below): the same gradient and statistics.

    The loss of each microbatch is its token mean times its share of the batch's tokens, so
    the accumulated gradient is that of one token-level mean over every weighted token of
    the batch. ``train=False`` computes the same statistics without changing the adapter
    (a frozen learner).

    pi_old is the policy that sampled the batch, as ``Policy.token_logprobs`` scores it: the
    model's own distribution, which is the sampler's at temperature 1 and top-p 1 (the
    defaults); at another temperature or top-p the tokens were drawn from a warped
    distribution that pi_old does not include. A batch trained a step after it was sampled
    (``sub_staleness=1``) brings pi_old's log-probs along (``old_logprobs``): the adapter has
    moved since, so the ratio is not 1 and the clip acts. Otherwise, with more than one epoch
    pi_old needs a pass of its own before the first optimiser step; with one pass the adapter
    has not moved when the loss is computed, so pi_old's log-probs are the current ones,
    detached: the ratio is exactly 1 and the gradient is unchanged, at one forward pass fewer
    (tested).
    """
    start = time.perf_counter()
    kl_coef = cfg.kl_coef
    n_tokens = batch.token_weights.sum().item()
    passes = cfg.epochs if train else 1
    old = old_logprobs
    if old is None and passes > 1:
        old = sampling_logprobs(policy, batch, cfg)
    prefix = cfg.share_prefix
    # Rows whose advantage is 0 carry no gradient when their loss is 0 for any weights: no KL
    # term, and a ratio of exactly 1 (pi_old is the current policy, detached, see above).
    # With skip_zero_advantage they get microbatches of their own that skip the backward pass.
    still = (batch.advantages == 0 if train and cfg.skip_zero_advantage and kl_coef == 0 and old is None
             else torch.zeros(len(batch), dtype=torch.bool))  # (M,)
    row_sets = ([(batch, True)] if not still.any()
                else [(batch_rows(batch, ~still), True), (batch_rows(batch, still), False)])
    parts, backward = [], []  # each part (ids, mask, weights, A); whether it runs a backward pass
    for rows, moving in row_sets:
        if len(rows):
            mine = list(_microbatches(rows, cfg.microbatch, cfg.microbatch_tokens, share_prefix=prefix))
            parts += mine
            backward += [moving] * len(mine)
    with torch.no_grad():
        ref = ([policy.token_logprobs(ids, att, reference=True, where=w != 0, share_prefix=prefix)
                for ids, att, w, _ in parts] if kl_coef > 0 else None)
    totals: dict[str, float] = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "mean_ratio": 0.0, "kl_ref": 0.0,
                                "sampled_nll": 0.0}
    grad_norm = 0.0
    with policy.checkpointing(train and cfg.activation_checkpointing):
        for _ in range(passes):
            optimizer.zero_grad(set_to_none=True)
            for i, (ids, att, weights, adv) in enumerate(parts):
                share = weights.sum().item() / max(n_tokens, 1.0)
                with torch.set_grad_enabled(train and backward[i]):
                    logp = policy.token_logprobs(ids, att, where=weights != 0, share_prefix=prefix)  # (m, t), 0 where unweighted
                    logp_old = old[i].to(logp.device) if old is not None else logp.detach()  # pi_old, see above
                    loss, diag = clipped_surrogate_loss(logp, logp_old, adv, weights, cfg.clip_eps_low,
                                                        cfg.clip_eps_high, kl_coef,
                                                        ref[i] if ref is not None else None)  # Eq. (3)-(6)
                    if train and backward[i]:
                        (loss * share).backward()
                totals["loss"] += loss.item() * share
                for key in ("clip_frac", "approx_kl", "mean_ratio", "kl_ref", "sampled_nll"):
                    totals[key] += diag[key] * share
            if train:
                if not any(backward):  # every row still: a zero gradient, as a backward pass would have
                    for p in policy.trainable_parameters():  # given, so that the optimiser still takes its step
                        p.grad = torch.zeros_like(p)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), cfg.max_grad_norm))
                optimizer.step()
    stats = {key: v / passes for key, v in totals.items()}
    stats.update(grad_norm=grad_norm, n_tokens=n_tokens, n_rows=len(batch),
                 update_s=time.perf_counter() - start, trained=train)
    return stats


@torch.no_grad()
def sampling_logprobs(policy, batch: PolicyBatch, cfg: TrainConfig) -> list[torch.Tensor]:
    """The policy's log-probs of the batch's weighted tokens, one tensor per microbatch (in
    ``_microbatches`` order, as ``clipped_update`` takes them): pi_old, when taken before the
    adapter moves."""
    return [policy.token_logprobs(ids, att, where=w != 0, share_prefix=cfg.share_prefix)
            for ids, att, w, _ in _microbatches(batch, cfg.microbatch, cfg.microbatch_tokens, share_prefix=cfg.share_prefix)]


def _microbatches(batch: PolicyBatch, size: int, tokens: int = 0, longest_first: bool = True,
                  share_prefix: int = 0):
    """Microbatches of at most ``size`` rows, each trimmed to its own longest sequence; with
    ``tokens`` > 0, also of at most ``tokens`` padded tokens (rows x the longest row), a row
    longer than that alone.

    With ``longest_first`` the rows are taken in order of length, longest first, so rows of
    similar length share a microbatch and little of it is padding; the loss and gradient
    are sums over rows and do not depend on the order or the grouping (tested).
    ``python benchmarks/bench_update.py`` measures the saving. With ``share_prefix`` > 0 the
    rows are grouped by their beginnings instead (:func:`_prefix_groups`), and ``tokens``
    counts a shared prefix once.

    At least two positions are kept: bitsandbytes takes an inference-only kernel when a
    4-bit layer's input is a single token vector, which fails under autograd (a microbatch
    of one masked slot is one pad token). The added column is padding: attention 0, weight 0.
    """
    pad = torch.nn.functional.pad
    lengths = batch.attention_mask.sum(dim=1)  # (M,)
    if share_prefix:
        groups = _prefix_groups(batch.input_ids, lengths, size, tokens, share_prefix)
    else:
        order = (torch.argsort(lengths, descending=True, stable=True) if longest_first
                 else torch.arange(len(batch)))  # (M,)
        groups = _row_groups(order, lengths, size, tokens)
    for rows in groups:
        t = max(2, int(lengths[rows].max()))
        extra = max(0, t - batch.input_ids.shape[1])
        yield (pad(batch.input_ids[rows, :t], (0, extra)), pad(batch.attention_mask[rows, :t], (0, extra)),
               pad(batch.token_weights[rows, :t], (0, extra)), batch.advantages[rows])


def _row_groups(order: torch.Tensor, lengths: torch.Tensor, size: int, tokens: int) -> list[torch.Tensor]:
    """``order`` cut into consecutive groups of at most ``size`` rows and, with ``tokens`` > 0,
    at most ``tokens`` padded tokens (the group's rows times its longest row)."""
    groups, current, longest = [], [], 0
    for row in order.tolist():
        n = int(lengths[row])
        wider = max(longest, n)
        if current and (len(current) == size or (tokens and wider * (len(current) + 1) > tokens)):
            groups.append(torch.tensor(current))
            current, wider = [], n
        current.append(row)
        longest = wider
    return groups + ([torch.tensor(current)] if current else [])


def _prefix_groups(input_ids: torch.Tensor, lengths: torch.Tensor, size: int, tokens: int,
                   least: int) -> list[torch.Tensor]:
    """The rows in dictionary order of their tokens, so that rows which begin alike are
    neighbours (the K completions of a prompt, the rollouts of a question), cut into groups
    of at most ``size`` rows: a row joins the group before it when the tokens the group then
    encodes (:func:`_encoded_tokens`, a prefix of at least ``least`` tokens that every row
    shares counted once) are no more than the group's without it plus the row's own, and,
    with ``tokens`` > 0, no more than ``tokens``."""
    rows = [input_ids[r, :int(n)].tolist() for r, n in enumerate(lengths)]
    groups, current, shared, longest = [], [], 0, 0
    for r in sorted(range(len(rows)), key=rows.__getitem__):
        n = len(rows[r])
        if current:
            p, wider = min(shared, _common_prefix(rows[current[0]], rows[r])), max(longest, n)
            joined = _encoded_tokens(p, len(current) + 1, wider, least)
            if (len(current) < size and joined <= _encoded_tokens(shared, len(current), longest, least) + n
                    and not (tokens and joined > tokens)):
                current.append(r)
                shared, longest = p, wider
                continue
            groups.append(torch.tensor(current))
        current, shared, longest = [r], n, n
    return groups + ([torch.tensor(current)] if current else [])


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two rows share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _encoded_tokens(shared: int, rows: int, longest: int, least: int) -> int:
    """The tokens a microbatch of ``rows`` rows padded to ``longest`` encodes: its shared
    prefix once and the rest of every row when the prefix is at least ``least`` tokens long
    and there is more than one row (``Policy.token_logprobs`` with ``share_prefix``), else
    every row whole."""
    if rows > 1 and shared >= least:
        return shared + rows * (longest - shared)
    return rows * longest


# ---------------------------------------------------------------------------
# A learner: one adapter and its optimiser


@dataclass
class HeldBack:
    """A sub-agent half kept for the next step's update (``sub_staleness=1``), with pi_old's
    log-probs taken by the weights that sampled it."""

    half: SubHalf
    old_logprobs: list[torch.Tensor]


@dataclass
class Learner:
    """One adapter being trained: its policy, its optimiser and, for a one-step-stale
    sub-agent, the half it will train on next."""

    policy: object
    optimizer: torch.optim.Optimizer
    held_back: HeldBack | None = None


def make_learner(source, cfg: TrainConfig) -> Learner:
    """A policy loaded from ``source`` (the base, or a saved adapter) and its AdamW optimiser."""
    policy = load_policy(source, quantization=cfg.quantization, lora=cfg.lora,
                         sampling=SamplingSettings(cfg.temperature, cfg.top_p, cfg.max_new_tokens), seed=cfg.seed,
                         nf4_on_cpu=cfg.nf4_on_cpu, prefix_cache_mib=cfg.prefix_cache_mib, dtype=cfg.dtype)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=tuple(cfg.betas))
    return Learner(policy, optimizer)


def learner_update(name: str, learner: Learner, halves: list[MainHalf | SubHalf], cfg: TrainConfig,
                   step: int) -> dict:
    """A learner's update at ``step``: what the learner adds to ``clipped_update`` of one batch.

    * its learning rate at this step (``config.learning_rate``): ``cfg.sub_lr`` for a sub-agent
      with its own adapter where set, else ``cfg.lr``;
    * its halves' rows joined into one batch (two halves: the shared adapter, one token mean);
    * a frozen learner (``Layout.frozen``) computes the statistics without an optimiser step;
    * with ``cfg.sub_staleness=1``, the sub-agent's learner trains on the half it kept a step
      earlier instead of this one (docs/paper.md section 6: the authors' release trains the
      sub-agent one step off-policy, on the samples of the step before while new rollouts
      run). It keeps this step's half with its log-probs under the weights that sampled it
      (pi_old), so each step's rollouts come from weights that have not yet learned from the
      step before. At step 1 nothing is kept yet: the statistics are those of step 1's half,
      with no optimiser step (``trained`` false); the last step's half is never trained on,
      as when such a pipeline stops. The step's record then joins this step's rollout
      statistics (rewards, alignment) with the update statistics of the step before's half;
    * its statistics, as ``<name>/...``.
    """
    layout = LAYOUTS[cfg.variant]
    train, old_logprobs = name not in layout.frozen, None
    if cfg.sub_staleness and name == layout.sub_learner:
        (half,) = halves  # the stale mode is refused for a learner with two halves (config.py)
        kept = HeldBack(half, sampling_logprobs(learner.policy, half.batch, cfg))
        previous, learner.held_back = learner.held_back, kept
        if previous is None:
            train = False
        else:
            halves, old_logprobs = [previous.half], previous.old_logprobs
    own_lr = cfg.sub_lr if cfg.sub_lr and name == layout.sub_learner else cfg.lr  # sub_lr: mgrpo only (config.py)
    lr = learning_rate(own_lr, cfg.lr_schedule, step, cfg.steps, cfg.warmup_steps)
    for group in learner.optimizer.param_groups:
        group["lr"] = lr
    batches = [h.batch for h in halves]
    batch = batches[0] if len(batches) == 1 else concat_batches(batches, learner.policy.pad_id)
    stats = clipped_update(learner.policy, learner.optimizer, batch, cfg, train=train, old_logprobs=old_logprobs)
    return {**{f"{name}/{key}": v for key, v in stats.items()}, f"{name}/lr": lr}


# ---------------------------------------------------------------------------
# A learner's share of a step, and the whole step in one process


class Channel(Protocol):
    """How correct(M) goes from the main agent's half to the sub-agent's: a variable in one
    process (``DirectChannel``), the store in the two-process pipeline (``store.StoreChannel``)."""

    def send(self, step: int, episodes: list[Episode], main: MainHalf) -> None:
        """After the main agent's half: make its correct(M) available for ``step``."""

    def receive(self, step: int, episodes: list[Episode]) -> torch.Tensor:
        """For the sub-agent's half: the (B, K) correct(M) of ``step``."""


class DirectChannel:
    """correct(M) from the main agent's half to the sub-agent's, within one process."""

    def __init__(self):
        self.correct: torch.Tensor | None = None

    def send(self, step: int, episodes: list[Episode], main: MainHalf) -> None:
        self.correct = main.correct  # (B, K)

    def receive(self, step: int, episodes: list[Episode]) -> torch.Tensor:
        if self.correct is None:
            raise RuntimeError("the sub-agent's half needs correct(M): the main agent's learner takes its share first")
        return self.correct  # (B, K)


def learner_step(name: str, learner: Learner, episodes: list[Episode], cfg: TrainConfig, step: int,
                 channel: Channel, record_to: Path | None = None) -> tuple[list[MainHalf | SubHalf], dict]:
    """A learner's share of ``step``: the half of each agent it plays, then its update.

    The main agent's learner sends correct(M) through ``channel`` as soon as its half is
    computed; the sub-agent's learner receives it there (``DirectChannel`` or
    ``store.StoreChannel``). With ``record_to`` (a run directory) and ``step`` in
    ``cfg.record_steps``, the learner's trajectories of this step are written there for the
    rollout viewer (viewer.py). Returns the halves and the step's statistics: each half's,
    then the update's.
    """
    layout = LAYOUTS[cfg.variant]
    halves: list[MainHalf | SubHalf] = []
    if name == layout.main_learner:
        main = main_half(episodes, cfg, learner.policy)
        channel.send(step, episodes, main)
        halves.append(main)
    if name == layout.sub_learner:
        correct = channel.receive(step, episodes)  # (B, K) correct(M)
        halves.append(sub_half(episodes, correct, cfg, learner.policy, step))
    if record_to is not None and step in cfg.record_steps:
        trajectories = [t for half in halves for t in half_trajectories(half, episodes, cfg.rollouts, learner.policy)]
        write_record(record_to, learner_record(name, step, trajectories))
    stats = {key: v for half in halves for key, v in half.stats.items()}
    stats.update(learner_update(name, learner, halves, cfg, step))
    return halves, stats


def one_step(episodes: list[Episode], learners: dict[str, Learner], cfg: TrainConfig, step: int) -> dict:
    """Every learner's share of ``step`` in this process, from the step's episodes.

    ``learners`` maps the variant's learner names (``LAYOUTS[cfg.variant]``) to their
    state. The numbers are those of the two-process pipeline: the same function, with
    correct(M) passed in a variable instead of through the store.
    """
    main_first = sorted(learners, key=lambda name: name != LAYOUTS[cfg.variant].main_learner)
    channel, stats = DirectChannel(), {}
    for name in main_first:
        stats.update(learner_step(name, learners[name], episodes, cfg, step, channel)[1])
    return stats

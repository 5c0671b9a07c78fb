r"""Batch assembly: trajectories to token tensors and a loss mask (docs/paper.md sections 1, 4, 5).

Section 1: only the tokens an agent generated itself are trained on [release]. A
trajectory is stored as text segments marked ``prompt``, ``agent`` or ``env``
(episode.py); we encode every segment on its own and concatenate the ids, so that a
segment boundary is always a token boundary, and the loss mask is 1 exactly on the
tokens of ``agent`` segments. A one-hop main trajectory:

    segment text                                          source   its tokens' loss_mask
    <question>What is the country of Kaun?</question>\n   prompt   0 0 0 ... 0
    <delegate>What is the country of Kaun?</delegate>     agent    1 1 1 ... 1
    \n<result>Rokiora</result>\n                          env      0 0 0 ... 0
    <answer>Rokiora</answer>                              agent    1 1 1 ... 1

    ids        [ q q q ... q | d d d ... d | r r r ... r | a a a ... a ]   (T_traj,)
    loss_mask  [ 0 0 0 ... 0 | 1 1 1 ... 1 | 0 0 0 ... 0 | 1 1 1 ... 1 ]   (T_traj,)
                 prompt        agent         env           agent

The ``env`` segment of the main agent holds the sub-agent's returned result: text
another agent wrote, which the main agent only reads, so it is masked out of the main
agent's loss (the sub-agent is trained on it in its own trajectory, where it is
``agent`` text). A sub trajectory is the same with ``<task>`` as the prompt, tool
observations ``<obs>...</obs>`` as ``env``, and search / visit / return turns as ``agent``.

The mask marks the tokens themselves. A causal language model predicts token t from
the positions before it; ``policy.token_logprobs_from_logits`` puts log p(x_t | x_<t)
at position t (and 0 at position 0), so this mask applies to its output unshifted. The
first token is always prompt, so position 0 never counts.

Encoding segment by segment is what keeps the mask exact. A policy's turn is not encoded
from its text at all: it is the ids the policy drew (``episode.Segment.ids``), because a
tokenizer can split one text in several ways ("o" + "pe" drawn, "ope" when the text is
encoded again), and an update on the re-encoding would score a token the policy never
drew. The policy encodes its generation contexts with this same function
(``Policy.context_ids``), so the trained tokens are the sampled ones, in the very context
they were sampled in.

The sub-agent's N distinct trajectories are put into B * K * D slots by
``alignment.align_sub_trajectories`` (section 4). Its batch is either one row per slot
(``slot_batch``, via ``aligned_sub_batch``: the fixed shape) or each distinct trajectory
that fills a slot once, its tokens weighted by its slot count (``distinct_batch``): the
same loss and gradient from fewer rows.

What an agent finally trains on is a ``PolicyBatch``: rows of ids with one advantage
each and a float weight per token (w_t of Eq. 6: the loss mask, times the row's slot
weight or slot count), which is what the objective's token-level mean is weighted by.

Shape comments use the glossary's letters (docs/glossary.md): B questions, K rollouts,
D slots, N distinct trajectories, M rows of a batch, T tokens (the longest sequence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .alignment import Alignment, gather_slots
from .episode import Trajectory

TRAINED_SOURCE = "agent"
"""The segment source whose tokens the loss sees; "prompt" and "env" are masked out."""

Encoded = tuple[list[int], list[int]]
"""One encoded trajectory: (ids, loss_mask), two lists of the same length."""


def encode_trajectory(traj: Trajectory, encode: Callable[[str], list[int]]) -> Encoded:
    """Token ids of a trajectory and its loss mask (1 on the agent's own tokens).

    A segment that carries ids (a turn as the policy sampled it, ``episode.Segment.ids``) is
    taken as those ids; any other is encoded from its text, alone, so that its boundaries are
    token boundaries. A policy encodes its generation contexts with this same function, so a
    turn is scored on exactly the tokens it was sampled from and after.

    Args:
        traj: one agent's trajectory, as text segments (with ids where known).
        encode: text -> token ids, without special tokens. For a Hugging Face
            tokenizer: ``lambda s: tok(s, add_special_tokens=False)["input_ids"]``.

    Returns:
        (ids, loss_mask): two lists of length T_traj; loss_mask[t] is 1 when token t
        belongs to a segment of source "agent", else 0.
    """
    ids: list[int] = []
    loss_mask: list[int] = []
    for segment in traj.segments:
        piece = list(segment.ids) if segment.ids is not None else list(encode(segment.text))
        ids += piece
        loss_mask += [int(segment.source == TRAINED_SOURCE)] * len(piece)
    return ids, loss_mask


def collate(
    sequences: Sequence[Encoded], pad_id: int, max_len: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad M encoded sequences into one batch of M rows.

    Args:
        sequences: M pairs (ids, loss_mask), as from encode_trajectory.
        pad_id: the id written into padding positions (they get attention 0, loss 0).
        max_len: if given, a longer sequence is an error. We never truncate silently:
            a cut trajectory would train the agent on a turn without its end.

    Returns:
        input_ids: (M, T) long, T = the longest sequence (so T <= max_len).
        attention_mask: (M, T) long, 1 on real tokens, 0 on padding.
        loss_mask: (M, T) float, the sequences' loss masks, 0 on padding.
        With M = 0 all three are empty tensors of shape (0, 0).

    Raises:
        ValueError: a sequence is empty, its ids and mask differ in length, its mask is
            not 0/1, or it is longer than max_len (the message names its index).
    """
    for i, (ids, mask) in enumerate(sequences):
        _check_sequence(i, ids, mask, max_len)
    m = len(sequences)
    t = max((len(ids) for ids, _ in sequences), default=0)
    input_ids = torch.full((m, t), pad_id, dtype=torch.long)  # (M, T)
    attention_mask = torch.zeros((m, t), dtype=torch.long)  # (M, T)
    loss_mask = torch.zeros((m, t), dtype=torch.float)  # (M, T)
    for i, (ids, mask) in enumerate(sequences):
        length = len(ids)
        input_ids[i, :length] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, :length] = 1
        loss_mask[i, :length] = torch.tensor(mask, dtype=torch.float)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def aligned_sub_batch(
    sub_sequences: Sequence[Encoded],
    alignment: Alignment,
    pad_id: int,
    max_len: int | None = None,
) -> dict[str, torch.Tensor]:
    """The sub-agent's fixed-size batch: one row per slot, in slot order.

    Row r is slot (b, k, d) with r = (b * K + k) * D + d, i.e. alignment.source
    flattened. A slot holding trajectory i is a copy of sequence i (a duplicated
    trajectory appears in several identical rows). A masked slot (its question has no
    sub trajectory at all) is a row of padding that carries no loss.

    Args:
        sub_sequences: N encoded distinct sub trajectories, flat in (question,
            rollout, call) order: the numbering alignment.source refers to.
        alignment: from align_sub_trajectories on the same trajectories' counts.
        pad_id, max_len: as in collate. Only sequences that reach a slot are
            checked against max_len; a dropped trajectory is never trained on.

    Returns:
        input_ids: (B*K*D, T) long.
        attention_mask: (B*K*D, T) long.
        loss_mask: (B*K*D, T) float; all zeros on masked rows.
        slot_weight: (B*K*D,) float, 1 for a real slot, 0 for a masked one.
        source: (B*K*D,) long, the trajectory index in each row, -1 if masked
            (gather per-trajectory values such as advantages with the module
            function ``mgrpo_ref.alignment.gather_slots(values, alignment).reshape(-1)``).
        T is the longest sequence that reaches a slot (1 if none does).
    """
    if len(sub_sequences) != alignment.n_distinct:
        raise ValueError(
            f"got {len(sub_sequences)} sub sequences but the alignment has "
            f"{alignment.n_distinct} distinct trajectories"
        )
    source = alignment.source.reshape(-1)  # (B*K*D,)
    for i in sorted(set(source[source >= 0].tolist())):
        ids, mask = sub_sequences[i]
        _check_sequence(i, ids, mask, max_len, what="sub trajectory")
    # A masked slot is one pad token with attention 1 and loss 0. In a row whose
    # attention mask is all zeros every attention score is masked, and a softmax over
    # only -inf is NaN (some kernels return 0 instead; we need not care which runs):
    # a NaN would reach the loss through 0 * NaN = NaN. One attended token avoids it.
    placeholder: Encoded = ([pad_id], [0])
    rows = [sub_sequences[i] if i >= 0 else placeholder for i in source.tolist()]
    batch = collate(rows, pad_id)  # each (B*K*D, T)
    batch["slot_weight"] = alignment.filled.reshape(-1).to(torch.float)  # (B*K*D,)
    batch["source"] = source.clone()  # (B*K*D,)
    return batch


@dataclass
class PolicyBatch:
    """The rows one agent trains on, with everything the objective weighs them by."""

    input_ids: torch.Tensor
    """(M, T) long, right-padded."""
    attention_mask: torch.Tensor
    """(M, T) long, 1 on real tokens."""
    token_weights: torch.Tensor
    """(M, T) float: w_t of Eq. (6); 0 off the agent's own tokens, on padding and on masked slots."""
    advantages: torch.Tensor
    """(M,) float: the advantage of each row's trajectory."""

    def __post_init__(self):
        m, t = self.input_ids.shape
        for name in ("attention_mask", "token_weights"):
            if getattr(self, name).shape != (m, t):
                raise ValueError(f"{name} must be (M, T) = {(m, t)}, got {tuple(getattr(self, name).shape)}")
        if self.advantages.shape != (m,):
            raise ValueError(f"advantages must be (M,) = ({m},), got {tuple(self.advantages.shape)}")

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def trajectory_batch(sequences: Sequence[Encoded], advantages: torch.Tensor, pad_id: int) -> PolicyBatch:
    """One row per trajectory (the main agent's batch): weights are the loss masks. With no
    trajectory at all, one row of padding that weighs 0."""
    if not sequences:
        return _padding_row(pad_id)
    batch = collate(sequences, pad_id)  # each (M, T)
    return PolicyBatch(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], advantages)


def _padding_row(pad_id: int) -> PolicyBatch:
    """A batch with nothing to learn from: one pad token, weight 0, advantage 0."""
    batch = collate([([pad_id], [0])], pad_id)
    return PolicyBatch(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], torch.zeros(1))


def slot_batch(sub_sequences: Sequence[Encoded], advantages: torch.Tensor, alignment: Alignment,
               pad_id: int) -> PolicyBatch:
    """One row per aligned slot (the sub-agent's batch, B*K*D rows).

    ``advantages`` (N,) are per distinct trajectory; each slot gets a copy of its
    trajectory's, so alignment never moves a group's baseline. A masked slot weighs 0.
    """
    slots = aligned_sub_batch(sub_sequences, alignment, pad_id)  # (B*K*D, T)
    slot_advantages = gather_slots(advantages, alignment).flatten()  # (B*K*D,)
    weights = slots["loss_mask"] * slots["slot_weight"][:, None]  # (B*K*D, T)
    return PolicyBatch(slots["input_ids"], slots["attention_mask"], weights, slot_advantages)


def distinct_batch(sub_sequences: Sequence[Encoded], advantages: torch.Tensor, alignment: Alignment,
                   pad_id: int) -> PolicyBatch:
    """One row per distinct trajectory that fills a slot, weighted by how many slots it fills.

    The slot batch's loss and gradient, from fewer rows. Under the token-level mean of
    Eq. (6), a trajectory that fills c slots puts c copies of its terms in the numerator and
    c copies of its tokens in the denominator; a row holding it once with every token
    weighted c contributes exactly the same. So duplicating a trajectory is weighting it: a
    dropped trajectory (c = 0) and a masked slot are simply no row here, and the batch has
    at most min(N, B*K*D) rows instead of B*K*D.
    """
    copies = alignment.copies  # (N,)
    kept = copies.nonzero().flatten()  # (M,) the trajectories that fill a slot
    if kept.numel() == 0:  # no sub trajectory reached a slot
        return _padding_row(pad_id)
    batch = collate([sub_sequences[i] for i in kept.tolist()], pad_id)  # each (M, T)
    weights = batch["loss_mask"] * copies[kept].to(torch.float)[:, None]  # (M, T)
    return PolicyBatch(batch["input_ids"], batch["attention_mask"], weights, advantages[kept])


def batch_rows(batch: PolicyBatch, rows: torch.Tensor) -> PolicyBatch:
    """The batch's ``rows`` (indices, or a bool mask over its rows), in that order."""
    return PolicyBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.token_weights[rows],
                       batch.advantages[rows])


def concat_batches(batches: Sequence[PolicyBatch], pad_id: int) -> PolicyBatch:
    """Stack batches of different T, right-padding to the longest (one adapter trained on
    both roles' rows: the ``shared`` variant)."""
    t = max(b.input_ids.shape[1] for b in batches)

    def pad(x, value):
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

    return PolicyBatch(torch.cat([pad(b.input_ids, pad_id) for b in batches]),
                       torch.cat([pad(b.attention_mask, 0) for b in batches]),
                       torch.cat([pad(b.token_weights, 0.0) for b in batches]),
                       torch.cat([b.advantages for b in batches]))


# ----------------------------------------------------------------------------
# helpers


def _check_sequence(
    index: int, ids: Sequence[int], mask: Sequence[int], max_len: int | None,
    what: str = "sequence",
) -> None:
    if len(ids) == 0:
        # An empty row would have no attended position (NaN in attention); every
        # trajectory starts with a prompt, so an empty one is a bug upstream.
        raise ValueError(f"{what} {index} is empty")
    if len(ids) != len(mask):
        raise ValueError(
            f"{what} {index}: {len(ids)} ids but {len(mask)} loss-mask entries"
        )
    if any(m not in (0, 1) for m in mask):
        raise ValueError(f"{what} {index}: loss mask entries must be 0 or 1")
    if max_len is not None and len(ids) > max_len:
        raise ValueError(
            f"{what} {index} has {len(ids)} tokens, more than max_len = {max_len}; "
            "raise max_len or shorten the episode limits (we do not truncate silently)"
        )

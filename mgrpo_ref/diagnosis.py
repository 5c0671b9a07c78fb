"""What moves before a run collapses, read from the run's own files.

A collapsed run ends far below its own best held-out accuracy (compare_tables.COLLAPSE_DROP). In
the comparison every collapse was one role losing its output format. This module reads a
run's ``metrics.jsonl`` and its recorded steps (``record_steps``, written by viewer.py) and
answers three questions a reader of docs/results.md asks:

* **When did a role lose its format?** ``format_loss_step``: the first step from which the
  role's format validity on its training rollouts stays below a threshold to the run's end.
* **What moved in the steps before?** ``steps_before``: per step and role, the gradient norm
  before clipping (against ``max_grad_norm``), the sampled tokens' mean negative log-prob
  (``sampled_nll``; at temperature 1 an estimate of the policy's entropy per token), the
  format validity and the mean reward. With one epoch on fresh rollouts the ratio is exactly
  1 and the clip never acts (step.clipped_update), so the gradient clip is the only brake.
* **Which tokens carry a step's gradient?** ``token_gradient_weights``: the loss gives token t
  of a trajectory the weight w A / N (w its slot count, A its advantage), and the gradient of
  log p(x_t) at the logits is (e_x - p), whose norm lies between 1 - p(x_t) and
  sqrt(2) (1 - p(x_t)). So |w A| (1 - p(x_t)) sizes each token's push on the logits to within
  a factor sqrt(2): a confident token (p near 1) carries almost nothing, whatever its
  advantage; a surprising one carries |w A|. ``heaviest_tokens`` sums it by token text over a
  recorded step.
"""

from __future__ import annotations

import math
from collections import defaultdict


def format_loss_step(metrics: list[dict], role: str, threshold: float = 0.8) -> int | None:
    """The first training step from which ``role``'s format validity stays below
    ``threshold`` to the last step logged, or None if it ends at or above it."""
    steps = [(m["step"], m[f"{role}/format_valid"]) for m in metrics
             if m.get("step", 0) >= 1 and m.get(f"{role}/format_valid") is not None]
    lost = None
    for step, valid in steps:
        if valid < threshold:
            lost = step if lost is None else lost
        else:
            lost = None
    return lost


STEP_KEYS = ("grad_norm", "sampled_nll", "format_valid", "reward_mean")
"""The per-role metrics ``steps_before`` collects."""


def steps_before(metrics: list[dict], step: int, roles: tuple[str, ...], window: int = 8,
                 after: int = 2) -> list[dict]:
    """Each logged training step from ``step - window`` to ``step + after``: per role its
    ``STEP_KEYS`` (None where the run did not log one)."""
    rows = []
    for m in metrics:
        if m.get("step", 0) >= 1 and step - window <= m["step"] <= step + after and "time/step_s" in m:
            rows.append({"step": m["step"], **{f"{role}/{key}": m.get(f"{role}/{key}") for role in roles
                                               for key in STEP_KEYS}})
    return rows


def token_gradient_weights(trajectory: dict) -> list[float]:
    """|w A| (1 - p(x_t)) for each token of a recorded trajectory (0 where the loss mask is 0):
    the size of the token's gradient at the logits, to within sqrt(2), up to the batch's 1/N.
    The trajectory needs its per-token ``logp`` (recorded since diagnosis.py was added)."""
    if "logp" not in trajectory:
        raise ValueError("the record has no per-token logp: record the steps again with this version")
    scale = abs(trajectory["copies"] * trajectory["advantage"])
    return [scale * (1.0 - math.exp(lp)) if mask else 0.0
            for lp, mask in zip(trajectory["logp"], trajectory["loss_mask"])]


def heaviest_tokens(trajectories: list[dict], n: int = 10) -> list[dict]:
    """The ``n`` token texts that carry most of the step's gradient weight
    (``token_gradient_weights``, summed over every occurrence): each with its share of the
    step's total, its trained occurrences, their mean probability, and the part of its weight
    that came from trajectories with A < 0 (their probability pushed down)."""
    weight, count, prob, negative = defaultdict(float), defaultdict(int), defaultdict(float), defaultdict(float)
    for t in trajectories:
        for token, w, lp, mask in zip(t["tokens"], token_gradient_weights(t), t["logp"], t["loss_mask"]):
            if mask:
                weight[token] += w
                count[token] += 1
                prob[token] += math.exp(lp)
                negative[token] += w if t["advantage"] < 0 else 0.0
    total = sum(weight.values())
    ranked = sorted(weight, key=weight.get, reverse=True)[:n]
    return [{"token": token, "share": weight[token] / total if total else 0.0, "count": count[token],
             "mean_p": prob[token] / count[token],
             "from_negative": negative[token] / weight[token] if weight[token] else 0.0} for token in ranked]


NEVER_SAMPLED = 1e-3
"""A trained token below this probability under the policy that sampled its trajectory is
one sampling at temperature 1 almost never draws: many of them mean that the trained tokens
are not the sampled ones (the text encoded again differently)."""


def gradient_split(trajectories: list[dict]) -> dict:
    """How a recorded step's gradient weight splits: the share from trajectories with A < 0,
    the share carried by tokens the policy gave less than 0.5; and the share of its trained
    tokens (counted, not weighted) below ``NEVER_SAMPLED``."""
    total = negative = unlikely = 0.0
    trained = rare = 0
    for t in trajectories:
        for w, lp, mask in zip(token_gradient_weights(t), t["logp"], t["loss_mask"]):
            total += w
            negative += w if t["advantage"] < 0 else 0.0
            unlikely += w if math.exp(lp) < 0.5 else 0.0
            trained += bool(mask)
            rare += bool(mask) and math.exp(lp) < NEVER_SAMPLED
    return {"total": total, "from_negative": negative / total if total else 0.0,
            "on_unlikely_tokens": unlikely / total if total else 0.0,
            "never_sampled_tokens": rare / trained if trained else 0.0}

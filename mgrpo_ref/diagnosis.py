"""What moves before a run collapses, read from the run's own files.

A collapsed run ends far below its own best held-out accuracy (compare_tables.COLLAPSE_DROP). In
the 60-step comparison every collapse was one role losing its output format. This module reads a
run's ``metrics.jsonl`` and its recorded steps (``record_steps``, written by viewer.py) and
answers the questions a reader of docs/results.md asks:

* **When did a role lose its format?** ``format_loss_step``: the first step from which the
  role's format validity on its training rollouts stays below a threshold to the run's end.
* **What moved in the steps before?** ``steps_before``: per step and role, the gradient norm
  before clipping (against ``max_grad_norm``), the sampled tokens' mean negative log-prob
  (``sampled_nll``; at temperature 1 an estimate of the policy's entropy per token), the
  format validity and the mean reward. With one epoch on fresh rollouts the ratio is exactly
  1 and the clip never acts (step.clipped_update), so the gradient clip is the only brake.
* **When did the held-out accuracy fall, and what came first?** ``collapse_eval``: the first
  evaluation more than a drop below the best one before it; ``collapse_timeline``: from a
  comparison run's per-step curves alone (``compare.curves``), that evaluation, and for each
  role, over the training steps after the best evaluation, the first update past the gradient
  clip and the first step its format validity dipped below the threshold (one step is enough:
  a dip, not a loss), so the order of the two can be read in every collapsed run.
* **Did the ratio move?** ``ratio_range``: the extremes over a run of a learner's mean
  importance ratio and the share of its tokens the PPO clip cut (``clip_frac``), as logged.
* **How did a whole trial's runs move?** ``step_series`` keeps a run's per-step records small
  enough to commit for every run of a trial; ``window_means`` averages them over windows of
  steps.
* **Which tokens carry a step's gradient?** ``token_gradient_weights``: the loss gives token t
  of a trajectory the weight w A / N (w its slot count, A its advantage), and the gradient of
  log p(x_t) at the logits is (e_x - p), whose norm lies between 1 - p(x_t) and
  sqrt(2) (1 - p(x_t)). So |w A| (1 - p(x_t)) sizes each token's push on the logits to within
  a factor sqrt(2): a confident token (p near 1) carries almost nothing, whatever its
  advantage; a surprising one carries |w A|. ``heaviest_tokens`` sums it by token text over a
  recorded step.

A run logs what concerns a role's rollouts under the role (``main/format_valid``, and the
single agent's under ``main`` too) and what concerns an update under its learner
(``shared/grad_norm`` when one adapter plays both roles, ``single/grad_norm``): ``logged_roles``
maps one onto the other, and the functions below report both under the role.
"""

from __future__ import annotations

import math
from collections import defaultdict


FORMAT_THRESHOLD = 0.8
"""Format validity below which a role's training rollouts count as having lost their format."""

LEARNER_KEYS = ("grad_norm", "sampled_nll", "mean_ratio", "clip_frac")
"""What a run logs per learner (``<learner>/<key>``); the rest (format validity, reward) per role."""


def logged_roles(layout) -> dict[str, str]:
    """A variant's ``step.Layout`` as its metrics name it: role -> learner, the single agent's
    role logged as ``main`` (``{"main": "single"}``; ``shared``: both roles -> ``shared``)."""
    return {("main" if role == "single" else role): learner for role, learner in layout.learners.items()}


def _logged(m: dict, role: str, learner: str, key: str):
    """One metric of one logged step, under the role or its learner as the run logs it."""
    return m.get(f"{learner if key in LEARNER_KEYS else role}/{key}")


def format_loss_step(metrics: list[dict], role: str, threshold: float = FORMAT_THRESHOLD) -> int | None:
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


def collapse_eval(evals: dict[int, float], drop: float) -> tuple[int, int] | None:
    """(the step of the best evaluation so far, the step of the first evaluation that lies more
    than ``drop`` below it), accuracies and ``drop`` in one unit; None if none fell that far."""
    best = None
    for step in sorted(evals):
        if best is not None and round(evals[best] - evals[step], 9) > drop:
            return best, step
        if best is None or evals[step] > evals[best]:
            best = step
    return None


def _first(steps: list[int], values: list, passes, after: int = 0) -> tuple[int, float] | None:
    """The first (step, value) after step ``after`` whose value passes the test."""
    return next(((s, v) for s, v in zip(steps, values) if s > after and v is not None and passes(v)), None)


def adapter_norms(curves: dict, role: str) -> list:
    """Per training step, the gradient norm (before clipping) of the adapter that plays ``role``
    in a run's curves (``compare.curves``): the sub learner's own for ``sub`` in a team with two
    adapters, else ``grad_norm``, the one adapter of ``single_agent`` and ``shared`` (whose
    ``sub_grad_norm`` is all None) or the main learner's."""
    own = role == "sub" and any(n is not None for n in curves["sub_grad_norm"])
    return curves["sub_grad_norm"] if own else curves["grad_norm"]


def collapse_timeline(curves: dict, clip: float, threshold: float = FORMAT_THRESHOLD, drop: float = 0.2) -> dict:
    """What a run's per-step curves (``compare.curves``) say about when it fell: ``best`` and
    ``fell`` (step, held-out greedy accuracy) from ``collapse_eval``, or ``fell`` None; and for
    each role that has rollouts (``main``, and ``sub`` in a team), over the training steps after
    the best evaluation only (an evaluation at step s reads the adapters after update s; what
    happened before the best did not stop the run from reaching it): ``past_clip``, the first
    step the gradient norm of the adapter playing the role went past ``clip``, with that norm,
    and ``format_below``, the first step its format validity dipped below ``threshold``, with
    that validity (each None if it never did); the norms are ``adapter_norms``."""
    evals = dict(zip(curves["eval_step"], curves["eval_accuracy"]))
    point = collapse_eval(evals, drop)
    best = point[0] if point else max(evals, key=evals.get)
    roles = {}
    for role in ("main", "sub"):
        valid = curves[f"{role}_format_valid"]
        if all(v is None for v in valid):
            continue
        roles[role] = {"past_clip": _first(curves["step"], adapter_norms(curves, role), lambda n: n > clip, best),
                       "format_below": _first(curves["step"], valid, lambda v: v < threshold, best)}
    return {"best": (best, evals[best]), "fell": (point[1], evals[point[1]]) if point else None, "roles": roles,
            "order": _order(roles)}


def _order(roles: dict) -> str:
    """Which came first in the role whose format dipped first (``main`` on a tie): the update
    past the clip or the dip (``clip first``, ``same step``, ``format dipped first``, ``format
    dipped, no update past the clip``), or ``format kept`` if no role's dipped."""
    dipped = [(r["format_below"][0], role) for role, r in roles.items() if r["format_below"]]
    if not dipped:
        return "format kept"
    step, role = min(dipped)
    clipped = roles[role]["past_clip"]
    if clipped is None:
        return "format dipped, no update past the clip"
    return "clip first" if clipped[0] < step else "same step" if clipped[0] == step else "format dipped first"


def ratio_range(metrics: list[dict], learner: str) -> dict | None:
    """Over a run's logged training steps, the lowest and highest mean importance ratio of
    ``learner``'s tokens and the highest share of them the PPO clip cut (steps that logged no
    clip fraction count 0); None if the run logged no ratio for it."""
    rows = [m for m in metrics if m.get(f"{learner}/mean_ratio") is not None]
    if not rows:
        return None
    ratios = [m[f"{learner}/mean_ratio"] for m in rows]
    return {"steps": len(rows), "min_ratio": min(ratios), "max_ratio": max(ratios),
            "max_clip_frac": max(m.get(f"{learner}/clip_frac") or 0.0 for m in rows)}


STEP_KEYS = ("grad_norm", "sampled_nll", "format_valid", "reward_mean")
"""The metrics ``steps_before`` collects per role."""


SERIES_KEYS = STEP_KEYS + ("mean_ratio", "clip_frac")
"""The metrics ``step_series`` keeps per role: ``STEP_KEYS``, the mean importance ratio and the
share of tokens the PPO clip cut."""


def step_series(metrics: list[dict], roles: dict[str, str], digits: int = 4) -> dict[str, list]:
    """A run's records as series: ``step`` (each logged training step), per role of ``roles``
    (role -> learner, ``logged_roles``) each of ``SERIES_KEYS`` at those steps
    (``<role>/<key>``, read under the role or its learner; None where not logged), and its
    held-out ``eval_step`` and greedy ``eval_accuracy``; values rounded to ``digits``
    decimals, so that a whole trial's runs fit in one small file."""
    trained = [m for m in metrics if m.get("step", 0) >= 1 and "time/step_s" in m]
    evals = [m for m in metrics if "eval/accuracy" in m]

    def rounded(value):
        return None if value is None else round(value, digits)

    return {"step": [m["step"] for m in trained],
            **{f"{role}/{key}": [rounded(_logged(m, role, learner, key)) for m in trained]
               for role, learner in roles.items() for key in SERIES_KEYS},
            "eval_step": [m["step"] for m in evals], "eval_accuracy": [rounded(m["eval/accuracy"]) for m in evals]}


def window_means(steps: list[int], values: list, width: int) -> dict[int, float]:
    """The mean of ``values`` over consecutive windows of ``width`` steps (1..width,
    width+1..2 width, ...), keyed by each window's first step; None values are left out, and
    a last window the run did not fill is the mean of the steps it has."""
    sums: dict[int, list[float]] = {}
    for step, value in zip(steps, values):
        if value is not None:
            sums.setdefault((step - 1) // width * width + 1, []).append(value)
    return {first: sum(v) / len(v) for first, v in sorted(sums.items())}


def steps_before(metrics: list[dict], step: int, roles: dict[str, str], window: int = 8,
                 after: int = 2) -> list[dict]:
    """Each logged training step from ``step - window`` to ``step + after``: per role of
    ``roles`` (role -> learner, ``logged_roles``) its ``STEP_KEYS`` (None where the run did not
    log one)."""
    rows = []
    for m in metrics:
        if m.get("step", 0) >= 1 and step - window <= m["step"] <= step + after and "time/step_s" in m:
            rows.append({"step": m["step"], **{f"{role}/{key}": _logged(m, role, learner, key)
                                               for role, learner in roles.items() for key in STEP_KEYS}})
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

"""What the notebooks use to teach: the package's lines beside each equation, and exercise checks.

`show_code` prints the lines of a package function that compute an equation, read from the
package itself, so that a notebook never carries a hand-made copy of the algorithm. Input
checks (`_check_*` calls, `if ...: raise` blocks) and the docstring are left out: they guard
the math but are not part of it.

`check` runs a learner's own implementation of a piece of the method against the package on
random inputs and prints one line: correct, not written yet, or what is wrong on which input.
Where a wrong answer matches a mistake people often make (the sample standard deviation, a
symmetric clip, ...), the line names the mistake. The exercises:

    "eq1"        main_advantages(rewards)              Eq. (1), rewards (B, K) -> (B, K)
    "eq2"        sub_advantages(rewards, group_ids)    Eq. (2), (N,), (N,) -> (N,)
    "alignment"  align(counts, d_max, rng)             the slot rules of docs/paper.md section 4
    "clipped"    loss(logp, logp_old, advantages, weights)   Eqs. (3), (4), (6) with beta = 0
    "k3"         k3(logp, logp_ref)                    Eq. (5), elementwise
"""

from __future__ import annotations

import ast
import inspect
import random
import re
import textwrap
from dataclasses import dataclass
from typing import Callable

import torch

from .advantages import main_advantages, sub_advantages
from .alignment import align_sub_trajectories
from .objective import clipped_surrogate_loss, k3_kl

CASES = 20  # random inputs per check


# ----------------------------------------------------------------------------
# The package's lines beside an equation


def code_lines(function: Callable, equation: str | None = None) -> str:
    """The source lines of `function` that compute, without its docstring and input checks.

    With `equation` (for example "3"), only the statements after the previous equation's tag
    up to the statement tagged ``# Eq. (3)``: the lines of that one equation.
    """
    lines, first = inspect.getsourcelines(function)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    body = tree.body[0].body
    kept = [s for s in body if not (_is_docstring(s) or _is_input_check(s))]
    if equation is not None:
        tag = f"Eq. ({equation})"
        tagged = [i for i, s in enumerate(kept) if tag in _text(lines, s)]
        if not tagged:
            raise ValueError(f"{function.__name__} has no line tagged # {tag}")
        previous = [i for i, s in enumerate(kept[:tagged[0]]) if re.search(r"#.*\bEq\. \(", _text(lines, s))]
        kept = kept[(previous[-1] + 1 if previous else 0):tagged[-1] + 1]
    shown = []
    for statement in kept:
        start = statement.lineno - 1
        while start > 0 and lines[start - 1].strip().startswith("#"):
            start -= 1  # the comment that introduces the statement
        shown += [(first + i, lines[i]) for i in range(start, statement.end_lineno)]
    shown = sorted(dict(shown).items())
    width = len(str(shown[-1][0]))
    body_text = textwrap.dedent("".join(line for _, line in shown))
    numbered = [f"{n:>{width}}  {line}" for (n, _), line in zip(shown, body_text.splitlines())]
    where = f"{inspect.getsourcefile(function).rsplit('mgrpo_ref/', 1)[-1]}"
    return f"# mgrpo_ref/{where}, {function.__name__}\n" + "\n".join(numbered)


def show_code(function: Callable, equation: str | None = None) -> None:
    """Print `code_lines(function, equation)`, with the package file's line numbers."""
    print(code_lines(function, equation))


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


def _is_input_check(statement: ast.stmt) -> bool:
    """A call to a `_check...` or `_validate` helper, or an `if` whose body only raises."""
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        name = getattr(statement.value.func, "id", getattr(statement.value.func, "attr", ""))
        return name.startswith("_check") or name == "_validate"
    return isinstance(statement, ast.If) and all(isinstance(s, ast.Raise) for s in statement.body) \
        and not statement.orelse


def _text(lines: list[str], statement: ast.stmt) -> str:
    return "".join(lines[statement.lineno - 1:statement.end_lineno])


# ----------------------------------------------------------------------------
# Exercise checks


@dataclass(frozen=True)
class Mistake:
    """A wrong implementation people often write, and what to tell them when theirs matches it."""

    function: Callable
    advice: str


def check(exercise: str, candidate: Callable, cases: int = CASES, seed: int = 0) -> bool:
    """Run `candidate` against the package on random inputs; print one line; True when correct."""
    if exercise not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}; one of {sorted(EXERCISES)}")
    verdict = EXERCISES[exercise](candidate, cases, torch.Generator().manual_seed(seed))
    print(verdict or f"correct: your function agrees with the package on {cases} random inputs")
    return verdict is None


def _compare(candidate, reference, inputs, mistakes, describe, atol=1e-4, gradient_of=None) -> str | None:
    """The first input on which `candidate` differs from `reference`, said in one line (None: none)."""
    for n, args in enumerate(inputs, start=1):
        try:
            yours = candidate(*_copies(args))
        except NotImplementedError:
            return "not written yet: fill in the function above, then run this cell again"
        except Exception as error:  # the learner's code: any failure is reported, not raised
            return f"input {n} of {len(inputs)} ({describe(args)}): your function raised " \
                   f"{type(error).__name__}: {error}"
        expected = reference(*_copies(args))
        problem = _difference(yours, expected, atol)
        if problem is not None:
            for mistake in mistakes:  # a known mistake that gives a different value here, and yours
                wrong = mistake.function(*_copies(args))
                if _difference(wrong, expected, atol) is not None and _difference(yours, wrong, atol) is None:
                    return f"input {n} of {len(inputs)} ({describe(args)}): {mistake.advice}"
        elif gradient_of is not None:
            problem = _gradient_difference(candidate, reference, args, gradient_of, atol)
        if problem is not None:
            return f"input {n} of {len(inputs)} ({describe(args)}): {problem}"
    return None


def _difference(yours, expected: torch.Tensor, atol: float) -> str | None:
    if yours is None:
        return "your function returned None: return the result"
    yours = torch.as_tensor(yours).detach().to(expected.dtype) if not isinstance(yours, torch.Tensor) \
        else yours.detach()
    expected = expected.detach()
    if yours.shape != expected.shape:
        return f"shape {tuple(yours.shape)} where the package gives {tuple(expected.shape)}"
    wrong = ~torch.isclose(yours.to(expected.dtype), expected, atol=atol, rtol=0)
    if wrong.any():
        at = tuple(int(i) for i in wrong.nonzero()[0]) if expected.ndim else ()
        where = f" at index {at}" if at else ""
        return f"yours is {yours[at].item():.4f}{where}, the package's {expected[at].item():.4f}"
    return None


def _gradient_difference(candidate, reference, args, gradient_of: int, atol: float) -> str | None:
    grads = []
    for function in (candidate, reference):
        copied = list(_copies(args))
        copied[gradient_of] = copied[gradient_of].clone().requires_grad_(True)
        value = function(*copied)
        if not value.requires_grad:
            return "the value is right but it carries no gradient: keep logp in the graph"
        (grad,) = torch.autograd.grad(value, copied[gradient_of])
        grads.append(grad)
    if not torch.allclose(grads[0], grads[1], atol=atol, rtol=0):
        return "the value is right but its gradient is not: the ratio must keep its gradient " \
               "through logp (pi_old is the constant)"
    return None


def _copies(args: tuple) -> tuple:
    """Fresh copies of tensor inputs, so that a function editing its input in place changes nothing."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


# Eq. (1) --------------------------------------------------------------------


def _eq1(candidate, cases, generator) -> str | None:
    inputs = []
    for n in range(cases):
        b = int(torch.randint(1, 6, (1,), generator=generator))
        k = int(torch.randint(2, 9, (1,), generator=generator))
        levels = torch.tensor([0.0, 0.1, 1.0])
        rewards = levels[torch.randint(0, 3, (b, k), generator=generator)]  # (B, K) the release's values
        if n % 3 == 0:
            rewards[0] = levels[1]  # an equal-reward group
        if n % 4 == 1:
            rewards = torch.rand(b, k, generator=generator)  # any real rewards
        inputs.append((rewards,))
    mistakes = [
        Mistake(_sample_std_advantages,
                "you divided by the sample standard deviation (K - 1): Eq. (1) uses the population "
                "one, divide by K"),
        Mistake(lambda r: (r - r.mean()) / (r.std(correction=0) + 1e-6),
                "you normalised over the whole batch: each row, the K rollouts of one question, is its own group"),
        Mistake(lambda r: (r - r.mean(1, keepdim=True)) / (r.std(1, correction=0, keepdim=True) + 1e-6),
                "an equal-reward group must give exactly 0: in floating point its std is not exactly 0, "
                "so compare the rewards themselves"),
    ]
    return _compare(candidate, main_advantages, inputs, mistakes, lambda a: f"rewards {_short(a[0])}")


def _sample_std_advantages(rewards: torch.Tensor) -> torch.Tensor:
    centred = rewards - rewards.mean(1, keepdim=True)
    advantages = centred / (rewards.std(1, keepdim=True) + 1e-6)
    return advantages.masked_fill((rewards == rewards[:, :1]).all(1, keepdim=True), 0.0)


# Eq. (2) --------------------------------------------------------------------


def _eq2(candidate, cases, generator) -> str | None:
    inputs = []
    for n in range(cases):
        size = int(torch.randint(1, 16, (1,), generator=generator))
        ids = torch.tensor([3, 8, 11, 40])[torch.randint(0, 4, (size,), generator=generator)]  # not 0..G-1
        rewards = torch.tensor([0.0, 0.1, 0.5, 0.6, 1.0])[torch.randint(0, 5, (size,), generator=generator)]
        if n % 3 == 0:
            rewards[ids == ids[0]] = 0.6  # an equal-reward group
        inputs.append((rewards, ids))
    mistakes = [
        Mistake(lambda r, g: (r - r.mean()) / (r.std(correction=0) + 1e-6),
                "you normalised over all sub trajectories: the group of a trajectory is the "
                "trajectories of the same question (the same id)"),
        Mistake(_sub_without_equal_groups,
                "an equal-reward group must give exactly 0: its std is not exactly 0 in floating "
                "point, so compare each group's largest and smallest reward"),
    ]
    return _compare(candidate, sub_advantages, inputs, mistakes,
                    lambda a: f"rewards {_short(a[0])}, group_ids {_short(a[1])}")


def _sub_without_equal_groups(rewards: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    _, inverse = torch.unique(ids, return_inverse=True)
    size = torch.bincount(inverse).float()
    mean = torch.zeros(len(size)).index_add_(0, inverse, rewards) / size
    centred = rewards - mean[inverse]
    std = (torch.zeros(len(size)).index_add_(0, inverse, centred**2) / size).sqrt()
    return centred / (std[inverse] + 1e-6)


# The slot rules of alignment -------------------------------------------------


def _alignment(candidate, cases, generator) -> str | None:
    for n in range(1, cases + 1):
        b = int(torch.randint(1, 4, (1,), generator=generator))
        k = int(torch.randint(1, 5, (1,), generator=generator))
        d_max = int(torch.randint(1, 5, (1,), generator=generator))
        counts = torch.randint(0, 7, (b, k), generator=generator)
        counts[torch.rand(b, k, generator=generator) < 0.3] = 0  # some rollouts make no call
        if n % 4 == 0:
            counts[0] = 0  # a question without any sub trajectory
        counts = counts.tolist()
        where = f"input {n} of {cases} (counts {counts}, d_max {d_max})"
        try:
            source = candidate(counts, d_max, random.Random(n))
        except NotImplementedError:
            return "not written yet: fill in the function above, then run this cell again"
        except Exception as error:
            return f"{where}: your function raised {type(error).__name__}: {error}"
        if source is None:
            return "your function returned None: return the (B, K, D) slots"
        source = source.tolist() if isinstance(source, torch.Tensor) else source
        problem = _slot_rules_broken(source, counts, d_max)
        if problem is not None:
            return f"{where}: {problem}"
        package = align_sub_trajectories(counts, d_max, seed=n)
        assert _slot_rules_broken(package.source.tolist(), counts, d_max) is None  # the rules are the package's
    return None


def _slot_rules_broken(source: list, counts: list[list[int]], d_max: int) -> str | None:
    """Which slot rule `source` (B, K, D nested lists, -1 masked) breaks, or None."""
    if len(source) != len(counts) or any(len(row) != len(c) for row, c in zip(source, counts)):
        return "the slots are not shaped (B, K, D) like counts"
    start = 0
    for b, row in enumerate(counts):
        own = []
        for d in row:
            own.append(list(range(start, start + d)))
            start += d
        kept = {i for k, mine in enumerate(own) if mine for i in source[b][k]}
        for k, mine in enumerate(own):
            slots = source[b][k]
            label = f"rollout ({b}, {k}) with d = {len(mine)}"
            if len(slots) != d_max:
                return f"{label} has {len(slots)} slots, not D = {d_max}"
            if mine and not set(slots) <= set(mine):
                return f"{label} holds {sorted(set(slots) - set(mine))}, which are not its own trajectories {mine}"
            if 0 < len(mine) <= d_max and set(slots) != set(mine):
                return f"{label} leaves out {sorted(set(mine) - set(slots))}: with d <= D each of its own " \
                       f"fills at least one slot"
            if len(mine) > d_max and len(set(slots)) != d_max:
                return f"{label} repeats a trajectory: with d > D it keeps D different ones and drops the rest"
            if not mine and not any(own):
                if slots != [-1] * d_max:
                    return f"{label}: its question has no sub trajectory, so its slots are masked (-1)"
            elif not mine and not set(slots) <= kept:
                return f"{label} borrows {sorted(set(slots) - kept)}: it may borrow only what the other " \
                       f"rollouts of its question kept in their slots {sorted(kept)}"
    return None


# Eqs. (3), (4), (6) ----------------------------------------------------------


def _clipped(candidate, cases, generator) -> str | None:
    inputs = []
    for _ in range(cases):
        m = int(torch.randint(1, 5, (1,), generator=generator))
        t = int(torch.randint(1, 7, (1,), generator=generator))
        logp_old = -torch.rand(m, t, generator=generator) * 3  # (M, T)
        logp = logp_old + (torch.rand(m, t, generator=generator) - 0.5)  # (M, T) ratios 0.6 .. 1.65: some clip
        advantages = torch.randn(m, generator=generator)  # (M,)
        weights = (torch.rand(m, t, generator=generator) < 0.7).float()  # (M, T)
        weights[0, 0] = 1.0  # at least one trained token
        inputs.append((logp, logp_old, advantages, weights))

    def package(logp, logp_old, advantages, weights):
        return clipped_surrogate_loss(logp, logp_old, advantages, weights)[0]

    def surrogate(logp, logp_old, advantages, eps_low, eps_high, clip_only=False):
        ratio = torch.exp(logp - logp_old)
        clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages[:, None]
        return clipped if clip_only else torch.minimum(ratio * advantages[:, None], clipped)

    mistakes = [
        Mistake(lambda lp, lo, a, w: -(w * surrogate(lp, lo, a, 0.2, 0.2)).sum() / w.sum(),
                "you clipped symmetrically: the range is [1 - 0.2, 1 + 0.28]"),
        Mistake(lambda lp, lo, a, w: -(w * surrogate(lp, lo, a, 0.2, 0.28, clip_only=True)).sum() / w.sum(),
                "you kept only the clipped term: Eq. (4) takes the min of the clipped and the unclipped one"),
        Mistake(lambda lp, lo, a, w: (w * surrogate(lp, lo, a, 0.2, 0.28)).sum() / w.sum(),
                "your sign is flipped: the loss is minus the mean surrogate, Eq. (6)"),
        Mistake(lambda lp, lo, a, w: -((w * surrogate(lp, lo, a, 0.2, 0.28)).sum(1) / w.sum(1).clamp(min=1)).mean(),
                "you averaged per sequence, then over sequences: Eq. (6) divides by the weight of "
                "every token of the batch at once"),
    ]
    return _compare(candidate, package, inputs, mistakes,
                    lambda a: f"M = {a[0].shape[0]}, T = {a[0].shape[1]}, advantages {_short(a[2])}",
                    atol=1e-5, gradient_of=0)


# Eq. (5) --------------------------------------------------------------------


def _k3(candidate, cases, generator) -> str | None:
    inputs = []
    for _ in range(cases):
        shape = (int(torch.randint(1, 4, (1,), generator=generator)), int(torch.randint(1, 6, (1,), generator=generator)))
        logp = -torch.rand(shape, generator=generator) * 4
        inputs.append((logp, logp + torch.randn(shape, generator=generator) * 0.5))
    mistakes = [
        Mistake(lambda lp, lr: lp - lr, "that is k1 = -log x: k3 adds x - 1, which makes every term >= 0"),
        Mistake(lambda lp, lr: torch.exp(lp - lr) - (lp - lr) - 1,
                "your ratio is upside down: x = pi_ref / pi_theta"),
    ]
    return _compare(candidate, k3_kl, inputs, mistakes, lambda a: f"shape {tuple(a[0].shape)}", atol=1e-5)


def _short(tensor: torch.Tensor) -> str:
    values = [round(v, 3) for v in tensor.flatten().tolist()]
    text = str(values if len(values) <= 8 else values[:8] + ["..."])
    return text if tensor.ndim <= 1 else f"{text} shaped {tuple(tensor.shape)}"


EXERCISES: dict[str, Callable] = {"eq1": _eq1, "eq2": _eq2, "alignment": _alignment, "clipped": _clipped, "k3": _k3}

__all__ = ["check", "code_lines", "show_code", "EXERCISES"]

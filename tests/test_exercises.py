"""The course's helpers (mgrpo_ref/course.py): the package's lines beside an equation, and the
exercise checks, which must pass the package's own functions, name each known mistake, and
never raise on a learner's broken code."""

from __future__ import annotations

import inspect

import pytest
import torch

from mgrpo_ref.advantages import main_advantages, sub_advantages
from mgrpo_ref.alignment import align_sub_trajectories
from mgrpo_ref.course import EXERCISES, _eq1, check, code_lines
from mgrpo_ref.objective import clipped_surrogate_loss, k3_kl


def package_loss(logp, logp_old, advantages, weights):
    return clipped_surrogate_loss(logp, logp_old, advantages, weights)[0]


PACKAGE = {
    "eq1": main_advantages,
    "eq2": sub_advantages,
    "alignment": lambda counts, d_max, rng: align_sub_trajectories(counts, d_max, seed=rng.randrange(10**6)).source,
    "clipped": package_loss,
    "k3": k3_kl,
}


def test_every_exercise_has_its_package_function_here():
    assert set(PACKAGE) == set(EXERCISES)


@pytest.mark.parametrize("exercise", sorted(PACKAGE))
def test_the_package_passes_its_own_check(exercise, capsys):
    assert check(exercise, PACKAGE[exercise], seed=3)
    assert capsys.readouterr().out.startswith("correct: ")


@pytest.mark.parametrize("exercise", sorted(PACKAGE))
def test_an_unwritten_function_is_called_not_written_yet(exercise, capsys):
    def unwritten(*args):
        raise NotImplementedError

    assert not check(exercise, unwritten)
    assert capsys.readouterr().out.startswith("not written yet")


@pytest.mark.parametrize("exercise", sorted(PACKAGE))
def test_broken_code_is_reported_in_one_line_not_raised(exercise, capsys):
    def broken(*args):
        return [][1]

    assert not check(exercise, broken)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "raised IndexError" in out


def unbiased_std(rewards):
    centred = rewards - rewards.mean(1, keepdim=True)
    advantages = centred / (rewards.std(1, keepdim=True) + 1e-6)  # K - 1
    return advantages.masked_fill((rewards == rewards[:, :1]).all(1, keepdim=True), 0.0)


def naive_eq1(rewards):
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, correction=0, keepdim=True) + 1e-6)


def batch_eq2(rewards, group_ids):
    return sub_advantages(rewards, torch.zeros_like(group_ids))


def surrogate(logp, logp_old, advantages, eps_low=0.2, eps_high=0.28):
    ratio = torch.exp(logp - logp_old)
    return torch.minimum(ratio * advantages[:, None], ratio.clamp(1 - eps_low, 1 + eps_high) * advantages[:, None])


MISTAKES = [
    ("eq1", unbiased_std, "population"),
    ("eq1", naive_eq1, "equal-reward group must give exactly 0"),
    ("eq1", lambda r: main_advantages(r.flatten()[None]).view_as(r), "whole batch"),
    ("eq2", batch_eq2, "same question"),
    ("clipped", lambda lp, lo, a, w: package_loss(lp, lo, a, w) * -1, "sign is flipped"),
    ("clipped", lambda lp, lo, a, w: -(w * surrogate(lp, lo, a, 0.2, 0.2)).sum() / w.sum(), "symmetrically"),
    ("clipped", lambda lp, lo, a, w: -((w * surrogate(lp, lo, a)).sum(1) / w.sum(1).clamp(min=1)).mean(),
     "per sequence"),
    ("clipped", lambda lp, lo, a, w: package_loss(lp, lo, a, w).detach(), "carries no gradient"),
    ("clipped", lambda lp, lo, a, w: -(w * surrogate(lp, lo, a).detach() * lp / lp.detach()).sum() / w.sum()
     + 0 * lp.sum(), "gradient is not"),
    ("k3", lambda lp, lr: lp - lr, "k1"),
    ("k3", lambda lp, lr: torch.exp(lp - lr) - (lp - lr) - 1, "upside down"),
]


@pytest.mark.parametrize("exercise, wrong, advice", MISTAKES, ids=[f"{e}-{a}" for e, _, a in MISTAKES])
def test_each_known_mistake_is_named(exercise, wrong, advice, capsys):
    assert not check(exercise, wrong)
    out = capsys.readouterr().out
    assert advice in out and out.startswith("input ")


def own_only(counts, d_max, rng):
    """Right for rollouts with calls; forgets to borrow (a d = 0 rollout stays masked)."""
    source, start = [], 0
    for row in counts:
        slots = []
        for d in row:
            own = list(range(start, start + d))
            start += d
            slots.append(sorted(rng.sample(own, d_max)) if d > d_max else
                         own + [rng.choice(own) for _ in range(d_max - d)] if own else [-1] * d_max)
        source.append(slots)
    return source


def test_the_alignment_check_names_the_broken_rule(capsys):
    assert not check("alignment", own_only)
    assert "borrows [-1]" in capsys.readouterr().out
    assert not check("alignment", lambda counts, d_max, rng: [[[99] * d_max for _ in row] for row in counts])
    assert "not its own trajectories" in capsys.readouterr().out
    assert not check("alignment", lambda counts, d_max, rng: [[[] for _ in row] for row in counts])
    assert "slots, not D" in capsys.readouterr().out


def test_a_function_that_returns_nothing_is_told_so(capsys):
    assert not check("eq1", lambda rewards: None)
    assert "returned None" in capsys.readouterr().out


def test_the_random_inputs_include_an_equal_reward_group():
    seen = []
    _eq1(lambda rewards: seen.append(rewards) or main_advantages(rewards), 6, torch.Generator().manual_seed(0))
    assert any((r == r[:, :1]).all(1).any() for r in seen)


def test_an_unknown_exercise_is_refused():
    with pytest.raises(ValueError, match="unknown exercise 'eq9'"):
        check("eq9", main_advantages)


def test_the_lines_of_an_equation_come_from_the_package_without_its_input_checks():
    text = code_lines(main_advantages)
    assert text.splitlines()[0] == "# mgrpo_ref/advantages.py, main_advantages"
    assert "# (B, K)  Eq. (1)" in text and "_check_finite" not in text and "raise ValueError" not in text
    assert '"""' not in text
    numbered = text.splitlines()[1]
    line_number, code = numbered.split("  ", 1)
    lines, first = inspect.getsourcelines(main_advantages)
    assert lines[int(line_number) - first].strip() == code.strip()  # the file's own line number


def test_one_equation_of_a_function_is_the_statements_since_the_previous_tag():
    eq4 = code_lines(clipped_surrogate_loss, "4")
    assert "Eq. (4)" in eq4 and "Eq. (3)" not in eq4 and "unclipped = ratio * adv" in eq4
    eq6 = code_lines(clipped_surrogate_loss, "6")
    assert eq6.rstrip().endswith("# Eq. (6)") and "Eq. (5)" not in eq6
    with pytest.raises(ValueError, match="no line tagged # Eq. \\(9\\)"):
        code_lines(clipped_surrogate_loss, "9")

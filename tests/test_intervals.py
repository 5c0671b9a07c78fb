"""Paired differences and their t intervals (intervals.py): table values, hand cases, properties."""

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgrpo_ref.intervals import paired_difference, t_cdf, t_quantile

# Two-sided 95% critical values t_{0.975, df}, from any statistics table.
TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 30: 2.042, 120: 1.980}


@pytest.mark.parametrize("df, value", sorted(TABLE.items()))
def test_t_quantile_matches_the_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=6e-4)


def test_t_cdf_known_values_and_symmetry():
    assert t_cdf(0.0, 3) == pytest.approx(0.5, abs=1e-12)
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-9)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(-2.0, 5) == pytest.approx(1 - t_cdf(2.0, 5), abs=1e-12)
    # Large df approaches the normal distribution.
    assert t_cdf(1.96, 10_000) == pytest.approx(statistics.NormalDist().cdf(1.96), abs=1e-4)


def test_a_hand_computed_interval():
    """Five seeds: differences 2, 4, 6, 4, 4 points -> mean 4, sd sqrt(2), half-width
    2.776 * sqrt(2) / sqrt(5) = 1.756."""
    interval = paired_difference([12, 14, 16, 14, 14], [10, 10, 10, 10, 10])
    assert interval.mean == pytest.approx(4.0)
    half = 2.7764451 * math.sqrt(2) / math.sqrt(5)
    assert (interval.low, interval.high) == pytest.approx((4 - half, 4 + half), abs=1e-4)
    assert interval.excludes_zero and interval.verdict() == "higher"


def test_pairing_sees_a_difference_that_the_seed_spread_hides():
    """Seeds that move both variants alike: unpaired the means overlap (each arm's spread
    over seeds is about 12 points, its difference of means 3), paired the difference is clear."""
    b = [50.0, 70.0, 60.0, 80.0, 55.0]
    a = [x + 3 + 0.5 * (-1) ** i for i, x in enumerate(b)]
    paired = paired_difference(a, b)
    assert paired.excludes_zero and paired.low > 2


def test_no_measurable_difference_when_the_interval_covers_zero():
    interval = paired_difference([1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 0.0, 0.0])
    assert interval.low < 0 < interval.high
    assert interval.verdict() == "no measurable difference"


def test_one_pair_has_an_unbounded_interval_and_bad_input_is_refused():
    one = paired_difference([3.0], [1.0])
    assert one.mean == 2.0 and math.isinf(one.low) and math.isinf(one.high) and not one.excludes_zero
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [1.0, 0.0], confidence=1.5)
    with pytest.raises(ValueError, match="df"):
        t_cdf(1.0, 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=2, max_size=8), st.floats(-20, 20))
def test_shifting_both_sides_changes_nothing_and_the_mean_is_inside(values, shift):
    other = [v * 0.5 + 1 for v in values]
    base = paired_difference(values, other)
    moved = paired_difference([v + shift for v in values], [v + shift for v in other])
    assert moved.mean == pytest.approx(base.mean, abs=1e-9)
    assert moved.high - moved.low == pytest.approx(base.high - base.low, abs=1e-6)
    assert base.low <= base.mean <= base.high


def test_the_wilson_interval_of_a_proportion_matches_hand_values():
    from mgrpo_ref.intervals import proportion_interval

    # 31 of 120 at 95%: z = 1.95996; centre (0.25833 + 0.016005) / 1.032011, half from the formula.
    interval = proportion_interval(31, 120)
    assert interval.mean == 31 / 120
    assert abs(interval.low - 0.1882) < 5e-4 and abs(interval.high - 0.3434) < 5e-4
    # At 0% and 100% the interval keeps a width and stays inside [0, 1].
    none, every = proportion_interval(0, 20), proportion_interval(20, 20)
    assert none.low == 0.0 and 0.15 < none.high < 0.18
    assert every.high == 1.0 and 0.82 < every.low < 0.85
    # It narrows with n and widens with the confidence.
    assert proportion_interval(300, 1200).high - proportion_interval(300, 1200).low < interval.high - interval.low
    assert proportion_interval(31, 120, 0.99).low < interval.low
    with pytest.raises(ValueError, match="successes <= n"):
        proportion_interval(5, 4)


def test_the_sign_flip_floor_is_the_p_of_differences_all_of_one_sign():
    from mgrpo_ref.intervals import sign_flip_floor, sign_flip_p
    for n in range(1, 10):
        assert sign_flip_floor(n) == sign_flip_p([1.0 + i for i in range(n)])
    assert sign_flip_floor(5) == 0.0625 and sign_flip_floor(6) == 0.03125  # six seeds are the fewest below 0.05
    with pytest.raises(ValueError, match="at least one pair"):
        sign_flip_floor(0)


def test_the_sign_flip_test_by_hand():
    """Five differences all of one sign: only they and their mirror image reach the observed
    |sum|, so p = 2 / 32. Differences 3, -1, 2: |sum| = 4, reached by (+3 -1 +2), (+3 +1 +2)
    and their mirrors, 4 of 8 sign patterns."""
    from mgrpo_ref.intervals import sign_flip_p
    assert sign_flip_p([5.0, 1.0, 2.0, 7.0, 0.5]) == 2 / 32
    assert sign_flip_p([-5.0, -1.0, -2.0, -7.0, -0.5]) == 2 / 32
    assert sign_flip_p([3.0, -1.0, 2.0]) == 4 / 8
    assert sign_flip_p([0.0, 0.0]) == 1.0
    assert sign_flip_p([1.0] * 8) == 2 / 256  # eight seeds are the fewest that can reach p < 0.01
    # ties made by rounding still count as ties: 0.1 + 0.2 against 0.3
    assert sign_flip_p([0.1, 0.2, -0.3]) == sign_flip_p([1.0, 2.0, -3.0]) == 1.0
    with pytest.raises(ValueError, match="1 to 22 pairs"):
        sign_flip_p([])
    with pytest.raises(ValueError, match="1 to 22 pairs"):
        sign_flip_p([1.0] * 23)
    with pytest.raises(ValueError, match="finite"):
        sign_flip_p([1.0, float("nan")])
    # a difference far smaller than another still splits the sign patterns
    assert sign_flip_p([50.0, 1e-8]) == 2 / 4 and sign_flip_p([1e-8, 50.0, 3.0]) == 2 / 8


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=10), st.floats(0.01, 100))
def test_the_sign_flip_p_does_not_change_under_scaling_or_a_flip_of_every_sign(values, scale):
    from mgrpo_ref.intervals import sign_flip_p
    p = sign_flip_p(values)
    assert 0 < p <= 1
    assert sign_flip_p([-v for v in values]) == p
    assert sign_flip_p([v * scale for v in values]) == pytest.approx(p)
    if any(values):
        assert p >= 2 / 2 ** len(values)


def test_a_difference_is_called_only_where_both_tests_agree():
    """The t interval of 2, 4, 6, 4, 4 excludes 0, but five pairs cannot bring the exact test
    below 0.0625; eight pairs of one sign can (p = 2/256)."""
    from mgrpo_ref.intervals import paired_verdict, sign_flip_p
    five = [2.0, 4.0, 6.0, 4.0, 4.0]
    interval = paired_difference(five, [0.0] * 5)
    assert interval.excludes_zero
    assert paired_verdict(interval, sign_flip_p(five)) == "no measurable difference (the t interval alone)"
    eight = five + [3.0, 5.0, 4.0]
    assert paired_verdict(paired_difference(eight, [0.0] * 8), sign_flip_p(eight)) == "higher"
    assert paired_verdict(paired_difference([-x for x in eight], [0.0] * 8), sign_flip_p(eight), "a up", "a down") == "a down"
    # one outlying seed widens the t interval over 0 while seven of eight signs agree
    skewed = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -30.0]
    assert paired_verdict(paired_difference(skewed, [0.0] * 8), sign_flip_p(skewed)) == "no measurable difference"
    assert paired_verdict(paired_difference([1.0, -1.0], [0.0, 0.0]), 1.0) == "no measurable difference"
    # every sign agrees, but one seed far out widens the t interval over 0
    lopsided = [100.0] + [0.1] * 7
    assert paired_verdict(paired_difference(lopsided, [0.0] * 8), sign_flip_p(lopsided)) == \
        "no measurable difference (the exact test alone)"

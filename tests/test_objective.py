"""Tests for mgrpo_ref.objective: hand cases, clip asymmetry, gradients, loop equivalence."""

import math

import pytest
import torch

from mgrpo_ref.objective import clipped_surrogate_loss, k3_kl


def _logps_with_ratios(ratios, logp_old=-1.0):
    """(M, T) logp and logp_old such that exp(logp - logp_old) = ratios."""
    ratios = torch.tensor(ratios, dtype=torch.float64)
    old = torch.full_like(ratios, logp_old)
    logp = (old + ratios.log()).requires_grad_()
    return logp, old


def test_hand_computed_two_tokens():
    # One sequence, A = 1, two tokens with ratios 1.1 (inside [0.8, 1.28]) and 1.5
    # (above 1.28). Surrogates: min(1.1, 1.1) = 1.1 and min(1.5, 1.28) = 1.28.
    # loss = -(1.1 + 1.28) / 2 = -1.19.
    # Gradient w.r.t. logp: d(r A)/d logp = r A = 1.1 for the first token, 0 for the
    # clipped one; divided by 2 tokens and negated: [-0.55, 0].
    logp, old = _logps_with_ratios([[1.1, 1.5]])
    loss, diag = clipped_surrogate_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2))
    loss.backward()
    assert loss.item() == pytest.approx(-1.19)
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.55, 0.0]], dtype=torch.float64))
    assert diag["clip_frac"] == 0.5
    assert diag["mean_ratio"] == pytest.approx(1.3)
    assert diag["n_tokens"] == 2
    expected_kl = ((0.1 - math.log(1.1)) + (0.5 - math.log(1.5))) / 2  # mean of (r - 1) - log r
    assert diag["approx_kl"] == pytest.approx(expected_kl)
    assert diag["kl_ref"] == 0.0


def test_the_sampled_tokens_nll_estimates_the_sampling_policys_entropy():
    """sampled_nll: the weighted mean of -log pi_old; over tokens drawn from pi_old it is
    near pi_old's entropy, and padding (weight 0) does not count."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, generator=g) * 2, dim=0)  # one policy over 50 tokens
    entropy = -(probs * probs.log()).sum().item()
    drawn = torch.multinomial(probs, 20_000, replacement=True, generator=g).reshape(40, 500)
    logp_old = probs.log()[drawn]  # (40, 500)
    weights = torch.ones(40, 500)
    _, diag = clipped_surrogate_loss(logp_old.clone(), logp_old, torch.zeros(40), weights)
    assert diag["sampled_nll"] == pytest.approx(-logp_old.mean().item(), rel=1e-5)
    assert diag["sampled_nll"] == pytest.approx(entropy, abs=0.03)
    padded_old = torch.cat([logp_old, torch.full((40, 7), -50.0)], dim=1)  # padding: weight 0, any value
    _, padded = clipped_surrogate_loss(padded_old.clone(), padded_old, torch.zeros(40),
                                       torch.cat([weights, torch.zeros(40, 7)], dim=1))
    assert padded["sampled_nll"] == pytest.approx(diag["sampled_nll"], rel=1e-5)


@pytest.mark.parametrize(
    "ratio, advantage, clipped",
    [
        (1.25, 1.0, False),  # inside 1 + eps_high = 1.28: free to grow
        (1.30, 1.0, True),  # beyond 1.28
        (0.75, -1.0, True),  # below 1 - eps_low = 0.8 with A < 0
        (0.75, 1.0, False),  # A > 0 and ratio falling: min keeps the unclipped term
        (1.30, -1.0, False),  # A < 0 and ratio rising: min keeps the unclipped term
    ],
)
def test_clip_asymmetry(ratio, advantage, clipped):
    logp, old = _logps_with_ratios([[ratio]])
    loss, diag = clipped_surrogate_loss(logp, old, torch.tensor([advantage]), torch.ones(1, 1))
    loss.backward()
    assert diag["clip_frac"] == float(clipped)
    assert (logp.grad.abs().item() == 0.0) == clipped  # a clipped token gets no gradient
    bound = min(max(ratio, 0.8), 1.28)
    expected = -min(ratio * advantage, bound * advantage)
    assert loss.item() == pytest.approx(expected)


def test_k3_hand_value_and_nonnegative():
    # logp = log 0.5, logp_ref = log 0.25: x = pi_ref / pi = 0.5, k3 = 0.5 - log 0.5 - 1.
    k3 = k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25)))
    assert k3.item() == pytest.approx(0.5 + math.log(2) - 1)
    assert k3_kl(torch.tensor(-1.3), torch.tensor(-1.3)).item() == 0.0
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1000, generator=gen) * 3
    assert (k3_kl(a, b) >= 0).all()


def test_ratio_one_gives_policy_gradient():
    # With logp_old = logp.detach() every ratio is 1, nothing is clipped, and the
    # gradient is that of the plain policy-gradient estimator -sum(w A logp) / sum(w).
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    adv = torch.randn(4, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=gen) < 0.7
    loss, diag = clipped_surrogate_loss(logp, logp.detach(), adv, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    pg = -(mask * adv[:, None] * logp).sum() / mask.sum()
    (pg_grad,) = torch.autograd.grad(pg, logp)
    torch.testing.assert_close(grad, pg_grad)
    assert diag["clip_frac"] == 0.0 and diag["mean_ratio"] == 1.0 and diag["approx_kl"] == 0.0


def _loss_loop(logp, old, adv, mask, eps_low, eps_high, kl_coef, ref):
    """Reference: one token at a time in plain Python floats."""
    total, n = 0.0, 0.0
    for i in range(len(logp)):
        for t in range(len(logp[i])):
            w = mask[i][t]
            if w == 0:
                continue
            r = math.exp(logp[i][t] - old[i][t])
            s = min(r * adv[i], min(max(r, 1 - eps_low), 1 + eps_high) * adv[i])
            x = ref[i][t] - logp[i][t]
            total += w * (s - kl_coef * (math.exp(x) - x - 1))
            n += w
    return -total / n


@pytest.mark.parametrize("seed", range(4))
def test_matches_token_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (5, 7)
    old = -torch.rand(shape, generator=gen, dtype=torch.float64) * 4
    # log-ratio noise of scale 0.3 puts ratios on both sides of the clip range
    logp = old + torch.randn(shape, generator=gen, dtype=torch.float64) * 0.3
    ref = old + torch.randn(shape, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.randn(5, generator=gen, dtype=torch.float64)
    keep = torch.rand(shape, generator=gen) < 0.8
    mask = torch.rand(shape, generator=gen, dtype=torch.float64) * keep  # float weights
    kl_coef = 0.05 * seed
    loss, _ = clipped_surrogate_loss(logp, old, adv, mask, 0.2, 0.28, kl_coef, ref)
    as_lists = [x.tolist() for x in (logp, old, adv, mask)]
    expected = _loss_loop(*as_lists, 0.2, 0.28, kl_coef, ref.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_masked_tokens_have_no_effect():
    gen = torch.Generator().manual_seed(1)
    logp = -torch.rand(3, 5, generator=gen)
    old = logp + 0.1 * torch.randn(3, 5, generator=gen)
    adv = torch.randn(3, generator=gen)
    mask = torch.rand(3, 5, generator=gen) < 0.6
    loss, diag = clipped_surrogate_loss(logp, old, adv, mask, kl_coef=0.1, logp_ref=old)

    # Garbage, even -inf or NaN, at masked positions changes neither loss nor gradient.
    garbage = torch.where(mask, logp, torch.tensor(float("-inf"))).requires_grad_()
    garbage_old = torch.where(mask, old, torch.tensor(float("nan")))
    loss2, diag2 = clipped_surrogate_loss(
        garbage, garbage_old, adv, mask, kl_coef=0.1, logp_ref=garbage_old
    )
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    assert diag2 == pytest.approx(diag)
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[~mask] == 0).all()


def test_zero_token_batch():
    logp = torch.randn(2, 3, requires_grad=True)
    loss, diag = clipped_surrogate_loss(logp, logp.detach(), torch.ones(2), torch.zeros(2, 3))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 3))
    assert set(diag) == {"clip_frac", "approx_kl", "mean_ratio", "kl_ref", "sampled_nll", "n_tokens"}
    assert all(value == 0.0 for value in diag.values())


def test_kl_term():
    # Ratio 1 and A = 0: the loss is just beta * mean k3.
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    no_adv, one_token = torch.zeros(1), torch.ones(1, 1)
    loss, diag = clipped_surrogate_loss(
        logp, logp.detach(), no_adv, one_token, kl_coef=0.1, logp_ref=ref
    )
    k3 = 0.5 + math.log(2) - 1
    assert loss.item() == pytest.approx(0.1 * k3)
    assert diag["kl_ref"] == pytest.approx(k3)
    # With kl_coef = 0 the reference is only logged.
    loss0, diag0 = clipped_surrogate_loss(logp, logp.detach(), no_adv, one_token, logp_ref=ref)
    assert loss0.item() == 0.0 and diag0["kl_ref"] == pytest.approx(k3)


def test_kl_without_reference_raises():
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="logp_ref"):
        clipped_surrogate_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), kl_coef=0.1)


def test_shape_errors():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate_loss(logp, logp, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="weights"):
        clipped_surrogate_loss(logp, logp, torch.zeros(2), torch.ones(2, 4))

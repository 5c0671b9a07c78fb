"""The clipped surrogate objective each learner minimises (docs/paper.md section 5).

Each learner is trained separately, in its own process, on the tokens of the agents it
plays, with the same PPO-style objective. For every token t the agent generated,

    r_t = pi_theta(y_t | ...) / pi_old(y_t | ...) = exp(logp_t - logp_old_t)      Eq. (3)
    s_t = min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A)                  Eq. (4)
    k3_t = exp(logp_ref_t - logp_t) - (logp_ref_t - logp_t) - 1                    Eq. (5)
    loss = - sum_t w_t (s_t - beta * k3_t) / sum_t w_t                             Eq. (6)

A is the advantage of the sequence the token belongs to (advantages.py), w_t the loss
weight: 0 for prompt tokens, tool outputs, text inserted by the other agent and masked
alignment slots. The mean in Eq. (6) is over all unmasked tokens of the batch
("token-level mean" [ours]), so a long sequence weighs more than a short one, rather
than every sequence weighing the same whatever its length.

Dimension letters: M rows of a batch (main or sub trajectories), T tokens.
"""

from __future__ import annotations

import torch


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Elementwise k3 estimator of KL(pi_theta || pi_ref) from sampled tokens. Eq. (5)

        k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1

    With x = pi_ref / pi_theta it is x - log x - 1 >= 0 (since log x <= x - 1), it is
    unbiased for the KL when tokens are sampled from pi_theta, and in practice it has
    a lower variance than the naive -log x (Schulman, "Approximating KL divergence",
    2020). For a LoRA policy, pi_ref is the same network with the adapter disabled.
    """
    log_ratio = logp_ref - logp  # (...)
    return torch.exp(log_ratio) - log_ratio - 1  # Eq. (5)


def clipped_surrogate_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    kl_coef: float = 0.0,
    logp_ref: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with asymmetric clip and optional k3 KL. Eqs. (3)-(6)

    The clip is asymmetric ("clip-higher", from DAPO, Yu et al. 2025, arXiv:2503.14476,
    with the values of the authors' release): a token with A > 0 may raise its
    probability up to 1 + eps_high = 1.28 times the old one, a wider step than the
    1 - eps_low = 0.8 a token with A < 0 may lower it to, which leaves rare-but-good
    tokens room to grow and slows the collapse of the policy's entropy.

    Args:
        logp: (M, T) log-probs of the sampled tokens under the policy being trained.
        logp_old: (M, T) log-probs under the policy that sampled them (a constant).
        advantages: (M,) one advantage per sequence.
        weights: (M, T) bool or float loss weights w_t (0 = no effect on the loss).
        eps_low, eps_high: the clip range is [1 - eps_low, 1 + eps_high].
        kl_coef: beta in Eq. (6); 0 turns the KL term off (the default, as in the release).
        logp_ref: (M, T) log-probs under the reference (base) model; required when
            kl_coef > 0, and when given its KL is logged even if kl_coef is 0.

    Returns:
        loss: scalar tensor to minimise.
        diagnostics: python floats, token-level means with the same weights as the loss:
            clip_frac (share of tokens where the clipped term was selected and differs),
            approx_kl (k3 against pi_old: mean of (r - 1) - log r), mean_ratio,
            kl_ref (mean k3 against pi_ref; 0.0 without logp_ref), sampled_nll (mean of
            -log pi_old over the tokens: for tokens sampled from pi_old at temperature 1, an
            unbiased estimate of pi_old's entropy per token, in nats), n_tokens (sum of w).
    """
    _check_shapes(logp, logp_old, advantages, weights, logp_ref)
    if kl_coef > 0 and logp_ref is None:
        raise ValueError("kl_coef > 0 needs logp_ref, the reference model's log-probs")

    weight = weights.to(logp.dtype)  # (M, T)
    active = weight != 0  # (M, T)
    # Padding positions often hold garbage such as -inf. Zero every log-prob there
    # before any exp, so that neither the loss nor its gradient can turn into NaN.
    # pi_old and pi_ref are constants: no gradient flows into them.
    logp = torch.where(active, logp, 0.0)  # (M, T)
    logp_old = torch.where(active, logp_old.detach(), 0.0)  # (M, T)

    log_ratio = logp - logp_old  # (M, T)
    ratio = torch.exp(log_ratio)  # (M, T)  Eq. (3)
    adv = advantages.detach().to(logp.dtype)[:, None]  # (M, 1)
    unclipped = ratio * adv  # (M, T)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv  # (M, T)
    surrogate = torch.minimum(unclipped, clipped)  # (M, T)  Eq. (4)

    objective = surrogate  # (M, T)
    kl_ref = None
    if logp_ref is not None:
        logp_ref = torch.where(active, logp_ref.detach(), 0.0)  # (M, T)
        kl_ref = k3_kl(logp, logp_ref)  # (M, T)  Eq. (5)
        if kl_coef > 0:
            objective = surrogate - kl_coef * kl_ref  # (M, T)

    n_tokens = weight.sum()
    # A batch with no token divides 0 by 1 instead of 0: the loss is 0 and still
    # connected to logp, so backward() works and gives zero gradients.
    denominator = torch.where(n_tokens > 0, n_tokens, 1.0)
    loss = -(weight * objective).sum() / denominator  # Eq. (6)

    with torch.no_grad():
        diagnostics = {
            "clip_frac": _token_mean((clipped < unclipped).to(weight.dtype), weight),
            # r - 1 - log r: the k3 estimator of KL(pi_old || pi_theta) on tokens
            # sampled from pi_old, as PPO implementations log it (e.g. CleanRL).
            "approx_kl": _token_mean((ratio - 1) - log_ratio, weight),
            "mean_ratio": _token_mean(ratio, weight),
            "kl_ref": 0.0 if kl_ref is None else _token_mean(kl_ref, weight),
            # E_{x ~ pi}[-log pi(x)] = H(pi): the entropy of the sampling policy, estimated
            # from the tokens it sampled, at no extra cost.
            "sampled_nll": _token_mean(-logp_old, weight),
            "n_tokens": n_tokens.item(),
        }
    return loss, diagnostics


# ----------------------------------------------------------------------------
# helpers


def _token_mean(values: torch.Tensor, weight: torch.Tensor) -> float:
    """Weighted mean over tokens as a python float; 0.0 when no token has weight."""
    total = weight.sum()
    if total == 0:
        return 0.0
    return ((values * weight).sum() / total).item()


def _check_shapes(logp, logp_old, advantages, weights, logp_ref) -> None:
    if logp.ndim != 2:
        raise ValueError(f"logp must be (M, T), got shape {tuple(logp.shape)}")
    named = {"logp_old": logp_old, "weights": weights}
    if logp_ref is not None:
        named["logp_ref"] = logp_ref
    for name, tensor in named.items():
        if tensor.shape != logp.shape:
            raise ValueError(
                f"{name} must have the shape of logp {tuple(logp.shape)}, "
                f"got {tuple(tensor.shape)}"
            )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"advantages must be (M,) = ({logp.shape[0]},), got {tuple(advantages.shape)}"
        )

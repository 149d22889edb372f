"""The clipped GRPO surrogate, its treatment of guide rows, and loss aggregation.

For on-policy rows (and, by default, for guide rows too) the per-token loss is PPO's clipped surrogate
(Schulman et al. 2017, arXiv 1707.06347) with the group-relative advantage of the row:

    rho = exp(clamp(logp - old_logp, -L, L)),   l = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)

with verl's two safeguards: the log-ratio clamp L (``log_ratio_clamp``, 20) and, when ``dual_clip_c`` = c > 1, the
dual clip of Ye et al. 2020 (arXiv 1912.09729): for A < 0 the loss is at most -c * A.

Guide rows (``is_guide``) can be treated five ways (``guide_loss``); see docs/algorithm.md:

* ``on_policy``: exactly the formula above, with ``old_logp`` recomputed by the current policy on the guide tokens
  (NPO's ablation treatment; the authors' public code does this).
* ``behavior_clipped`` (NPO's objective as the paper writes it): the same clipped surrogate with the ratio taken to
  the policy that sampled the row, rho_b = exp(logp - behavior_logp) (pi_theta / pi_{t+Delta} for a guide row).
* ``shaped`` (LUFFY, arXiv 2504.14945): l = -A * f(p), p = exp(logp), f(p) = p / (p + gamma), unclipped.
* ``importance``: rho_b = exp(logp - behavior_logp), the ratio to the policy that sampled the row,
  truncated above at ``is_cap`` and held constant: grad l = -A * min(rho_b, is_cap) * grad logp
  (truncated importance sampling, as verl's ``tis_imp_ratio_cap``).
* ``shaped_is`` (ExGRPO, arXiv 2510.02245): w = exp(logp - behavior_logp), the ratio to the log-probs recorded
  when the replayed row was sampled, shaped and unclipped: l = -A * w / (w + gamma).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from npo_lab.core.functional import masked_mean
from npo_lab.core.kl import kl_penalty
from npo_lab.registry import Registry

AGGREGATIONS: Registry[Callable[..., Tensor]] = Registry("loss aggregation")
GUIDE_TREATMENTS: Registry[Callable[..., Tensor]] = Registry("guide loss")
"""How guide rows enter the loss: ``f(logprobs, behavior_logprobs, adv, shaping_gamma, is_cap) -> (B, T) loss``;
``on_policy`` is absent on purpose: those rows keep the clipped surrogate of every other row."""


def clipped_surrogate(
    log_ratio: Tensor,
    adv: Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip_c: float = 0.0,
    log_ratio_clamp: float = 20.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate per token, with verl's log-ratio clamp and optional dual clip.

    Args:
        log_ratio: (B, T) log pi_theta - log pi_anchor.
        adv: (B, 1) advantages, broadcast over T.
        clip_eps_low, clip_eps_high: the clip range [1 - low, 1 + high].
        dual_clip_c: c > 1 caps the loss of negative-advantage tokens at -c * A; 0 switches it off.
        log_ratio_clamp: |log ratio| is clamped to this before exp (0: no clamp).

    Returns:
        (loss (B, T), ratio (B, T), float mask of the tokens the clip or the dual clip bound).

    >>> loss, _, _ = clipped_surrogate(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0]]), 0.2, 0.2)
    >>> [round(x, 3) for x in loss[0].tolist()]
    [-1.0, -1.2]
    """
    if log_ratio_clamp > 0:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = -torch.minimum(ratio * adv, clipped * adv)  # (B, T)
    bound = (ratio * adv) > (clipped * adv)
    if dual_clip_c > 0:  # Ye et al. 2020 / verl clip_ratio_c: a huge ratio on a negative advantage is capped
        cap = -dual_clip_c * adv
        capped = (adv < 0) & (loss > cap)
        loss = torch.where(capped, cap.expand_as(loss), loss)
        bound = bound | capped
    return loss, ratio, bound.float()


@GUIDE_TREATMENTS.register("behavior_clipped")
def guide_behavior_clipped(
    logprobs: Tensor,
    behavior_logprobs: Tensor | None,
    adv: Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip_c: float = 0.0,
    log_ratio_clamp: float = 20.0,
    **_: float,
) -> Tensor:
    """NPO's objective for the guide slot: the clipped ratio toward the policy that sampled the row (pi_{t+Delta})."""
    if behavior_logprobs is None:
        raise ValueError("guide_loss='behavior_clipped' needs behavior_logprobs")
    loss, _, _ = clipped_surrogate(
        logprobs - behavior_logprobs, adv, clip_eps_low, clip_eps_high, dual_clip_c, log_ratio_clamp
    )
    return loss


@GUIDE_TREATMENTS.register("shaped")
def guide_shaped(
    logprobs: Tensor, behavior_logprobs: Tensor | None, adv: Tensor, shaping_gamma: float, **_: float
) -> Tensor:
    """LUFFY's regularised importance sampling: pi_teacher taken as 1, f(p) = p / (p + gamma), no clip."""
    p = torch.exp(logprobs)
    return -adv * (p / (p + shaping_gamma))


@GUIDE_TREATMENTS.register("shaped_is")
def guide_shaped_is(
    logprobs: Tensor, behavior_logprobs: Tensor | None, adv: Tensor, shaping_gamma: float, **_: float
) -> Tensor:
    """ExGRPO's corrected replay: the ratio to the recorded (behaviour) log-probs, shaped, no clip."""
    if behavior_logprobs is None:
        raise ValueError("guide_loss='shaped_is' needs behavior_logprobs")
    w = torch.exp((logprobs - behavior_logprobs).clamp(max=20.0))
    return -adv * (w / (w + shaping_gamma))


@GUIDE_TREATMENTS.register("importance")
def guide_importance(
    logprobs: Tensor, behavior_logprobs: Tensor | None, adv: Tensor, is_cap: float, **_: float
) -> Tensor:
    """Truncated importance sampling toward the policy that sampled the guide row (verl's ``tis_imp_ratio_cap``):
    the weight min(rho_b, c) is a constant, its gradient flows through log pi (value: -A * min(rho_b, c))."""
    if behavior_logprobs is None:
        raise ValueError("guide_loss='importance' needs behavior_logprobs")
    rho_b = torch.exp((logprobs - behavior_logprobs).clamp(max=20.0))
    weight = torch.clamp(rho_b, max=is_cap).detach()
    return -adv * weight * torch.exp(logprobs - logprobs.detach())


GUIDE_LOSSES = ("on_policy", *GUIDE_TREATMENTS.names())


@AGGREGATIONS.register("token_mean")
def agg_token_mean(loss_mat: Tensor, mask: Tensor, norm_constant: float | None = None) -> Tensor:
    """Mean over every unmasked token of the batch (DAPO; long rows weigh more)."""
    return (loss_mat * mask).sum() / mask.sum().clamp(min=1.0)


@AGGREGATIONS.register("seq_mean")
def agg_seq_mean(loss_mat: Tensor, mask: Tensor, norm_constant: float | None = None) -> Tensor:
    """Token mean inside each row, then mean over rows (original GRPO; each row weighs the same)."""
    per_row = (loss_mat * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
    return per_row.mean()


@AGGREGATIONS.register("sum_norm")
def agg_sum_norm(loss_mat: Tensor, mask: Tensor, norm_constant: float | None = None) -> Tensor:
    """Sum over tokens divided by B * C, C a constant (Dr. GRPO; LUFFY): no length bias.

    C defaults to T, the padded length of the batch, when ``norm_constant`` is None."""
    c = float(loss_mat.shape[-1]) if norm_constant is None else float(norm_constant)
    return (loss_mat * mask).sum() / (loss_mat.shape[0] * c)


def aggregate(loss_mat: Tensor, mask: Tensor, mode: str = "token_mean", norm_constant: float | None = None) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar with a registered mode."""
    return AGGREGATIONS.get(mode)(loss_mat, mask, norm_constant)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    is_guide: Tensor | None = None,
    behavior_logprobs: Tensor | None = None,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    guide_loss: str = "on_policy",
    shaping_gamma: float = 0.1,
    is_cap: float = 2.0,
    aggregation: str = "token_mean",
    norm_constant: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    dual_clip_c: float = 0.0,
    log_ratio_clamp: float = 20.0,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss with a chosen guide-row treatment, optional KL and entropy terms.

    Args:
        logprobs: (B, T) current log-probs, differentiable.
        old_logprobs: (B, T) log-probs before the update (no grad).
        advantages: (B,) group-relative advantages.
        mask: (B, T) 1 where a token enters the loss.
        is_guide: (B,) bool; None means no guide rows.
        behavior_logprobs: (B, T) sampling-policy log-probs; needed for ``behavior_clipped``, ``importance`` and
            ``shaped_is``.
        clip_eps_low, clip_eps_high: PPO clip range [1 - low, 1 + high].
        guide_loss: ``on_policy``, ``behavior_clipped``, ``shaped``, ``importance`` or ``shaped_is``.
        shaping_gamma: gamma of f(x) = x / (x + gamma) for ``shaped`` and ``shaped_is``.
        is_cap: truncation of the importance ratio for ``importance``.
        aggregation: ``token_mean``, ``seq_mean`` or ``sum_norm``.
        norm_constant: C for ``sum_norm``.
        ref_logprobs: (B, T) reference log-probs, required when ``kl_coef > 0``.
        kl_coef, kl_estimator: weight and kind (``k1``/``k3``) of the KL term.
        entropy: (B, T) per-token entropy of the current policy (differentiable) or None.
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
        dual_clip_c: c > 1 caps the loss of negative-advantage tokens at -c * A (verl's 3); 0 = off.
        log_ratio_clamp: the log-ratio is clamped to +-this before exp (verl: 20); 0 = no clamp.

    Returns:
        (scalar loss, metrics).

    >>> lp = torch.zeros(1, 2, requires_grad=True)
    >>> loss, m = policy_loss(lp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
    >>> float(loss), m["policy/clipfrac"]
    (-1.0, 0.0)
    """
    if guide_loss not in GUIDE_LOSSES:
        raise ValueError(f"guide_loss must be one of {GUIDE_LOSSES}, got {guide_loss!r}")
    adv = advantages.unsqueeze(-1)  # (B, 1), broadcast over T
    log_ratio = logprobs - old_logprobs
    clip_kw = dict(clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high)
    clip_kw.update(dual_clip_c=dual_clip_c, log_ratio_clamp=log_ratio_clamp)
    loss_mat, ratio, clipped_tok = clipped_surrogate(log_ratio, adv, **clip_kw)  # (B, T) each

    guide = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device) if is_guide is None else is_guide
    if guide.any() and guide_loss != "on_policy":
        treat = GUIDE_TREATMENTS.get(guide_loss)
        guide_mat = treat(logprobs, behavior_logprobs, adv, shaping_gamma=shaping_gamma, is_cap=is_cap, **clip_kw)
        g = guide.unsqueeze(-1)  # (B, 1)
        loss_mat = torch.where(g, guide_mat, loss_mat)
        clipped_tok = torch.where(g, torch.zeros_like(clipped_tok), clipped_tok)

    metrics: dict[str, float] = {}
    pg_loss = aggregate(loss_mat, mask, aggregation, norm_constant)
    total = pg_loss
    metrics["loss/policy"] = pg_loss.item()
    if kl_coef > 0.0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs in the batch")
        kl_mat = kl_penalty(logprobs, ref_logprobs, kl_estimator)
        kl = aggregate(kl_mat, mask, aggregation, norm_constant)
        total = total + kl_coef * kl
        metrics["loss/kl"] = kl.item()
    if entropy is not None:
        ent = aggregate(entropy, mask, aggregation, norm_constant)
        if entropy_coef != 0.0:
            total = total - entropy_coef * ent
        metrics["policy/entropy"] = masked_mean(entropy.detach(), mask).item()
    with torch.no_grad():
        on = (~guide).unsqueeze(-1).float() * mask  # (B, T) on-policy tokens only
        # approximate KL(old || new) = E[(rho - 1) - log rho] on on-policy tokens (CleanRL's approx_kl)
        metrics["policy/approx_kl"] = masked_mean((ratio - 1) - log_ratio, on).item()
        metrics["policy/clipfrac"] = masked_mean(clipped_tok, on).item()
        metrics["policy/ratio_mean"] = masked_mean(ratio, on).item()
        if guide.any():
            gm = guide.unsqueeze(-1).float() * mask
            metrics["guide/ratio_mean"] = masked_mean(ratio, gm).item()
            metrics["guide/logprob_mean"] = masked_mean(logprobs.detach(), gm).item()
        metrics["loss/total"] = total.item()
    return total, metrics

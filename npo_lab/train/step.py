"""One GRPO step, top to bottom (the shape of CleanRL's ppo.py loop body):

prompts -> rollout -> (method: gate -> merge guide rows) -> old log-probs -> advantages
        -> epochs x minibatches x micro-batches -> optimizer step -> metrics -> (method observes the step)

``b_`` / ``mb_`` name the batch and the minibatch, as in CleanRL.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig
from npo_lab.core.advantages import group_advantages
from npo_lab.core.guidance import append_guides, merge_guides
from npo_lab.core.losses import policy_loss
from npo_lab.train.method import Method, StepOutcome
from npo_lab.train.state import TrainState
from npo_lab.utils import timed

GUIDE_METRICS = (
    "guide/gated_frac",
    "guide/injected_frac",
    "guide/found_frac",
    "guide/rows",
    "guide/replaced_correct",
    "guide/guide_solved",
)
"""Logged as 0 on a step whose method guides but found no group that needed it."""


class NonFiniteError(RuntimeError):
    """Raised when a loss, a gradient or a reward is NaN/Inf; names the step and the metric."""


def grpo_step(state: TrainState, grpo: GRPOConfig, method: Method | None = None) -> dict[str, float]:
    """One GRPO iteration on ``state``; a ``method`` may swap prompts and add guide rows (NPO, AutoNPO, LUFFY,
    ExGRPO, RLEP). Returns the step's metrics (``reward/``, ``policy/``, ``loss/``, ``guide/``, ``time/``)."""
    backend, m = state.backend, {}
    lr = grpo.lr_at(state.step, state.total_steps)  # a function of the step: look-ahead steps follow the schedule
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    m["charts/lr"] = lr
    prompts = state.sampler.next(grpo.prompts_per_step)
    if method is not None:
        prompts = method.choose_prompts(state, prompts)
    with timed(m, "rollout"):
        b = backend.rollout(prompts, grpo.group_size)  # B = prompts x G rows
    _check_rewards(b, state.step, "on-policy")
    rollout = b  # the on-policy groups before any guide row is merged
    m["reward/on_policy_mean"] = b.rewards.float().mean().item()

    guide_loss_kw: dict[str, Any] = {}
    if method is not None:
        with timed(m, "guide"):
            plan = method.guides(state, b, grpo)
            if plan is not None:
                m.update(plan.metrics)
                guide_loss_kw = plan.loss
            if plan is not None and plan.rows.size:
                _check_rewards(plan.rows, state.step, "guide")
            if plan is not None and plan.rows.size and plan.targets:
                if plan.mode == "append":
                    b, gm = append_guides(b, plan.rows, plan.targets, plan.k, grpo.correct_threshold)
                else:
                    b, gm = merge_guides(
                        b, plan.rows, plan.targets, plan.k, plan.slot, correct_threshold=grpo.correct_threshold
                    )
                m.update(gm)
                m["guide/guide_solved"] = (plan.rows.rewards > grpo.correct_threshold).float().mean().item()
            elif plan is not None:  # guidance is on, but no group needed it this step
                m.update(dict.fromkeys(GUIDE_METRICS, 0.0))

    batch_metrics = getattr(backend, "batch_metrics", None)  # optional: per-reward, on-policy vs guide rows
    if batch_metrics is not None:
        m.update(batch_metrics(b))
    # 0 = the whole batch, appended rows (RLEP) included: one optimiser step per batch for every method
    mb_size = grpo.minibatch_size or b.size
    # one epoch, one minibatch: the policy does not move before every row has been through the update forward,
    # so that forward's detached log-probs are the ratio anchor and no separate no-grad pass is needed (as TRL
    # with num_iterations = 1); otherwise old_logprobs are recomputed before the update, guide rows included
    single_pass = grpo.epochs == 1 and mb_size >= b.size
    old_entropy = None
    with timed(m, "logprobs"), torch.no_grad():
        if not single_pass:
            old, old_entropy = backend.logprobs(b)
            b = _with_old(b, old.detach())
        if state.ref_policy is not None:
            b = b.replace(ref_logprobs=backend.logprobs(b, policy=state.ref_policy)[0].detach())
    with timed(m, "adv"):
        advantages, am = group_advantages(b.rewards, b.group_ids, grpo.advantage)
        m.update(am)

    # sum_norm's constant C defaults to the padded length of the whole batch, the same for every minibatch
    norm_constant = grpo.norm_constant or float(b.mask.shape[1])
    loss_kw = dict(
        clip_eps_low=grpo.clip_eps_low,
        clip_eps_high=grpo.clip_eps_high,
        dual_clip_c=grpo.dual_clip_c,
        log_ratio_clamp=grpo.log_ratio_clamp,
        aggregation=grpo.aggregation,
        norm_constant=norm_constant,
        kl_coef=grpo.kl_coef,
        kl_estimator=grpo.kl_estimator,
        entropy_coef=grpo.entropy_coef,
        **guide_loss_kw,
    )
    lms: list[dict[str, float]] = []
    seen = None  # single pass: the update forward records each row's anchor and entropy here
    if single_pass:
        seen = {"old": torch.zeros(b.mask.shape), "entropy": torch.zeros(b.mask.shape), "has_entropy": True}
    with timed(m, "update"):
        for _epoch in range(grpo.epochs):
            perm = torch.randperm(b.size) if mb_size < b.size else torch.arange(b.size)
            for start in range(0, b.size, mb_size):
                lms.append(update_minibatch(state, b, advantages, perm[start : start + mb_size], grpo, loss_kw, seen))
    if seen is not None:  # the anchor and the entropies the update forward saw, for the method
        b = _with_old(b, seen["old"])
        old_entropy = seen["entropy"] if seen["has_entropy"] else None

    # loss/ and policy/ metrics: mean over every minibatch of every epoch (as verl and TRL report them)
    for k in sorted({k for d in lms for k in d}):
        vals = [d[k] for d in lms if k in d]
        m[k] = sum(vals) / len(vals)
    if b.is_guide.any():
        m["guide/on_solved"] = (b.rewards[~b.is_guide] > grpo.correct_threshold).float().mean().item()
    m["charts/completion_tokens"] = b.mask.sum(-1).float().mean().item()
    state.step += 1
    if method is not None:
        method.after_step(state, StepOutcome(batch=b, rollout=rollout, entropy=old_entropy, metrics=m))
    return m


def _check_rewards(b: RolloutBatch, step: int, kind: str) -> None:
    """A verifier or reward function that returned NaN or Inf stops the run here, naming the rows, before the
    value can reach the advantages and the weights."""
    bad = torch.nonzero(~torch.isfinite(b.rewards)).squeeze(-1)
    if len(bad):
        rows = bad[:5].tolist()
        raise NonFiniteError(
            f"step {step}: reward of {len(bad)} {kind} row(s) is non-finite (rows {rows}, prompts "
            f"{b.group_ids[bad[:5]].tolist()}: {b.rewards[bad[:5]].tolist()}); check the reward function"
        )


def _normalizer(mask: torch.Tensor, aggregation: str) -> float:
    """What a loss aggregation divides by, up to a constant: tokens (token_mean) or rows (seq_mean, sum_norm)."""
    return float(mask.sum().item()) if aggregation == "token_mean" else float(mask.shape[0])


def _with_old(b: RolloutBatch, old: torch.Tensor) -> RolloutBatch:
    """``b`` with its ratio anchor set; rows whose behaviour log-probs the backend left as NaN (rows it sampled
    from the current weights without a separate forward) get the anchor, which is the same quantity."""
    behavior = torch.where(torch.isnan(b.behavior_logprobs), old, b.behavior_logprobs)
    return b.replace(old_logprobs=old, behavior_logprobs=behavior)


def update_minibatch(
    state: TrainState,
    b: RolloutBatch,
    advantages: torch.Tensor,
    mb_idx: torch.Tensor,
    grpo: GRPOConfig,
    loss_kw: dict[str, Any],
    seen: dict[str, Any] | None = None,
) -> dict[str, float]:
    """One optimiser step on rows ``mb_idx`` of ``b``, in micro-batches of ``grpo.micro_batch_size`` rows.

    Gradient accumulation is exact: every aggregation is a sum over rows divided by tokens (token_mean) or rows
    (seq_mean, sum_norm), so a micro-batch's loss weighted by its share of the minibatch's normaliser sums to
    the minibatch's loss. Under data parallelism (``state.strategy.world_size > 1``: FSDP2, ZeRO-3) a rank gets
    rows ``rank::world_size`` of the minibatch and its loss is scaled by ``world_size``, because the gradients are
    averaged over ranks; every rank runs the same number of micro-batches (a rank whose share is used up runs a
    zero-weight pass), as sharded models need.

    ``seen`` (``{"old": (B, T), "entropy": (B, T), "has_entropy": bool}``) switches on the single-pass mode: each
    row's ratio anchor is its own detached log-probs from this forward (exact when no optimiser step happens
    before every row has been seen); both are written into ``seen`` for every row, those of other ranks too."""
    backend, strategy = state.backend, state.strategy
    world, rank = strategy.world_size, strategy.rank
    mb_mask = b.mask[mb_idx]
    total_norm = _normalizer(mb_mask, grpo.aggregation)
    local = mb_idx[rank::world]
    micro = grpo.micro_batch_size or len(mb_idx)
    n_micro = math.ceil(math.ceil(len(mb_idx) / world) / micro)  # the same on every rank
    state.optimizer.zero_grad(set_to_none=True)
    parts: list[tuple[float, dict[str, float]]] = []
    for j in range(n_micro):
        idx = local[j * micro : (j + 1) * micro]
        weight = 1.0
        if len(idx) == 0:  # this rank's share is used up: a zero-weight pass keeps the ranks in step
            idx, weight = mb_idx[:1], 0.0
        mb = b.select(idx)
        mb_logp, mb_entropy = backend.logprobs(mb)  # (mb, T), differentiable
        mb_old = mb.old_logprobs
        if seen is not None:
            mb_old = mb_logp.detach()
            mb = _with_old(mb, mb_old)
        loss, lm = policy_loss(
            mb_logp,
            mb_old,
            advantages[idx],
            mb.mask,
            is_guide=mb.is_guide,
            behavior_logprobs=mb.behavior_logprobs,
            ref_logprobs=mb.ref_logprobs,
            entropy=mb_entropy,
            **loss_kw,
        )
        if not math.isfinite(lm["loss/total"]) and weight and world == 1:  # several ranks: the global grad norm
            raise NonFiniteError(f"step {state.step}: loss/total is {lm['loss/total']} (non-finite)")
        share = weight * _normalizer(mb.mask, grpo.aggregation) / max(total_norm, 1e-12)
        strategy.backward(loss * (share * world))
        if weight:
            parts.append((share, lm))
        if seen is not None:  # every rank records every micro-batch (a collective under data parallelism)
            _record(seen, idx if weight else idx[:0], mb_old, mb_entropy, world)
    grad_norm = strategy.step(state.optimizer, grpo.max_grad_norm)  # no update when the norm is not finite
    if not math.isfinite(grad_norm):
        raise NonFiniteError(f"step {state.step}: policy/grad_norm is {grad_norm} (non-finite)")
    # metrics: the micro-batches' values weighted by their share of the minibatch (exact for the losses)
    lm = {}
    for k in sorted({k for _, d in parts for k in d}):
        ws = [(w, d[k]) for w, d in parts if k in d]
        lm[k] = sum(w * v for w, v in ws) / max(sum(w for w, _ in ws), 1e-12)
    if world > 1:
        lm = _mean_over_ranks(lm, sum(w for w, _ in parts), world)
    lm["policy/grad_norm"] = grad_norm
    return lm


def _record(seen: dict[str, Any], idx: torch.Tensor, old: torch.Tensor, ent: Any, world: int) -> None:
    """Write one micro-batch's detached log-probs and entropies into ``seen``'s (B, T) buffers, from every rank."""
    if ent is None:
        seen["has_entropy"] = False
    n = len(idx)
    ent_d = torch.zeros_like(old) if ent is None else ent.detach()
    parts = [(idx.cpu(), old.detach()[:n].cpu(), ent_d[:n].cpu())]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, parts[0])
        parts = gathered
    t = seen["old"].shape[1]
    for rows, lp, en in parts:
        if len(rows):
            seen["old"][rows, : min(t, lp.shape[1])] = lp[:, :t]
            seen["entropy"][rows, : min(t, en.shape[1])] = en[:, :t]


def _mean_over_ranks(metrics: dict[str, float], share: float, world: int) -> dict[str, float]:
    """Average metrics over data-parallel ranks, each weighted by its share of the minibatch's normaliser (so the
    losses are the minibatch's exact losses); a key missing on a rank is averaged over the ranks that have it."""
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (share, metrics))
    keys = sorted({k for _, d in gathered for k in d})
    out = {}
    for k in keys:
        ws = [(w, d[k]) for w, d in gathered if k in d]
        total = sum(w for w, _ in ws)
        out[k] = sum(w * v for w, v in ws) / total if total > 0 else sum(v for _, v in ws) / len(ws)
    return out

"""The training loop: one visible GRPO step, and the outer loop that lets NPO look ahead.

grpo_step: prompts -> rollout -> (guide source: gate -> merge) -> old log-probs -> advantages
           -> epochs x minibatches -> log -> (guide source observes the step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from npo_lab.backend import Backend, Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig, RunConfig
from npo_lab.core.advantages import group_advantages
from npo_lab.core.guidance import append_guides, merge_guides
from npo_lab.core.losses import policy_loss
from npo_lab.metrics import Logger, NullLogger
from npo_lab.sources import GUIDE_METRICS, GuideSource
from npo_lab.utils import PromptSampler, timed


class NonFiniteError(RuntimeError):
    """Raised when a loss or gradient is NaN/Inf; names the step and the metric."""


@dataclass
class TrainState:
    """Everything that changes during training (what a snapshot captures)."""

    backend: Backend
    optimizer: torch.optim.Optimizer
    sampler: PromptSampler
    step: int = 0
    ref_policy: Checkpoint | None = None
    total_steps: int = 0
    """The run's length, for the learning-rate schedule (0: unknown, no decay); set by :func:`train`."""


def make_state(backend: Backend, grpo: GRPOConfig, seed: int) -> TrainState:
    """Build the optimizer and the data cursor over ``backend.num_prompts`` (and keep the reference policy
    when the KL term is on)."""
    n_prompts = backend.num_prompts
    if hasattr(backend, "entropy_grad"):  # optional: a backend may skip the entropy's graph when no loss uses it
        backend.entropy_grad = grpo.entropy_coef != 0.0
    # optional: a backend whose engine owns the optimizer (DeepSpeed ZeRO-3) builds it; see update_minibatch
    make_optimizer = getattr(backend, "make_optimizer", None)
    if make_optimizer is not None:
        optimizer = make_optimizer(grpo.lr)
    else:
        optimizer = torch.optim.Adam(list(backend.parameters()), lr=grpo.lr)
    ref = backend.save() if grpo.kl_coef > 0 else None
    return TrainState(backend=backend, optimizer=optimizer, sampler=PromptSampler(n_prompts, seed), ref_policy=ref)


def grpo_step(state: TrainState, grpo: GRPOConfig, source: GuideSource | None = None) -> dict[str, float]:
    """One GRPO iteration on ``state``; a guide ``source`` adds its rows (NPO, AutoNPO, LUFFY, ExGRPO, RLEP).

    Returns the step's metrics (``reward/``, ``policy/``, ``loss/``, ``guide/``, ``time/``).
    """
    backend, m = state.backend, {}
    lr = grpo.lr_at(state.step, state.total_steps)  # a function of the step: look-ahead steps follow the schedule
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    m["charts/lr"] = lr
    prompts = state.sampler.next(grpo.prompts_per_step)
    if source is not None:
        prompts = source.choose_prompts(state, prompts)
    with timed(m, "rollout"):
        b = backend.rollout(prompts, grpo.group_size)  # B = prompts x G rows
    _check_rewards(b, state.step, "on-policy")
    rollout = b  # the on-policy groups before any guide row is merged
    m["reward/on_policy_mean"] = b.rewards.float().mean().item()

    guide_kw: dict[str, Any] = {}
    if source is not None:
        with timed(m, "guide"):
            plan = source.guides(state, b, grpo)
            if plan is not None:
                m.update(plan.metrics)
                guide_kw = plan.loss
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
        aggregation=grpo.aggregation,
        norm_constant=norm_constant,
        kl_coef=grpo.kl_coef,
        kl_estimator=grpo.kl_estimator,
        entropy_coef=grpo.entropy_coef,
        **guide_kw,
    )
    lms: list[dict[str, float]] = []
    seen = None  # single pass: the update forward records each row's anchor and entropy here
    if single_pass:
        seen = {"old": torch.zeros(b.mask.shape), "entropy": torch.zeros(b.mask.shape), "has_entropy": True}
    with timed(m, "update"):
        for _epoch in range(grpo.epochs):
            perm = torch.randperm(b.size) if mb_size < b.size else torch.arange(b.size)
            for start in range(0, b.size, mb_size):
                lm = update_minibatch(state, b, advantages, perm[start : start + mb_size], grpo, loss_kw, seen)
                lms.append(lm)
    if seen is not None:  # the anchor and the entropies the update forward saw, for the guide source
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
    if source is not None:
        source.after_step(state, b, old_entropy, m, rollout)
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
    the minibatch's loss. A data-parallel backend (optional ``world_size`` and ``rank`` attributes, e.g. FSDP2)
    gets rows ``rank::world_size`` of the minibatch and its loss is scaled by ``world_size``, because the
    gradients are averaged over ranks; every rank runs the same number of micro-batches (a rank whose share is
    used up runs a zero-weight pass), as sharded models need.

    ``seen`` (``{"old": (B, T), "entropy": (B, T), "has_entropy": bool}``) switches on the single-pass mode: each
    row's ratio anchor is its own detached log-probs from this forward (exact when no optimiser step happens
    before every row has been seen); both are written into ``seen`` for every row, those of other ranks too.

    A backend whose engine owns backward and the optimizer step (DeepSpeed ZeRO-3: loss scaling, partitioned
    gradients) offers two optional methods: ``backward(loss)`` and ``optimizer_step(max_grad_norm) -> grad norm``,
    which clips, steps, and must not apply a non-finite update (it returns the non-finite norm instead)."""
    backend = state.backend
    backward = getattr(backend, "backward", None)
    engine_step = getattr(backend, "optimizer_step", None)
    world, rank = int(getattr(backend, "world_size", 1)), int(getattr(backend, "rank", 0))
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
        logp, ent = backend.logprobs(mb)  # (mb, T), differentiable
        old = mb.old_logprobs
        if seen is not None:
            old = logp.detach()
            mb = _with_old(mb, old)
        loss, lm = policy_loss(
            logp,
            old,
            advantages[idx],
            mb.mask,
            is_guide=mb.is_guide,
            behavior_logprobs=mb.behavior_logprobs,
            ref_logprobs=mb.ref_logprobs,
            entropy=ent,
            **loss_kw,
        )
        if not math.isfinite(lm["loss/total"]) and weight and world == 1:  # several ranks: the global grad norm
            raise NonFiniteError(f"step {state.step}: loss/total is {lm['loss/total']} (non-finite)")
        share = weight * _normalizer(mb.mask, grpo.aggregation) / max(total_norm, 1e-12)
        scaled = loss * (share * world)
        if backward is None:
            scaled.backward()
        else:
            backward(scaled)
        if weight:
            parts.append((share, lm))
        if seen is not None:  # every rank records every micro-batch (a collective under data parallelism)
            _record(seen, idx if weight else idx[:0], old, ent, world)
    if engine_step is not None:
        gn = torch.as_tensor(float(engine_step(grpo.max_grad_norm)))
    else:
        params = [p for g in state.optimizer.param_groups for p in g["params"]]
        gn = torch.nn.utils.clip_grad_norm_(params, grpo.max_grad_norm or float("inf"))
        if hasattr(gn, "full_tensor"):  # sharded parameters (FSDP2): the norm is a DTensor
            gn = gn.full_tensor()
    if not torch.isfinite(gn):
        raise NonFiniteError(f"step {state.step}: policy/grad_norm is {gn.item()} (non-finite)")
    if engine_step is None:
        state.optimizer.step()
    # metrics: the micro-batches' values weighted by their share of the minibatch (exact for the losses)
    lm = {}
    for k in sorted({k for _, d in parts for k in d}):
        ws = [(w, d[k]) for w, d in parts if k in d]
        lm[k] = sum(w * v for w, v in ws) / max(sum(w for w, _ in ws), 1e-12)
    if world > 1:
        lm = _mean_over_ranks(lm, sum(w for w, _ in parts), world)
    lm["policy/grad_norm"] = gn.item()
    return lm


def _record(seen: dict[str, Any], idx: torch.Tensor, old: torch.Tensor, ent: Any, world: int) -> None:
    """Write one micro-batch's detached log-probs and entropies into ``seen``'s (B, T) buffers, from every rank."""
    if ent is None:
        seen["has_entropy"] = False
    n = len(idx)
    ent_d = torch.zeros_like(old) if ent is None else ent.detach()
    parts = [(idx.cpu(), old.detach()[:n].cpu(), ent_d[:n].cpu())]
    if world > 1:
        import torch.distributed as dist

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
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (share, metrics))
    keys = sorted({k for _, d in gathered for k in d})
    out = {}
    for k in keys:
        ws = [(w, d[k]) for w, d in gathered if k in d]
        total = sum(w for w, _ in ws)
        out[k] = sum(w * v for w, v in ws) / total if total > 0 else sum(v for _, v in ws) / len(ws)
    return out


@dataclass
class RunResult:
    """What one run produced (the comparison aggregates these over seeds)."""

    method: str
    seed: int
    evals: list[tuple[int, float]] = field(default_factory=list)
    interventions: list[int] = field(default_factory=list)
    intervention_costs: list[int] = field(default_factory=list)
    """Look-ahead steps spent at each intervention."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Every decision the guide source logged (interventions with AutoNPO's scores, pool builds)."""
    lookahead_steps: int = 0
    lookahead_s: float = 0.0
    wall_s: float = 0.0
    final_accuracy: float = float("nan")
    train_reward: list[float] = field(default_factory=list)
    """reward/on_policy_mean of every training step (the regime analysis of ``npo-lab compare`` reads it)."""
    zero_std_groups: list[float] = field(default_factory=list)
    """reward/frac_zero_std of every training step."""


def train(
    state: TrainState,
    source: GuideSource | str,
    run: RunConfig,
    grpo: GRPOConfig,
    evaluate: Callable[[], dict[str, float]] | None = None,
    *,
    seed: int = 0,
    logger: Logger | None = None,
    on_step: Callable[[int], None] | None = None,
    save_checkpoint: Callable[[TrainState, dict[str, Any]], None] | None = None,
    events: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> RunResult:
    """Train ``run.steps`` steps on ``state`` with a guide ``source`` (from :func:`npo_lab.sources.make_source`;
    ``"grpo"`` for plain GRPO); evaluate along the way (``state.backend.evaluate`` unless ``evaluate`` is given).

    ``events`` receives every decision a source logs (interventions, AutoNPO's scores, pool builds).
    ``save_checkpoint(state, loop)`` is called every ``run.checkpoint_every`` steps and at the end, between two
    training steps (never inside a look-ahead); ``loop`` is this loop's own state (the source's pools and guide,
    counters, results so far). A run continues exactly from such a checkpoint when ``state`` has been restored
    from it (:func:`npo_lab.checkpoint.restore_training_state`) and its ``loop`` is passed back as ``resume``."""
    if isinstance(source, str):
        if source != "grpo":
            raise ValueError(f"train: pass a GuideSource for method {source!r} (npo_lab.sources.make_source)")
        source = GuideSource()
    source.emit = events
    evaluate = evaluate or state.backend.evaluate
    log = logger or NullLogger()
    result = RunResult(method=source.name, seed=seed)
    state.total_steps = state.total_steps or run.steps
    t_start = time.perf_counter()
    la_step, wall_before, finished = 0, 0.0, False

    def plain_step() -> dict[str, float]:
        nonlocal la_step
        lm = grpo_step(state, grpo)
        log.log({f"lookahead/{k}": v for k, v in lm.items() if k.startswith("reward/")}, la_step)
        la_step += 1
        return lm

    def do_eval() -> None:
        with torch.no_grad():
            em = evaluate()
        result.evals.append((state.step, em["eval/accuracy"]))
        log.log(em, state.step)

    def loop_state() -> dict[str, Any]:
        return {
            "source": source.state_dict(),
            "la_step": la_step,
            "finished": finished,
            "wall_s": wall_before + time.perf_counter() - t_start,
            "evals": [[s, a] for s, a in result.evals],
            "train_reward": list(result.train_reward),
            "zero_std_groups": list(result.zero_std_groups),
        }

    if resume is not None:  # the state is restored; the loop's own state comes back here
        source.load_state_dict(resume["source"])
        la_step, wall_before, finished = int(resume["la_step"]), float(resume["wall_s"]), bool(resume["finished"])
        result.evals = [(int(s), float(a)) for s, a in resume["evals"]]
        result.train_reward = list(resume["train_reward"])
        result.zero_std_groups = list(resume["zero_std_groups"])
    else:
        source.setup(state)
    while state.step < run.steps:
        finished = False  # (a finished run resumed with more steps)
        if state.step % run.eval_every == 0:
            do_eval()
        src_m = source.before_step(state, plain_step)
        t0 = time.perf_counter()
        m = grpo_step(state, grpo, source)
        m["time/step"] = time.perf_counter() - t0
        m.update(src_m)
        m["npo/guided"] = float("guide/gated_frac" in m)
        log.log(m, state.step)
        result.train_reward.append(m["reward/on_policy_mean"])
        result.zero_std_groups.append(m["reward/frac_zero_std"])
        due = run.checkpoint_every and state.step % run.checkpoint_every == 0
        if save_checkpoint is not None and due and state.step < run.steps:  # the last step's is written below
            save_checkpoint(state, loop_state())
        if on_step is not None:
            on_step(1)
    if not finished:  # a run resumed from its final checkpoint has had its last evaluation
        do_eval()
        finished = True
        if save_checkpoint is not None:
            save_checkpoint(state, loop_state())
    result.wall_s = wall_before + time.perf_counter() - t_start
    result.interventions = list(source.interventions)
    result.intervention_costs = list(source.intervention_costs)
    result.lookahead_steps = source.lookahead_steps
    result.lookahead_s = source.lookahead_seconds
    result.events = list(source.events)
    tail = [a for _, a in result.evals[-run.final_evals :]]
    result.final_accuracy = sum(tail) / len(tail)
    log.flush()
    return result

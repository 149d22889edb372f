"""The training loop: evaluate, let the method look ahead (and roll back), take one GRPO step, log, checkpoint.

Everything NPO adds to GRPO's loop is one visible branch here: when the method asks for it
(:meth:`~npo_lab.train.method.Method.wants_lookahead`), the loop trains ahead, keeps the near-future checkpoints,
rolls back exactly (:func:`npo_lab.train.rollback.lookahead`) and hands them to the method
(:meth:`~npo_lab.train.method.Method.use_lookahead`), which then guides the following steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from npo_lab.config import GRPOConfig, RunConfig
from npo_lab.metrics import Logger, NullLogger
from npo_lab.train.method import Method
from npo_lab.train.rollback import lookahead
from npo_lab.train.state import TrainState
from npo_lab.train.step import grpo_step


@dataclass
class RunResult:
    """What one run produced (the comparison aggregates these over seeds)."""

    method: str
    seed: int
    evals: list[tuple[int, float]] = field(default_factory=list)
    interventions: list[int] = field(default_factory=list)
    """Steps at which the method looked ahead."""
    intervention_costs: list[int] = field(default_factory=list)
    """Look-ahead steps spent at each intervention (same order as ``interventions``)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Every decision the method logged (interventions with AutoNPO's scores, pool builds)."""
    lookahead_steps: int = 0
    lookahead_s: float = 0.0
    """Wall time of the look-aheads and of what the method did with them (AutoNPO: scoring its candidates)."""
    wall_s: float = 0.0
    final_accuracy: float = float("nan")
    train_reward: list[float] = field(default_factory=list)
    """reward/on_policy_mean of every training step (the regime analysis of ``npo-lab compare`` reads it)."""
    zero_std_groups: list[float] = field(default_factory=list)
    """reward/frac_zero_std of every training step."""


def train(
    state: TrainState,
    method: Method,
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
    """Train ``run.steps`` steps of ``method`` on ``state``; evaluate every ``run.eval_every`` steps
    (``state.backend.evaluate`` unless ``evaluate`` is given) and at the end.

    Args:
        state: the training state (:func:`npo_lab.train.state.make_state`).
        method: the method (:func:`npo_lab.methods.make_method`; ``npo_lab.methods.GRPO()`` for plain GRPO).
        run: the run's length, evaluation and checkpoint cadence.
        grpo: the GRPO step's settings.
        evaluate: held-out metrics, including ``eval/accuracy``.
        seed: recorded in the result.
        logger: receives every step's metrics (look-ahead steps as ``lookahead/*`` on their own counter).
        on_step: called with 1 after every training step (a progress bar).
        save_checkpoint: ``save_checkpoint(state, loop)`` every ``run.checkpoint_every`` steps and at the end,
            between two training steps (never inside a look-ahead); ``loop`` is this loop's own state.
        events: receives every decision the method logs, as it happens.
        resume: the ``loop`` of a checkpoint whose state ``state`` was restored from: the run continues exactly.
    """
    if isinstance(method, str):  # a name is not a method: say how to make one
        raise ValueError(f"train: pass a method object, e.g. npo_lab.methods.make_method({method!r}, ...), not a name")
    method.emit = events
    evaluate = evaluate or state.backend.evaluate
    log = logger or NullLogger()
    result = RunResult(method=method.name, seed=seed)
    state.total_steps = state.total_steps or run.steps
    t_start = time.perf_counter()
    la_step, wall_before, finished = 0, 0.0, False

    def plain_step() -> dict[str, float]:
        """One look-ahead step: plain GRPO, logged on the look-ahead counter."""
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
            "method": method.state_dict(),
            "interventions": list(result.interventions),
            "intervention_costs": list(result.intervention_costs),
            "lookahead_s": result.lookahead_s,
            "la_step": la_step,
            "finished": finished,
            "wall_s": wall_before + time.perf_counter() - t_start,
            "evals": [[s, a] for s, a in result.evals],
            "train_reward": list(result.train_reward),
            "zero_std_groups": list(result.zero_std_groups),
        }

    if resume is not None:  # the state is restored; the loop's own state comes back here
        resume = upgrade_loop_state(resume)
        method.load_state_dict(resume["method"])
        result.interventions = [int(s) for s in resume["interventions"]]
        result.intervention_costs = [int(c) for c in resume["intervention_costs"]]
        result.lookahead_s = float(resume["lookahead_s"])
        la_step, wall_before, finished = int(resume["la_step"]), float(resume["wall_s"]), bool(resume["finished"])
        result.evals = [(int(s), float(a)) for s, a in resume["evals"]]
        result.train_reward = list(resume["train_reward"])
        result.zero_std_groups = list(resume["zero_std_groups"])
    else:
        method.setup(state)
    while state.step < run.steps:
        finished = False  # (a finished run resumed with more steps)
        if state.step % run.eval_every == 0:
            do_eval()
        t = state.step
        m_method = method.metrics(state)
        ask = method.wants_lookahead(state)
        if ask is not None:  # NPO: train ahead, keep pi_{t+Delta}, roll back to t exactly; the method keeps them
            la = lookahead(state, ask.deltas, plain_step, ask.restore_optimizer)
            t0 = time.perf_counter()
            m_method.update(method.use_lookahead(state, la))
            seconds = la.seconds + time.perf_counter() - t0
            result.interventions.append(t)
            result.intervention_costs.append(la.steps)
            result.lookahead_s += seconds
            m_method["npo/lookahead_steps"] = float(sum(result.intervention_costs))
            m_method["npo/lookahead_s"] = seconds
        t0 = time.perf_counter()
        m = grpo_step(state, grpo, method)
        m["time/step"] = time.perf_counter() - t0
        m.update(m_method)
        m["npo/guided"] = float("guide/gated_frac" in m)
        log.log(m, state.step)  # the step's number once it is done (an evaluation at step s precedes its update)
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
    result.lookahead_steps = sum(result.intervention_costs)
    result.events = list(method.events)
    tail = [a for _, a in result.evals[-run.final_evals :]]
    result.final_accuracy = sum(tail) / len(tail)
    log.flush()
    return result


def upgrade_loop_state(loop: dict[str, Any]) -> dict[str, Any]:
    """The loop state of a checkpoint in today's layout. Checkpoints written before the methods moved to
    ``npo_lab.methods`` kept the intervention counters inside the method's (then "source's") state; they are
    moved out, and the rest of that state is the method's state unchanged."""
    if "source" not in loop:
        return loop
    method = dict(loop["source"])
    moved = {
        "interventions": method.pop("interventions"),
        "intervention_costs": method.pop("intervention_costs"),
        "lookahead_s": method.pop("lookahead_seconds"),
    }
    return {**{k: v for k, v in loop.items() if k != "source"}, "method": method, **moved}

"""The training loop: evaluate, let the method look ahead or roll back, take one GRPO step, log, checkpoint.

Everything NPO and AutoNPO add to GRPO's loop is two visible branches here:

* look-ahead (NPO): when the method asks (:meth:`~npo_lab.train.method.Method.wants_lookahead`), the loop trains
  ahead, keeps the near-future checkpoints, rolls back exactly (:func:`npo_lab.train.rollback.lookahead`) and hands
  them to the method (:meth:`~npo_lab.train.method.Method.use_lookahead`), which guides the replayed steps;
* rollback (AutoNPO): the loop keeps a ring of past states for a method that asks for it
  (:attr:`~npo_lab.train.method.Method.snapshots`); when the method names one
  (:meth:`~npo_lab.train.method.Method.wants_rollback`), the loop restores it exactly, rewinds the logs and results
  to it, counts the discarded steps as extra steps, and trains on from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from npo_lab.config import GRPOConfig, RunConfig
from npo_lab.metrics import Logger, NullLogger
from npo_lab.train.method import Method, RollbackRequest
from npo_lab.train.rollback import lookahead, restore, snapshot
from npo_lab.train.state import TrainState
from npo_lab.train.step import grpo_step


@dataclass
class RunResult:
    """What one run produced (the comparison aggregates these over seeds)."""

    method: str
    seed: int
    evals: list[tuple[int, float]] = field(default_factory=list)
    interventions: list[int] = field(default_factory=list)
    """Steps at which the method spent extra steps: where it looked ahead, or the step a rollback returned to."""
    intervention_costs: list[int] = field(default_factory=list)
    """Extra steps spent at each intervention (same order as ``interventions``): look-ahead steps, or the steps a
    rollback discarded."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Every decision the method logged (interventions with AutoNPO's scores, pool builds)."""
    lookahead_steps: int = 0
    """Extra steps in all: look-ahead steps and steps discarded by rollbacks."""
    lookahead_s: float = 0.0
    """Wall time of the look-aheads, the rollbacks, and what the method did with them (scoring candidates, probes,
    filling its guide cache)."""
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
    on_rollback: Callable[[int], None] | None = None,
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
        on_step: called with 1 after every training step, and with minus the steps a rollback discarded (a progress
            bar).
        save_checkpoint: ``save_checkpoint(state, loop)`` every ``run.checkpoint_every`` steps and at the end,
            between two training steps (never inside a look-ahead); ``loop`` is this loop's own state.
        events: receives every decision the method logs, as it happens.
        resume: the ``loop`` of a checkpoint whose state ``state`` was restored from: the run continues exactly.
        on_rollback: called with the step a rollback returned to (the command line sets aside the checkpoints
            written after it, which belong to the discarded trajectory).
    """
    if isinstance(method, str):  # a name is not a method: say how to make one
        raise ValueError(f"train: pass a method object, e.g. npo_lab.methods.make_method({method!r}, ...), not a name")
    method.emit = events
    evaluate = evaluate or state.backend.evaluate
    log = logger or NullLogger()
    if method.snapshots is not None and not (hasattr(log, "mark") and hasattr(log, "rewind")):
        raise TypeError(
            f"{method.name} may roll back, so its logger must be able to rewind: give {type(log).__name__} the mark() "
            "and rewind() of npo_lab.metrics.Logger (MemoryLogger, CSVLogger and TensorBoardLogger have them)"
        )
    result = RunResult(method=method.name, seed=seed)
    state.total_steps = state.total_steps or run.steps
    t_start = time.perf_counter()
    la_step, wall_before, finished = 0, 0.0, False
    ring: dict[int, tuple[dict[str, Any], Any]] = {}  # step -> (snapshot of the state, the logger's mark there)
    carry: dict[str, float] = {}  # metrics of a rollback, logged with the first step trained after it

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

    def roll_back(back: RollbackRequest, t: int, t0: float) -> dict[str, float]:
        """Put the run back at ``back.to_step`` (a snapshot of the ring): restore the state, cut the logs and the
        results back to it, log the discarded steps' rewards on the extra-step counter, and count them as extra
        steps. Returns the metrics to log with the next trained step."""
        nonlocal la_step, ring
        s = back.to_step
        if s not in ring or s >= t:
            raise ValueError(f"step {t}: {method.name} asked to roll back to step {s}, which no snapshot holds")
        snap, mark = ring[s]
        restore(state, snap)
        log.rewind(mark)  # metrics.csv and TensorBoard keep the trajectory the run keeps
        for r, z in zip(result.train_reward[s:t], result.zero_std_groups[s:t]):
            log.log({"lookahead/reward/on_policy_mean": r, "lookahead/reward/frac_zero_std": z}, la_step)
            la_step += 1
        del result.train_reward[s:], result.zero_std_groups[s:]
        result.evals = [(es, a) for es, a in result.evals if es <= s]
        ring = {k: v for k, v in ring.items() if k < s}
        ring[s] = (snap, log.mark(s))  # the log now ends with these extra steps: a later rollback to s keeps them
        result.interventions.append(s)
        result.intervention_costs.append(t - s)
        m = method.use_rollback(state, back)
        seconds = time.perf_counter() - t0  # the method's probe, its cache and the restore
        result.lookahead_s += seconds
        m.update({"npo/lookahead_steps": float(sum(result.intervention_costs)), "npo/lookahead_s": seconds})
        if on_rollback is not None:
            on_rollback(s)
        if on_step is not None:
            on_step(s - t)  # a progress bar shows the training step the run is at
        return m

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
            "ring": [[s, snap, mark] for s, (snap, mark) in sorted(ring.items())],
            "carry": dict(carry),
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
        ring = {int(s): (snap, mark) for s, snap, mark in resume.get("ring", [])}
        carry = dict(resume.get("carry", {}))
    else:
        method.setup(state)
    while state.step < run.steps:
        finished = False  # (a finished run resumed with more steps)
        t = state.step
        if t % run.eval_every == 0 and not (result.evals and result.evals[-1][0] == t):  # (done before a rollback)
            do_eval()
        ring_cfg = method.snapshots
        if ring_cfg is not None and t % ring_cfg.every == 0 and t not in ring:  # a state a rollback may return to
            ring[t] = (snapshot(state), log.mark(t))
            ring = {s: v for s, v in ring.items() if s >= t - ring_cfg.horizon}
        m_method, carry = {**carry, **method.metrics(state)}, {}
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
        back = method.wants_rollback(state, {s: snap["policy"] for s, (snap, _) in ring.items() if s < t})
        if back is not None:  # AutoNPO: return to an earlier step exactly; the steps since then become extra steps
            carry = roll_back(back, t, t0)
            continue
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

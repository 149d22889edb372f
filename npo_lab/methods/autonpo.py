"""AutoNPO (arXiv 2604.20733): NPO whose interventions are triggered online and whose Delta maximises
Q-hat / V-hat.

Three parts, each testable alone (the first two on synthetic curves, without a model, like verl's
AdaptiveKLController):

* :class:`MistakePool`: a bounded pool of recently failed prompts (on-policy group accuracy below the gate);
* :class:`AutoNPOController`: reads the on-policy reward and the policy entropy of every step and says when to
  look ahead: early bootstrap (accuracy below a floor), reward stagnation (slope of the smoothed reward over a
  window below a threshold), entropy collapse (below a floor or a fraction of its early value), with a cooldown
  between interventions;
* :class:`AutoNPO`, the method: at a trigger, one look-ahead run of max(candidates) steps keeps pi_{t+Delta} for
  every candidate; after the rollback each candidate samples ``q_samples`` rows on the most recent mistake-pool
  prompts; Delta* = argmax Q-hat / V-hat (:func:`npo_lab.core.signal.choose_delta`) guides the next ``cooldown``
  steps with NPO's gate and slots. Every decision is an event.

The paper names the signals; every threshold is an ``AutoNPOConfig`` field marked as an assumption.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from npo_lab.config import AutoNPOConfig, GRPOConfig, MethodConfigs, NPOConfig
from npo_lab.core.signal import choose_delta
from npo_lab.methods.base import failing_groups
from npo_lab.methods.npo import NPO
from npo_lab.train.method import LookaheadRequest, StepOutcome
from npo_lab.train.probe import measure_sources
from npo_lab.train.rollback import LookaheadResult
from npo_lab.train.state import TrainState


class MistakePool:
    """Recently failed prompts, newest first, at most ``capacity`` of them.

    Refresh rule: a prompt whose on-policy group accuracy is below the gate enters (or moves) to the front;
    when the pool is full the oldest failure falls out; with ``refresh="solved"`` a prompt also leaves as soon
    as a later group of it reaches the gate.

    >>> pool = MistakePool(capacity=2)
    >>> pool.update({1: 0.0, 2: 0.9, 3: 0.25}, gate=0.6); pool.prompts()
    [3, 1]
    >>> pool.update({4: 0.0, 3: 1.0}, gate=0.6); pool.prompts()
    [4, 1]
    """

    def __init__(self, capacity: int = 256, refresh: str = "solved") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if refresh not in ("fifo", "solved"):
            raise ValueError(f"refresh must be 'fifo' or 'solved', got {refresh!r}")
        self.capacity, self.refresh = capacity, refresh
        self._items: OrderedDict[int, float] = OrderedDict()  # prompt -> accuracy when last seen; newest last

    def __len__(self) -> int:
        return len(self._items)

    def update(self, group_acc: dict[int, float], gate: float) -> None:
        """Add the prompts below ``gate``; drop solved ones (``refresh="solved"``); keep at most ``capacity``."""
        for p, acc in sorted(group_acc.items()):
            if acc < gate:
                self._items.pop(p, None)
                self._items[p] = acc
            elif self.refresh == "solved":
                self._items.pop(p, None)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)  # the oldest failure

    def prompts(self, n: int | None = None) -> list[int]:
        """The ``n`` most recent failures (all when ``n`` is None), newest first."""
        items = list(reversed(self._items))
        return items if n is None else items[:n]

    def state_dict(self) -> dict[str, Any]:
        return {"items": list(self._items.items())}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self._items = OrderedDict((int(p), float(a)) for p, a in d["items"])


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against 0, 1, 2, ... (per step).

    >>> slope([1.0, 2.0, 3.0]), slope([5.0, 5.0])
    (1.0, 0.0)
    """
    n = len(values)
    if n < 2:
        return 0.0
    xm = (n - 1) / 2
    ym = sum(values) / n
    num = sum((i - xm) * (v - ym) for i, v in enumerate(values))
    den = sum((i - xm) ** 2 for i in range(n))
    return num / den


class AutoNPOController:
    """Decides when AutoNPO looks ahead.

    Call :meth:`observe` after every training step with its on-policy reward and entropy, :meth:`trigger`
    before a step (returns the reason or None), and :meth:`record` when an intervention happened.

    >>> c = AutoNPOController(AutoNPOConfig(window=5, cooldown=3, bootstrap_until=0))
    >>> for t in range(10): c.observe(t, reward=0.5, entropy=1.0)
    >>> c.trigger(10)
    'stagnation'
    """

    def __init__(self, cfg: AutoNPOConfig) -> None:
        self.cfg = cfg
        self.smoothed: list[float] = []  # EMA of the on-policy reward, one per observed step
        self.entropy_ema: float | None = None
        self.early_entropy: list[float] = []
        self.last_intervention: int | None = None
        self.since_last = 0  # steps observed since the last intervention (or the start)
        self.count = 0
        self.last: dict[str, float] = {}

    def observe(self, step: int, reward: float, entropy: float | None = None) -> None:
        a = self.cfg.smoothing
        prev = self.smoothed[-1] if self.smoothed else reward
        self.smoothed.append(prev + a * (reward - prev) if self.smoothed else reward)
        self.smoothed = self.smoothed[-self.cfg.window :]
        if entropy is not None and entropy == entropy:
            self.entropy_ema = (
                entropy if self.entropy_ema is None else self.entropy_ema + a * (entropy - self.entropy_ema)
            )
            if len(self.early_entropy) < self.cfg.window:
                self.early_entropy.append(entropy)
        self.since_last += 1
        self.last = {"reward": reward, "smoothed": self.smoothed[-1], "slope": self.reward_slope()}

    def reward_slope(self) -> float:
        """Slope of the smoothed reward over the last ``window`` observed steps."""
        return slope(self.smoothed[-self.cfg.window :])

    def trigger(self, step: int) -> str | None:
        """``bootstrap``, ``stagnation``, ``entropy_collapse`` or None (cooldown, cap, or no signal)."""
        cfg = self.cfg
        if cfg.max_interventions and self.count >= cfg.max_interventions:
            return None
        if self.last_intervention is not None and step - self.last_intervention < cfg.cooldown:
            return None
        if not self.smoothed:
            return None
        if step < cfg.bootstrap_until and self.smoothed[-1] < cfg.bootstrap_floor:
            return "bootstrap"
        full = self.since_last >= cfg.window and len(self.smoothed) >= cfg.window
        if full and self.reward_slope() < cfg.stagnation_slope:
            return "stagnation"
        if self.entropy_ema is not None and len(self.early_entropy) >= cfg.window and self.since_last >= cfg.window:
            early = sum(self.early_entropy) / len(self.early_entropy)
            if cfg.entropy_floor > 0 and self.entropy_ema < cfg.entropy_floor:
                return "entropy_collapse"
            if cfg.entropy_fraction > 0 and self.entropy_ema < cfg.entropy_fraction * early:
                return "entropy_collapse"
        return None

    def record(self, step: int, counted: bool = True) -> None:
        """An intervention happened at ``step``: start the cooldown and a fresh stagnation window.

        ``counted=False`` (a trigger that could not act, e.g. an empty mistake pool) starts the cooldown
        without counting towards ``max_interventions``."""
        self.last_intervention = step
        self.since_last = 0
        self.count += int(counted)

    def state_dict(self) -> dict[str, Any]:
        return {
            "smoothed": list(self.smoothed),
            "entropy_ema": self.entropy_ema,
            "early_entropy": list(self.early_entropy),
            "last_intervention": self.last_intervention,
            "since_last": self.since_last,
            "count": self.count,
            "last": dict(self.last),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.smoothed = list(d["smoothed"])
        self.entropy_ema = d["entropy_ema"]
        self.early_entropy = list(d["early_entropy"])
        self.last_intervention = d["last_intervention"]
        self.since_last = d["since_last"]
        self.count = d["count"]
        self.last = dict(d.get("last", {}))


class AutoNPO(NPO):
    """AutoNPO: NPO's guided steps, with interventions triggered online and Delta* = argmax Q-hat / V-hat."""

    name = "autonpo"

    def __init__(self, auto: AutoNPOConfig, cfg: NPOConfig, total_steps: int, correct_threshold: float = 0.5) -> None:
        super().__init__(cfg, total_steps, correct_threshold)
        self.schedule = []
        self.auto = auto
        self.controller = AutoNPOController(auto)
        self.pool = MistakePool(auto.pool_size, auto.pool_refresh)
        self.chosen: list[int] = []
        self._trigger: tuple[str, list[int]] | None = None  # this step's reason and pool prompts, until scored

    @classmethod
    def from_configs(cls, cfgs: MethodConfigs, *, total_steps: int, grpo: GRPOConfig, **_: Any) -> AutoNPO:
        return cls(cfgs.autonpo, cfgs.npo, total_steps, grpo.correct_threshold)

    def metrics(self, state: TrainState) -> dict[str, float]:
        c = self.controller
        return {
            "autonpo/pool_size": float(len(self.pool)),
            "autonpo/reward_slope": c.reward_slope(),
            # the two signals the triggers read, as the controller sees them
            "autonpo/smoothed_reward": c.smoothed[-1] if c.smoothed else float("nan"),
            "autonpo/entropy_ema": c.entropy_ema if c.entropy_ema is not None else float("nan"),
        }

    def wants_lookahead(self, state: TrainState) -> LookaheadRequest | None:
        t = state.step
        reason = self.controller.trigger(t)
        if reason is None:
            return None
        prompts = self.pool.prompts(self.auto.q_prompts)
        if not prompts:
            self.event(step=t, kind="skipped", reason=reason, why="the mistake pool is empty")
            self.controller.record(t, counted=False)  # wait a cooldown before asking again
            return None
        self._trigger = (reason, prompts)
        return LookaheadRequest(self.auto.candidates, self.cfg.restore_optimizer)

    def use_lookahead(self, state: TrainState, result: LookaheadResult) -> dict[str, float]:
        assert self._trigger is not None, "use_lookahead without a trigger"
        (reason, prompts), self._trigger = self._trigger, None
        t, t0 = state.step, time.perf_counter()
        # scored after the rollback: the backend's current weights are pi_t again
        scores = measure_sources(
            state.backend,
            prompts,
            result.checkpoints,
            k=self.auto.q_samples,
            correct_threshold=self.thr,
            estimator=self.auto.v_estimator,
            floor=self.auto.v_floor,
            max_grad_rows=self.auto.max_grad_rows,
        )
        deltas = sorted(scores)
        best, s = choose_delta(deltas, [scores[d]["q"] for d in deltas], [scores[d]["v"] for d in deltas])
        seconds = result.seconds + time.perf_counter() - t0  # look-ahead + scoring every candidate
        scoring_rows = len(prompts) * self.auto.q_samples * len(deltas)
        self.controller.record(t)
        self.event(
            step=t,
            kind="intervention",
            reason=reason,
            pool=len(prompts),
            reward_slope=self.controller.reward_slope(),
            candidates={d: scores[d] for d in deltas},
            delta=best,
            scoring_rows=scoring_rows,
            seconds=seconds,
        )
        if best is not None:
            self.chosen.append(best)
            self._open_window(t, result.checkpoints[best], t + self.auto.cooldown)
        nan = float("nan")
        return {
            "autonpo/triggered": 1.0,
            "autonpo/reason_" + reason: 1.0,
            "autonpo/delta": float(best) if best is not None else nan,
            "autonpo/q_hat": scores[best]["q"] if best is not None else nan,
            "autonpo/v_hat": scores[best]["v"] if best is not None else nan,
            "autonpo/s_hat": max((x for x in s if x == x), default=nan),
            "autonpo/scoring_rows": float(scoring_rows),
        }

    def after_step(self, state: TrainState, outcome: StepOutcome) -> None:
        # group accuracy of the full on-policy group, before a guide replaced one of its rows
        acc, _ = failing_groups(outcome.rollout, self.cfg.gate, self.thr)
        self.pool.update(acc, self.cfg.gate)
        ent = None
        batch, entropy = outcome.batch, outcome.entropy
        if entropy is not None:  # mean token entropy of the policy on its own (on-policy) rows
            on = (~batch.is_guide).unsqueeze(-1).float() * batch.mask  # (B, T)
            ent = ((entropy * on).sum() / on.sum().clamp(min=1.0)).item()
        self.controller.observe(state.step - 1, outcome.metrics["reward/on_policy_mean"], ent)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "controller": self.controller.state_dict(),
            "pool": self.pool.state_dict(),
            "chosen": list(self.chosen),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.controller.load_state_dict(d["controller"])
        self.pool.load_state_dict(d["pool"])
        self.chosen = list(d["chosen"])

"""AutoNPO's state: when to intervene (online triggers) and which prompts to score candidates on.

Two small objects, unit-testable on synthetic curves without a model (like verl's AdaptiveKLController):

* :class:`MistakePool`: a bounded pool of recently failed prompts (on-policy group accuracy below the gate).
* :class:`AutoNPOController`: reads the on-policy reward and the policy entropy of every step and says when
  to look ahead: early bootstrap (accuracy below a floor), reward stagnation (slope of the smoothed reward
  over a window below a threshold), entropy collapse (below a floor or a fraction of its early value), with
  a cooldown between interventions.

The paper (arXiv 2604.20733) names these signals; every threshold is an ``AutoNPOConfig`` field marked as
an assumption. The choice of Delta (argmax Q-hat / V-hat) is :func:`npo_lab.core.qvs.choose_delta`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from npo_lab.config import AutoNPOConfig


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

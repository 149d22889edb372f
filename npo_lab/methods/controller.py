"""AutoNPO's online signals, testable without a model (on synthetic curves, like verl's AdaptiveKLController):

* :class:`MistakePool`: a bounded pool of recently failed prompts, each with the step it last failed at;
* :class:`AutoNPOController`: reads the on-policy reward and the policy entropy of every step and says when to
  intervene. Retrospective AutoNPO (:meth:`AutoNPOController.warning`): the smoothed reward stagnates *and* the
  entropy keeps falling [paper-reading]. The look-ahead reading (:meth:`AutoNPOController.trigger`): early bootstrap,
  reward stagnation *or* entropy collapse. Both keep a cooldown between interventions and a cap on their number.

The paper names the signals; every threshold is an ``AutoNPOConfig`` field marked as an assumption. NPO's
``npo.when = plateau`` uses the stagnation test alone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from npo_lab.config import AutoNPOConfig


class MistakePool:
    """Recently failed prompts, newest first, at most ``capacity`` of them, each with the step it last failed at.

    Refresh rule: a prompt whose on-policy group passes the gate (it failed) enters, or moves, to the front with the
    step; when the pool is full the oldest failure falls out; with ``refresh="solved"`` a prompt also leaves as soon
    as a later group of it is above the gate.

    >>> pool = MistakePool(capacity=2)
    >>> pool.update({1: 0.0, 2: 0.9, 3: 0.25}, gate=0.6, step=7); pool.prompts()
    [3, 1]
    >>> pool.update({4: 0.0, 3: 1.0}, gate=0.6, step=8); pool.prompts(), pool.failed_in(8, 9)
    ([4, 1], [4])
    """

    def __init__(self, capacity: int = 256, refresh: str = "solved") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if refresh not in ("fifo", "solved"):
            raise ValueError(f"refresh must be 'fifo' or 'solved', got {refresh!r}")
        self.capacity, self.refresh = capacity, refresh
        self._items: OrderedDict[int, tuple[float, int]] = OrderedDict()  # prompt -> (accuracy, step); newest last

    def __len__(self) -> int:
        return len(self._items)

    def update(self, group_acc: dict[int, float], gate: float, step: int = -1, op: str = "lt") -> None:
        """Add the prompts the gate lets through (accuracy < ``gate``, or <= with ``op="le"``) as failed at
        ``step``; drop solved ones (``refresh="solved"``); keep at most ``capacity``."""
        for p, acc in sorted(group_acc.items()):
            if acc < gate or (op == "le" and acc <= gate):
                self._items.pop(p, None)
                self._items[p] = (acc, step)
            elif self.refresh == "solved":
                self._items.pop(p, None)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)  # the oldest failure

    def prompts(self, n: int | None = None) -> list[int]:
        """The ``n`` most recent failures (all when ``n`` is None), newest first."""
        items = list(reversed(self._items))
        return items if n is None else items[:n]

    def failed_in(self, lo: int, hi: int) -> list[int]:
        """Prompts whose last failure was at a step in [lo, hi), newest first."""
        return [p for p in reversed(self._items) if lo <= self._items[p][1] < hi]

    def forget_from(self, step: int) -> None:
        """Drop the failures recorded at ``step`` or later (a rollback to ``step`` discards them: the replay meets
        those prompts again and records what happens then)."""
        for p in [p for p, (_, s) in self._items.items() if s >= step]:
            del self._items[p]

    def state_dict(self) -> dict[str, Any]:
        return {"items": [[p, a, s] for p, (a, s) in self._items.items()]}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        # an item of a checkpoint written before failure steps were kept has two entries: its step is unknown (-1)
        self._items = OrderedDict((int(it[0]), (float(it[1]), int(it[2]) if len(it) > 2 else -1)) for it in d["items"])


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
    """Decides when AutoNPO intervenes.

    Call :meth:`observe` after every training step with its on-policy reward and entropy, :meth:`warning`
    (retrospective AutoNPO) or :meth:`trigger` (the look-ahead reading) before a step (each returns the reason or
    None), and :meth:`record` when an intervention happened.

    >>> c = AutoNPOController(AutoNPOConfig(window=5, cooldown=3, bootstrap_until=0))
    >>> for t in range(10): c.observe(t, reward=0.5, entropy=1.0 - 0.01 * t)
    >>> c.trigger(10), c.warning(10)
    ('stagnation', 'plateau')
    """

    def __init__(self, cfg: AutoNPOConfig) -> None:
        self.cfg = cfg
        self.smoothed: list[float] = []  # EMA of the on-policy reward, one per observed step (the last `window`)
        self.entropy_ema: float | None = None
        self.entropy_smoothed: list[float] = []  # the entropy EMA, one per observed step (the last `window`)
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
            self.entropy_smoothed = (self.entropy_smoothed + [self.entropy_ema])[-self.cfg.window :]
            if len(self.early_entropy) < self.cfg.window:
                self.early_entropy.append(entropy)
        self.since_last += 1
        self.last = {"reward": reward, "smoothed": self.smoothed[-1], "slope": self.reward_slope()}

    def reward_slope(self) -> float:
        """Slope of the smoothed reward over the last ``window`` observed steps."""
        return slope(self.smoothed[-self.cfg.window :])

    def entropy_slope(self) -> float:
        """Slope of the entropy's EMA over the last ``window`` observed steps (NaN before any entropy)."""
        return slope(self.entropy_smoothed) if self.entropy_smoothed else float("nan")

    def _waiting(self, step: int) -> bool:
        """In the cooldown, at the cap, or without a full window of observations since the last intervention."""
        cfg = self.cfg
        if cfg.max_interventions and self.count >= cfg.max_interventions:
            return True
        if self.last_intervention is not None and step - self.last_intervention < cfg.cooldown:
            return True
        return not self.smoothed

    def warning(self, step: int) -> str | None:
        """Retrospective AutoNPO's warning: ``plateau`` when the smoothed reward stagnates (slope below
        ``stagnation_slope``) *and* the entropy keeps falling (its EMA's slope below ``entropy_slope``), over a full
        window since the last intervention; None otherwise."""
        cfg = self.cfg
        if self._waiting(step):
            return None
        full = self.since_last >= cfg.window and len(self.smoothed) >= cfg.window
        if not full or len(self.entropy_smoothed) < cfg.window:
            return None
        stagnant = self.reward_slope() < cfg.stagnation_slope
        falling = self.entropy_slope() < cfg.entropy_slope
        return "plateau" if stagnant and falling else None

    def trigger(self, step: int) -> str | None:
        """The look-ahead reading: ``bootstrap``, ``stagnation``, ``entropy_collapse`` or None (cooldown, cap, or no
        signal)."""
        cfg = self.cfg
        if self._waiting(step):
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
            "entropy_smoothed": list(self.entropy_smoothed),
            "early_entropy": list(self.early_entropy),
            "last_intervention": self.last_intervention,
            "since_last": self.since_last,
            "count": self.count,
            "last": dict(self.last),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.smoothed = list(d["smoothed"])
        self.entropy_ema = d["entropy_ema"]
        self.entropy_smoothed = list(d.get("entropy_smoothed", []))
        self.early_entropy = list(d["early_entropy"])
        self.last_intervention = d["last_intervention"]
        self.since_last = d["since_last"]
        self.count = d["count"]
        self.last = dict(d.get("last", {}))

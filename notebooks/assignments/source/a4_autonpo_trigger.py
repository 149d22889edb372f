# %% [markdown]
# # Assignment 4: when should AutoNPO look ahead? A stagnation trigger
#
# **Goal.** Write the reward-stagnation trigger of AutoNPO, with its cooldown, and check that it fires on
# exactly the same steps as `npo_lab.methods.autonpo.AutoNPOController`. About 40 minutes on a CPU.
#
# NPO looks ahead at fixed steps chosen by hand. AutoNPO (same paper, arXiv 2604.20733) decides online, from
# signals it reads after every training step: reward stagnation, entropy collapse, and an early bootstrap
# when almost nothing is solved. Each look-ahead costs Δ extra training steps, so the trigger must not fire
# on noise, nor fire again right after an intervention. npo_lab's stagnation trigger (docs/algorithm.md
# section 4; every threshold an `autonpo.*` field):
#
# * **Smoothing.** The batch accuracy r_t is noisy; AutoNPO reads its exponential moving average,
#   $\bar r_t = \bar r_{t-1} + \alpha\,(r_t - \bar r_{t-1})$ with $\bar r_0 = r_0$ and α = `smoothing` (0.1).
# * **Stagnation.** The least-squares slope of $\bar r$ over the last W = `window` (40) observed steps is below
#   `stagnation_slope` (5e-4 per step), and at least W steps were observed since the last intervention (or
#   since the start).
# * **Cooldown and cap.** No trigger within `cooldown` (60) steps of the last intervention, nor after
#   `max_interventions` (4; 0 = no limit) interventions.
#
# The training loop calls, at every step t: `should_intervene(t)` before the step (and `record(t)` if it
# looked ahead), then `observe(r_t)` after it.
#
# **Rules.** Replace every `raise NotImplementedError`, Python only. Keep names and signatures.

# %%
from collections.abc import Sequence

# %% [markdown]
# ## 4.1 The moving average and the slope
#
# `slope` fits v_i ≈ a + b·i for i = 0, 1, ..., n-1 by least squares and returns b; fewer than two values have
# slope 0.


# %%
def ema(values: Sequence[float], smoothing: float) -> list[float]:
    """Exponential moving average: out[0] = values[0], out[t] = out[t-1] + smoothing * (values[t] - out[t-1]).

    Args:
        values: the raw curve (length n >= 0).
        smoothing: alpha in (0, 1], the weight of the newest value.

    Returns:
        the smoothed curve, a list of length n.
    """
    ### BEGIN SOLUTION
    out: list[float] = []
    for v in values:
        out.append(v if not out else out[-1] + smoothing * (v - out[-1]))
    return out
    ### END SOLUTION


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against 0, 1, ..., n-1 (0.0 when n < 2)."""
    ### BEGIN SOLUTION
    n = len(values)
    if n < 2:
        return 0.0
    xm, ym = (n - 1) / 2, sum(values) / n
    num = sum((i - xm) * (v - ym) for i, v in enumerate(values))
    den = sum((i - xm) ** 2 for i in range(n))
    return num / den
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 4.1: slope against npo_lab.methods.autonpo.slope, ema against the controller's smoothed curve.
import random

from npo_lab.config import AutoNPOConfig
from npo_lab.methods.autonpo import AutoNPOController
from npo_lab.methods.autonpo import slope as lib_slope

rng = random.Random(0)
curve = [min(1.0, max(0.0, 0.3 + 0.002 * t + rng.gauss(0, 0.05))) for t in range(60)]
assert abs(slope(curve) - lib_slope(curve)) < 1e-12 and slope([1.0, 2.0, 3.0]) == 1.0 and slope([5.0]) == 0.0
controller = AutoNPOController(AutoNPOConfig(window=60, smoothing=0.1))
for t, r in enumerate(curve):
    controller.observe(t, r)
assert max(abs(a - b) for a, b in zip(ema(curve, 0.1), controller.smoothed)) < 1e-12
print("4.1 OK")

# %% [markdown]
# ## 4.2 The trigger
#
# Keep in the object what the rule needs: the smoothed curve (the last `window` values are enough), the step
# of the last intervention, the number of steps observed since then, and the number of interventions.


# %%
class StagnationTrigger:
    """AutoNPO's reward-stagnation trigger with a cooldown and a cap on interventions."""

    def __init__(
        self,
        window: int = 40,
        smoothing: float = 0.1,
        stagnation_slope: float = 5e-4,
        cooldown: int = 60,
        max_interventions: int = 4,
    ) -> None:
        self.window, self.smoothing, self.stagnation_slope = window, smoothing, stagnation_slope
        self.cooldown, self.max_interventions = cooldown, max_interventions
        ### BEGIN SOLUTION
        self.smoothed: list[float] = []  # EMA of the reward, the last `window` values
        self.last_intervention: int | None = None
        self.since_last = 0  # steps observed since the last intervention (or the start)
        self.count = 0
        ### END SOLUTION

    def observe(self, reward: float) -> None:
        """Read the on-policy batch accuracy of the step that just ended."""
        ### BEGIN SOLUTION
        prev = self.smoothed[-1] if self.smoothed else reward
        self.smoothed = (self.smoothed + [prev + self.smoothing * (reward - prev)])[-self.window :]
        self.since_last += 1
        ### END SOLUTION

    def should_intervene(self, step: int) -> bool:
        """True if AutoNPO should look ahead before training ``step``."""
        ### BEGIN SOLUTION
        if self.max_interventions and self.count >= self.max_interventions:
            return False
        if self.last_intervention is not None and step - self.last_intervention < self.cooldown:
            return False
        if self.since_last < self.window or len(self.smoothed) < self.window:
            return False
        return slope(self.smoothed[-self.window :]) < self.stagnation_slope
        ### END SOLUTION

    def record(self, step: int) -> None:
        """An intervention happened before ``step``: start the cooldown and a fresh window."""
        ### BEGIN SOLUTION
        self.last_intervention = step
        self.since_last = 0
        self.count += 1
        ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 4.2: on a noisy curve that rises, plateaus, rises again and plateaus, your trigger fires on the
# same steps as npo_lab's controller (its bootstrap and entropy triggers switched off).
def reward_curve(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    level = [0.1 + 0.004 * min(t, 80) + 0.003 * max(0, min(t, 260) - 180) for t in range(n)]
    return [min(1.0, max(0.0, x + rng.gauss(0, 0.04))) for x in level]


def fired_steps(trigger_fn, record_fn, observe_fn, curve: list[float]) -> list[int]:
    fired = []
    for t, r in enumerate(curve):
        if trigger_fn(t):
            record_fn(t)
            fired.append(t)
        observe_fn(t, r)
    return fired


cfg = dict(window=30, smoothing=0.1, stagnation_slope=5e-4, cooldown=40, max_interventions=4)
curve = reward_curve(400, seed=1)
mine = StagnationTrigger(**cfg)
lib = AutoNPOController(AutoNPOConfig(**cfg, bootstrap_until=0, entropy_fraction=0.0))
got = fired_steps(mine.should_intervene, mine.record, lambda t, r: mine.observe(r), curve)
want = fired_steps(lambda t: lib.trigger(t) == "stagnation", lib.record, lib.observe, curve)
assert got == want, (got, want)
print("4.2 OK: fires at steps", got)

# %% [markdown]
# Plot the curve, its EMA and the steps where the trigger fires (this cell only runs once 4.1 and 4.2 work).

# %% tags=["demo"]
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(curve, alpha=0.4, label="batch accuracy")
ax.plot(ema(curve, 0.1), label="EMA (α = 0.1)")
for t in got:
    ax.axvline(t, color="k", ls=":")
ax.set(xlabel="step", ylabel="reward", title="stagnation triggers (dotted)")
ax.legend()

# %% [markdown]
# ## Going further (not graded)
#
# * Add the **bootstrap** trigger: before step `bootstrap_until` (50), fire when the smoothed reward is below
#   `bootstrap_floor` (0.2), still respecting the cooldown. Compare with `AutoNPOController.trigger`, which
#   returns the reason (`"bootstrap"`, `"stagnation"`, `"entropy_collapse"`).
# * Add **entropy collapse**: the EMA of the policy's mean token entropy falls below `entropy_fraction` (0.5) of
#   its mean over the first W steps.
#
# ## Questions (not graded automatically)
#
# 1. Why must at least W steps be observed *since the last intervention* before stagnation can fire again,
#    even after the cooldown?
# 2. With α = 0.1, how many steps does the EMA take to cover 90% of a step change in the reward? What does
#    that mean for a window of W = 40?
# 3. What does `stagnation_slope` = 5e-4 mean in accuracy points over a window of 40 steps? Is that above or
#    below the noise of a batch of 128 rows at accuracy 0.5?

# %% tags=["instructor"]
# Answers.
# 1. The guided steps after an intervention change the curve; the slope must be measured on a window that
#    lies entirely after the intervention, otherwise the pre-intervention plateau would trigger again at once.
# 2. (1 - 0.1)^n = 0.1 gives n = log(0.1) / log(0.9) = 22 steps: about half the window is spent catching up
#    with a change, which is why the slope is read over a whole window and not the last few steps.
# 3. 5e-4 per step is 0.02 (2 points) over 40 steps. One batch accuracy has a standard deviation of
#    sqrt(0.25 / 128) = 0.044; the EMA divides the variance by about (2 - a) / a = 19, so the smoothed curve's
#    noise is about 0.01, and the least-squares slope over 40 correlated points still wanders by about 1e-4
#    to 1e-3 per step: the threshold sits near the noise of a flat curve, as the config's docstring says.
import math

print(f"EMA steps to cover 90% of a change: {math.log(0.1) / math.log(0.9):.1f}")

"""Small gymnasium environments with a verifiable success condition, registered as ``npo_lab/...-v0``.

In these tasks a GRPO "prompt" is a reset seed and a group is G episodes started from it; the reward of an
episode is 1.0 if it succeeded and 0.0 otherwise, so GRPO, NPO and AutoNPO apply unchanged.

Registered ids (time limits come from the registration's ``max_episode_steps``, never from the env):

==============================  ==================================================  ==================
id                              task                                                 max_episode_steps
==============================  ==================================================  ==================
``npo_lab/Chain-v0``            combination lock, 8 binary digits                    8
``npo_lab/ChainEasy-v0``        combination lock, 3 binary digits (the easiest)      3
``npo_lab/KeyDoor-v0``          5x5 grid: pick up the key, then reach the door       25
``npo_lab/FrozenLake-v0``       gymnasium's FrozenLake 4x4 (not slippery), success   30
``npo_lab/CartPoleBalance-v0``  gymnasium's CartPole, success = balance 100 steps    100
==============================  ==================================================  ==================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ChainEnv(gym.Env):
    """Combination lock: enter ``length`` digits, each one of ``n_actions``, in the one right order.

    ## Observation
    ``Box(0, 1, (length + 1,), float32)``: one-hot of the number of digits entered correctly so far.

    ## Action
    ``Discrete(n_actions)``: the next digit.

    ## Reward and success
    1.0 when the last digit is entered (success, the episode terminates); a wrong digit jams the lock: the
    episode terminates with reward 0.0. A uniformly random policy succeeds with probability
    ``n_actions ** -length`` (1/256 for ``npo_lab/Chain-v0``): success is sparse early, as in RLVR.

    ## Difficulty knobs
    ``length``, ``n_actions``; ``slip``: probability that the entered digit is replaced by a random one
    (drawn from the reset seed's generator, so a seed fixes the noise sequence); ``combination_seed`` picks
    the combination (fixed for the environment, as FrozenLake's map is).

    ## Starting state
    Nothing entered. A reset seed matters only through ``slip``.
    """

    metadata = {"render_modes": []}

    def __init__(self, length: int = 8, n_actions: int = 2, slip: float = 0.0, combination_seed: int = 0) -> None:
        if length < 1 or n_actions < 2 or not 0.0 <= slip < 1.0:
            raise ValueError(
                f"ChainEnv needs length >= 1, n_actions >= 2, slip in [0, 1); got {length}, {n_actions}, {slip}"
            )
        self.length, self.n_actions, self.slip = length, n_actions, slip
        self.combination = np.random.default_rng(combination_seed).integers(n_actions, size=length)
        self.observation_space = spaces.Box(0.0, 1.0, (length + 1,), np.float32)
        self.action_space = spaces.Discrete(n_actions)
        self.pos = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length + 1, np.float32)
        obs[self.pos] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {"success": False}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(action)
        if self.slip > 0 and self.np_random.random() < self.slip:
            a = int(self.np_random.integers(self.n_actions))
        if a != self.combination[self.pos]:
            return self._obs(), 0.0, True, False, {"success": False}  # jammed
        self.pos += 1
        done = self.pos == self.length
        return self._obs(), float(done), done, False, {"success": done}


class KeyDoorEnv(gym.Env):
    """Key and door on a ``size`` x ``size`` grid: walk onto the key to pick it up, then onto the door.

    ## Observation
    ``Box(0, 1, (3 * size * size + 1,), float32)``: one-hot planes of the agent, the key (empty once picked
    up) and the door, flattened, then 1.0 if the agent holds the key.

    ## Action
    ``Discrete(4)``: up, right, down, left; a move into the outer wall stays in place.

    ## Reward and success
    1.0 when the agent steps onto the door holding the key (success, the episode terminates); 0.0 otherwise.
    The door without the key is just a floor cell. Success needs two sub-goals in order, within the time
    limit; random actions succeed in about 10% of episodes on the registered 5x5 grid, and a memoryless policy
    has to generalise over the placements: GRPO plateaus near 0.45 greedy success there (docs/benchmarks.md).
    A larger ``size`` makes the key rarely found.

    ## Starting state
    The reset seed places the agent, the key and the door on three distinct cells.

    ## Difficulty knobs
    ``size``, and the registration's time limit.
    """

    metadata = {"render_modes": []}
    MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))

    def __init__(self, size: int = 5) -> None:
        if size < 2:
            raise ValueError(f"KeyDoorEnv needs size >= 2, got {size}")
        self.size = size
        self.observation_space = spaces.Box(0.0, 1.0, (3 * size * size + 1,), np.float32)
        self.action_space = spaces.Discrete(4)
        self.agent = self.key = self.door = (0, 0)
        self.has_key = False

    def _obs(self) -> np.ndarray:
        n = self.size * self.size
        obs = np.zeros(3 * n + 1, np.float32)
        obs[self.agent[0] * self.size + self.agent[1]] = 1.0
        if not self.has_key:
            obs[n + self.key[0] * self.size + self.key[1]] = 1.0
        obs[2 * n + self.door[0] * self.size + self.door[1]] = 1.0
        obs[-1] = float(self.has_key)
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        cells = self.np_random.choice(self.size * self.size, size=3, replace=False)
        self.agent, self.key, self.door = (divmod(int(c), self.size) for c in cells)
        self.has_key = False
        return self._obs(), {"success": False}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        dr, dc = self.MOVES[int(action)]
        r = min(max(self.agent[0] + dr, 0), self.size - 1)
        c = min(max(self.agent[1] + dc, 0), self.size - 1)
        self.agent = (r, c)
        if not self.has_key and self.agent == self.key:
            self.has_key = True
        success = self.has_key and self.agent == self.door
        return self._obs(), float(success), success, False, {"success": success}


class VerifiableSuccess(gym.Wrapper):
    """Turn any gymnasium environment into a verifiable-success task.

    After every step, ``success(reward, terminated, truncated, info, steps)`` says whether the episode has
    succeeded (``steps`` counts the steps of the episode so far); a success ends the episode (terminated) with
    wrapped reward 1.0, every other step has reward 0.0, and ``info["success"]`` carries the verdict. The inner
    environment's reward of the step stays in ``info["inner_reward"]``. The time limit is the registration's,
    applied outside this wrapper: a rule such as "still balancing after N steps" counts ``steps`` itself.
    """

    def __init__(self, env: gym.Env, success: Callable[[float, bool, bool, dict, int], bool]) -> None:
        super().__init__(env)
        self.success = success
        self.steps = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self.steps = 0
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "success": False}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        ok = bool(self.success(float(reward), terminated, truncated, info, self.steps))
        return obs, float(ok), terminated or ok, truncated, {**info, "success": ok, "inner_reward": reward}


def make_frozenlake(map_name: str = "4x4", is_slippery: bool = False) -> gym.Env:
    """FrozenLake (gymnasium's toy_text) as a success task: success = reaching the goal (its reward 1).

    Built from the environment class, without gymnasium's own time limit: ``npo_lab/FrozenLake-v0``'s
    registration sets it. Observation ``Discrete(16)`` (the backend one-hot encodes it), action ``Discrete(4)``.
    """
    from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv

    inner = FrozenLakeEnv(map_name=map_name, is_slippery=is_slippery)
    return VerifiableSuccess(inner, lambda r, term, trunc, info, steps: term and r > 0)


def make_cartpole_balance(target: int = 100) -> gym.Env:
    """CartPole as a success task: success = still balancing after ``target`` steps (the registration's time
    limit equals ``target``). Observation ``Box(4)``, action ``Discrete(2)``; the reset seed sets the initial
    state."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    return VerifiableSuccess(CartPoleEnv(), lambda r, term, trunc, info, steps: steps >= target and not term)


ENV_IDS = {
    "npo_lab/Chain-v0": dict(entry_point=f"{__name__}:ChainEnv", max_episode_steps=8, kwargs={"length": 8}),
    "npo_lab/ChainEasy-v0": dict(entry_point=f"{__name__}:ChainEnv", max_episode_steps=3, kwargs={"length": 3}),
    "npo_lab/KeyDoor-v0": dict(entry_point=f"{__name__}:KeyDoorEnv", max_episode_steps=25, kwargs={"size": 5}),
    "npo_lab/FrozenLake-v0": dict(entry_point=f"{__name__}:make_frozenlake", max_episode_steps=30),
    "npo_lab/CartPoleBalance-v0": dict(
        entry_point=f"{__name__}:make_cartpole_balance", max_episode_steps=100, kwargs={"target": 100}
    ),
}
"""Every environment this module registers, with its registration."""


def register_envs() -> None:
    """Register the ``npo_lab/`` ids with gymnasium (idempotent)."""
    for env_id, spec in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, **spec)


register_envs()

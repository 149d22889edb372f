"""The gymnasium backend: a small MLP or GRU policy on a verifiable-success environment.

Implements :class:`npo_lab.backend.Backend`. A prompt id is a reset seed: G rows of a group are G episodes
started from ``env.reset(seed=prompt_id)``. An episode is one row: its T steps are the row's tokens
(``mask`` 1 on steps where the policy acted), its reward is 1.0 on success. Evaluation uses held-out reset
seeds (10**6 + i) and the greedy policy. Episodes are stepped in a batch through gymnasium's vector API
(``SyncVectorEnv``), or one environment at a time with ``vector=False`` (for the benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from npo_lab.envs import gym_envs
from npo_lab.envs.config import GymConfig
from npo_lab.envs.torch_policy import InMemoryPolicy
from torch import Tensor, nn

from npo_lab.backend import Checkpoint, clone_state
from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig, RunConfig
from npo_lab.methods import GRPO
from npo_lab.train import make_state, train

EVAL_SEED_OFFSET = 10**6


SUPPORTED = (
    "a registered id with a time limit (max_episode_steps), a Discrete action space, a Box or Discrete "
    "observation space, and info['success'] (wrap other environments in npo_lab.envs.gym_envs.VerifiableSuccess "
    "and register them; 'module:id' imports the module first)"
)


def make_env(env_id: str) -> gym.Env:
    """``gym.make(env_id)`` for a verifiable-success task, with errors that list what is supported."""
    gym_envs.register_envs()
    ours = ", ".join(gym_envs.ENV_IDS)
    name = env_id.split(":", 1)[1] if ":" in env_id else env_id
    try:
        if ":" in env_id:  # gymnasium's 'module:id' form: the module registers the id when imported
            import importlib

            importlib.import_module(env_id.split(":", 1)[0])
        if name not in gym.registry:
            raise ValueError(f"env: unknown environment id {env_id!r}; npo_lab's ids: {ours}; or {SUPPORTED}")
        if gym.registry[name].max_episode_steps is None:
            raise ValueError(f"env: {env_id} has no time limit in its registration; supported: {SUPPORTED}")
        env = gym.make(name)
    except (gym.error.Error, ImportError) as e:  # e.g. a missing optional dependency of the environment
        raise ValueError(f"env: {env_id} cannot be made: {e}") from e
    problem = None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        problem = f"action space {env.action_space}"
    elif not isinstance(env.observation_space, gym.spaces.Box | gym.spaces.Discrete):
        problem = f"observation space {env.observation_space}"
    elif "success" not in env.reset(seed=0)[1]:
        problem = "no info['success'] (its reward is not a verifiable success)"
    if problem is not None:
        env.close()
        raise ValueError(f"env: {env_id} has {problem}; the gym backend supports {SUPPORTED}; npo_lab's ids: {ours}")
    return env


def obs_features(space: gym.Space, obs: np.ndarray) -> Tensor:
    """A batch of observations as float features: Discrete -> one-hot, Box -> flattened. (B, D)."""
    if isinstance(space, gym.spaces.Discrete):
        idx = torch.as_tensor(np.asarray(obs), dtype=torch.long).reshape(-1) - int(space.start)
        return F.one_hot(idx, int(space.n)).float()
    arr = torch.as_tensor(np.asarray(obs, dtype=np.float32))
    return arr.reshape(arr.shape[0], -1)


class Policy(nn.Module):
    """MLP (obs -> logits) or GRU (obs sequence -> logits at every step)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "gru":
            self.inp = nn.Linear(obs_dim, hidden)
            self.cell = nn.GRUCell(hidden, hidden)
        else:
            self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, n_actions)

    def step(self, obs: Tensor, h: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One step: obs (B, D) -> logits (B, A) and the next hidden state (GRU)."""
        if self.kind == "gru":
            h = self.cell(torch.tanh(self.inp(obs)), h)
            return self.head(h), h
        return self.head(self.body(obs)), None

    def sequence(self, obs: Tensor) -> Tensor:
        """Whole episodes: obs (B, T, D) -> logits (B, T, A)."""
        if self.kind == "gru":
            h = None
            out = []
            for t in range(obs.shape[1]):
                logits, h = self.step(obs[:, t], h)
                out.append(logits)
            return torch.stack(out, 1)
        return self.head(self.body(obs))


class GymBackend(InMemoryPolicy):
    """A policy network acting in ``cfg.env``; the five Backend methods plus ``num_prompts``, ``evaluate``,
    and ``teacher()`` (luffy's external teacher)."""

    def __init__(self, env_id: str, cfg: GymConfig | None = None, seed: int = 0) -> None:
        cfg = cfg or GymConfig()
        self.env_id, self.cfg, self.seed = env_id, cfg, seed
        probe = make_env(env_id)  # checked once here; the batch's environments are made without the checks
        self._registered_id = probe.spec.id
        self.obs_space, self.act_space = probe.observation_space, probe.action_space
        probe.close()
        obs_dim = obs_features(self.obs_space, np.asarray([self.obs_space.sample()])).shape[1]
        with torch.random.fork_rng():  # the initial weights depend on `seed` only
            torch.manual_seed(seed)
            self.model = Policy(obs_dim, int(self.act_space.n), cfg.hidden, cfg.policy)
        self.gen = torch.Generator().manual_seed(seed + 7919)
        self._vec: dict[int, gym.vector.SyncVectorEnv] = {}
        self._loose: list[gym.Env] = []

    # ---- the Backend protocol -------------------------------------------------------------------
    @property
    def num_prompts(self) -> int:
        return self.cfg.n_train

    def rollout(self, prompt_ids: Sequence[int], n: int, policy: Checkpoint | None = None) -> RolloutBatch:
        seeds = [int(p) for p in prompt_ids for _ in range(n)]  # G rows per prompt, grouped
        obs, actions, logp, mask, rewards = self._episodes(self._policy_model(policy), seeds, greedy=False)
        lengths = mask.sum(-1).long().tolist()
        extras = [  # copies, not views: a replay pool that keeps one row must not keep the whole batch alive
            {"seed": s, "obs": obs[i, : lengths[i]].clone(), "actions": actions[i, : lengths[i]].clone()}
            for i, s in enumerate(seeds)
        ]
        return RolloutBatch.from_rows(
            behavior_logprobs=logp,
            mask=mask,
            rewards=rewards,
            group_ids=torch.tensor(seeds, dtype=torch.long),
            extras=extras,
        )

    def logprobs(self, batch: RolloutBatch, policy: Checkpoint | None = None) -> tuple[Tensor, Tensor | None]:
        net = self._policy_model(policy)
        b, t = batch.mask.shape
        d = batch.extras[0]["obs"].shape[-1]
        obs = torch.zeros(b, t, d)  # (B, T, D), zero-padded after each episode
        acts = torch.zeros(b, t, dtype=torch.long)  # (B, T)
        for i, e in enumerate(batch.extras):
            obs[i, : len(e["actions"])] = e["obs"]
            acts[i, : len(e["actions"])] = e["actions"]
        logp_all = F.log_softmax(net.sequence(obs) / self.cfg.temperature, -1)  # (B, T, A)
        logp = logp_all.gather(-1, acts.unsqueeze(-1)).squeeze(-1) * batch.mask  # (B, T)
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, T)
        return logp, entropy

    # ---- evaluation, teacher, helpers --------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy success rate on the held-out reset seeds."""
        seeds = [EVAL_SEED_OFFSET + i for i in range(self.cfg.n_eval)]
        _, _, _, mask, rewards = self._episodes(self.model, seeds, greedy=True)
        return {"eval/accuracy": rewards.mean().item(), "eval/episode_length": mask.sum(-1).mean().item()}

    def teacher(self) -> Checkpoint:
        """luffy's external teacher: a policy of another seed (``gym.teacher_seed``) trained by plain GRPO for
        ``gym.teacher_steps`` steps (default GRPO settings, Adam lr 3e-3): a trained policy whose behaviour
        differs from the student's. Built once per process, environment and policy shape."""
        c = self.cfg
        key = repr((self.env_id, c.policy, c.hidden, c.n_train, c.temperature, c.teacher_steps, c.teacher_seed))
        if key not in _TEACHERS:
            other = GymBackend(self.env_id, self.cfg, seed=self.cfg.teacher_seed)
            with torch.random.fork_rng():
                torch.manual_seed(self.cfg.teacher_seed)
                grpo = GRPOConfig(lr=3e-3)
                steps = self.cfg.teacher_steps
                train(
                    make_state(other, grpo, self.cfg.teacher_seed),
                    GRPO(),
                    RunConfig(steps=steps, eval_every=steps),
                    grpo,
                )
            _TEACHERS[key] = clone_state(other.model.state_dict())
        return {"weights": _TEACHERS[key], "rng": self.gen.get_state()}

    def _vector(self, n: int) -> gym.vector.SyncVectorEnv:
        """A vector env of n sub-environments; the few most recent sizes are kept (guide batches vary)."""
        if n not in self._vec:
            if len(self._vec) >= 4:
                self._vec.pop(next(iter(self._vec))).close()
            self._vec[n] = gym.vector.SyncVectorEnv([lambda: gym.make(self._registered_id) for _ in range(n)])
        return self._vec[n]

    def _single_envs(self, n: int) -> list[gym.Env]:
        while len(self._loose) < n:
            self._loose.append(gym.make(self._registered_id))
        return self._loose[:n]

    @torch.no_grad()
    def _episodes(self, net: Policy, seeds: list[int], greedy: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Run one episode per seed to its end. Returns obs (B, T, D), actions (B, T), sampling log-probs
        (B, T), mask (B, T) and rewards (B,): 1.0 if the episode reported ``info["success"]``, else 0.0."""
        b = len(seeds)
        if self.cfg.vector:
            vec = self._vector(b)
            raw, _ = vec.reset(seed=seeds)
        else:
            envs = self._single_envs(b)
            raw = np.stack([np.asarray(env.reset(seed=s)[0]) for env, s in zip(envs, seeds)])
        alive = torch.ones(b, dtype=torch.bool)
        success = np.zeros(b, bool)
        h = None
        obs_l, act_l, lp_l, mask_l = [], [], [], []
        while bool(alive.any()):
            x = obs_features(self.obs_space, raw)  # (B, D)
            logits, h = net.step(x, h)
            logp_all = F.log_softmax(logits / self.cfg.temperature, -1)  # (B, A)
            if greedy:
                a = logp_all.argmax(-1)
            else:
                a = torch.multinomial(logp_all.exp(), 1, generator=self.gen).squeeze(-1)
            obs_l.append(x)
            act_l.append(a)
            lp_l.append(torch.where(alive, logp_all.gather(-1, a.unsqueeze(-1)).squeeze(-1), torch.zeros(b)))
            mask_l.append(alive.float())
            acts = a.numpy()
            if self.cfg.vector:
                # a finished sub-environment is reset by the next step (gymnasium's next-step autoreset): its
                # outputs are masked out here
                raw, _, term, trunc, infos = vec.step(acts)
                ok = np.asarray(infos.get("success", np.zeros(b, bool)), bool) & infos.get("_success", True)
            else:
                ok, term, trunc = np.zeros(b, bool), np.ones(b, bool), np.zeros(b, bool)
                new = np.array(raw, copy=True)
                for i in torch.nonzero(alive).squeeze(-1).tolist():
                    o, _, term[i], trunc[i], info = envs[i].step(int(acts[i]))
                    new[i], ok[i] = o, bool(info.get("success", False))
                raw = new
            success |= ok & alive.numpy()
            alive = alive & ~torch.as_tensor(np.logical_or(term, trunc))
        return (
            torch.stack(obs_l, 1),
            torch.stack(act_l, 1),
            torch.stack(lp_l, 1),
            torch.stack(mask_l, 1),
            torch.as_tensor(success, dtype=torch.float32),
        )


_TEACHERS: dict[str, dict[str, Tensor]] = {}


def make_gym_backend(env_id: str, cfg: GymConfig, seed: int) -> GymBackend:
    """Picklable factory used by ``npo-lab compare`` (``functools.partial(make_gym_backend, env_id, cfg)``)."""
    return GymBackend(env_id, cfg, seed=seed)

"""The gymnasium backend: registered environments, seeded determinism, groups, rollback, learning, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from npo_lab.envs import gym_envs
from npo_lab.envs.config import GymConfig
from npo_lab.envs.gym_backend import GymBackend, make_env

from npo_lab.config import GRPOConfig, NPOConfig, RunConfig
from npo_lab.methods import GRPO
from npo_lab.train import grpo_step, lookahead, make_state, train
from npo_lab.utils import seed_everything

IDS = list(gym_envs.ENV_IDS)


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_and_time_limit_from_registration(env_id):
    env = gym.make(env_id)
    # our own classes are checked bare; the wrapped standard environments through their wrapper
    target = env.unwrapped if isinstance(env.unwrapped, gym_envs.ChainEnv | gym_envs.KeyDoorEnv) else env
    check_env(target, skip_render_check=True)
    assert env.spec.max_episode_steps == gym_envs.ENV_IDS[env_id]["max_episode_steps"]


@pytest.mark.parametrize("env_id", IDS)
def test_whole_episodes_are_deterministic_under_a_seed(env_id):
    def episode(seed):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)  # the same action sequence each time
        out = [np.asarray(obs).copy()]
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
            out.append((np.asarray(obs).copy(), r, term, trunc, info["success"]))
            done = term or trunc
        return out

    a, b = episode(5), episode(5)
    assert len(a) == len(b)
    assert all(
        np.array_equal(x[0] if isinstance(x, tuple) else x, y[0] if isinstance(y, tuple) else y) for x, y in zip(a, b)
    )
    assert [x[1:] for x in a[1:]] == [y[1:] for y in b[1:]]


def test_reset_seeds_change_the_start_where_the_env_has_randomness():
    env = gym.make("npo_lab/KeyDoor-v0")
    starts = {tuple(env.reset(seed=s)[0].tolist()) for s in range(20)}
    assert len(starts) > 10
    env = gym.make("npo_lab/CartPoleBalance-v0")
    assert not np.array_equal(env.reset(seed=1)[0], env.reset(seed=2)[0])


def test_chain_rewards_only_the_exact_combination():
    env = gym_envs.ChainEnv(length=4, n_actions=3, combination_seed=7)
    env.reset(seed=0)
    for i, a in enumerate(env.combination):
        _, r, term, _, info = env.step(int(a))
        assert (r, term, info["success"]) == ((1.0, True, True) if i == 3 else (0.0, False, False))
    env.reset(seed=0)
    wrong = (int(env.combination[0]) + 1) % 3
    _, r, term, _, info = env.step(wrong)
    assert (r, term, info["success"]) == (0.0, True, False)  # a wrong digit jams the lock


def test_key_door_needs_the_key_first():
    env = gym_envs.KeyDoorEnv(size=3)
    env.reset(seed=0)
    env.agent, env.key, env.door, env.has_key = (0, 0), (2, 2), (0, 1), False
    _, r, term, _, _ = env.step(1)  # onto the door without the key
    assert (r, term) == (0.0, False)
    env.agent = (2, 1)
    env.step(1)  # onto the key
    assert env.has_key
    env.agent = (0, 0)
    _, r, term, _, info = env.step(1)
    assert (r, term, info["success"]) == (1.0, True, True)


@pytest.mark.parametrize("policy", ["mlp", "gru"])
def test_groups_share_a_seed_and_logprobs_recompute_exactly(policy):
    be = GymBackend("npo_lab/KeyDoor-v0", GymConfig(policy=policy, hidden=16), seed=0)
    b = be.rollout([3, 11], 4)
    assert b.group_ids.tolist() == [3] * 4 + [11] * 4
    first = torch.stack([e["obs"][0] for e in b.extras])  # (B, D): the first observation of every episode
    assert torch.equal(first[0], first[3]) and torch.equal(first[4], first[7]) and not torch.equal(first[0], first[4])
    assert b.mask.sum(-1).tolist() == [len(e["actions"]) for e in b.extras]
    logp, ent = be.logprobs(b)
    assert torch.allclose(logp, b.behavior_logprobs, atol=1e-6)
    assert ent.shape == b.mask.shape


def test_vector_and_one_by_one_stepping_give_the_same_episodes():
    batches = []
    for vector in (True, False):
        be = GymBackend("npo_lab/CartPoleBalance-v0", GymConfig(vector=vector, hidden=8), seed=1)
        batches.append(be.rollout([0, 1, 2], 3))
    a, b = batches
    assert torch.equal(a.mask, b.mask) and torch.equal(a.rewards, b.rewards)
    assert torch.equal(a.behavior_logprobs, b.behavior_logprobs)


def test_rollback_is_bit_exact():
    seed_everything(0)
    be = GymBackend("npo_lab/ChainEasy-v0", GymConfig(hidden=16), seed=0)
    grpo = GRPOConfig(batch_size=32, group_size=4, lr=1e-2)
    state = make_state(be, grpo, 0)
    grpo_step(state, grpo)
    before = be.save()
    opt = {k: v.clone() for k, v in state.optimizer.state_dict()["state"][0].items()}
    res = lookahead(state, [1, 3], lambda: grpo_step(state, grpo))
    assert set(res.checkpoints) == {1, 3} and state.step == 1
    assert all(torch.equal(before["weights"][k], v) for k, v in be.model.state_dict().items())
    assert all(torch.equal(opt[k], v) for k, v in state.optimizer.state_dict()["state"][0].items())
    assert torch.equal(before["rng"], be.gen.get_state())
    assert not torch.equal(res.checkpoints[3]["weights"]["head.weight"], before["weights"]["head.weight"])
    # sampling from the near-future checkpoint does not touch the current weights
    be.rollout([0], 4, policy=res.checkpoints[3])
    assert all(torch.equal(before["weights"][k], v) for k, v in be.model.state_dict().items())


@pytest.mark.slow
def test_grpo_learns_the_easiest_chain():
    seed_everything(0)
    be = GymBackend("npo_lab/ChainEasy-v0", GymConfig(hidden=32), seed=0)
    grpo = GRPOConfig(batch_size=64, group_size=8, lr=1e-2)
    state = make_state(be, grpo, 0)
    start = be.rollout(list(range(32)), 8).rewards.mean().item()
    res = train(state, GRPO(), RunConfig(steps=40, eval_every=20), grpo)
    end = be.rollout(list(range(32)), 8).rewards.mean().item()
    assert start < 0.3 and end > start + 0.4, (start, end)
    assert res.final_accuracy == 1.0  # the greedy policy opens the lock


def test_npo_runs_unchanged_on_the_gym_backend():
    from npo_lab.methods import NPO

    seed_everything(0)
    be = GymBackend("npo_lab/ChainEasy-v0", GymConfig(hidden=16), seed=0)
    grpo = GRPOConfig(batch_size=32, group_size=4, lr=1e-2)
    res = train(
        make_state(be, grpo, 0),
        NPO(NPOConfig(delta=2, interventions=(0,)), 4, grpo),
        RunConfig(steps=4, eval_every=2),
        grpo,
    )
    assert res.interventions == [0] and res.lookahead_steps == 2


def test_bad_environment_ids_and_action_spaces_are_named():
    with pytest.raises(ValueError, match="unknown environment id 'npo_lab/Nope-v0'.*npo_lab/Chain-v0"):
        make_env("npo_lab/Nope-v0")
    with pytest.raises(ValueError, match="Pendulum-v1 has action space Box.*Discrete action space.*npo_lab/Chain-v0"):
        make_env("Pendulum-v1")
    with pytest.raises(ValueError, match="CartPole-v1 has no info\\['success'\\].*VerifiableSuccess"):
        make_env("CartPole-v1")  # its reward is not a verifiable success
    with pytest.raises(ValueError, match="CliffWalking-v1 has no time limit"):
        make_env("CliffWalking-v1")  # an episode could run forever
    assert make_env("npo_lab.envs.gym_envs:npo_lab/ChainEasy-v0").spec.id == "npo_lab/ChainEasy-v0"
    with pytest.raises(ValueError, match="gym.policy"):
        GymConfig(policy="transformer")  # type: ignore[arg-type]

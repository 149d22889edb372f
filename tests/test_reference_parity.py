"""notebooks/reference/npo_minimal.py, the single-file teaching copy of GRPO + NPO, computes what npo_lab computes.

On fixed batches: the group advantages, the clipped loss and its gradient, the gate and the one-slot merge, the
policy's log-probs (same weights), and two full NPO-guided update steps (same weights, same sampled batches:
gate, merge, advantages, loss, gradient clipping, Adam) equal the library's to float tolerance. Both sides are
computed here, so a change to the math of either one fails a test. Also: the script's rollback is exact, and the
script runs end to end.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_guarded

from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig, NPOConfig
from npo_lab.core.advantages import group_advantages
from npo_lab.core.guidance import merge_guides
from npo_lab.core.losses import policy_loss
from npo_lab.methods import NPO, failing_groups
from npo_lab.tasks.arithmetic import ArithmeticConfig, make_splits
from npo_lab.train import grpo_step, make_state

SCRIPT = Path(__file__).resolve().parents[1] / "notebooks" / "reference" / "npo_minimal.py"


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("npo_minimal", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["npo_minimal"] = mod  # its dataclasses look the module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("npo_minimal", None)


def to_batch(ref, d: dict) -> RolloutBatch:
    """The script's dict of rows as the library's RolloutBatch (completions in ``extras``, as the backend does)."""
    lengths = d["mask"].sum(-1).long().tolist()
    extras = [{"pid": p, "completion": c[:n].clone()} for p, c, n in zip(d["pid"].tolist(), d["comp"], lengths)]
    return RolloutBatch.from_rows(
        behavior_logprobs=d["logp"], mask=d["mask"], rewards=d["reward"].float(), group_ids=d["pid"],
        is_guide=d["guide"], extras=extras,
    )  # fmt: skip


def to_dict(ref, b: RolloutBatch) -> dict:
    """The library's RolloutBatch as the script's dict of rows."""
    comp = torch.full(b.mask.shape, ref.PAD, dtype=torch.long)  # (B, T)
    for i, e in enumerate(b.extras):
        comp[i, : len(e["completion"])] = e["completion"]
    return dict(pid=b.group_ids, comp=comp, mask=b.mask, logp=b.behavior_logprobs, reward=b.rewards, guide=b.is_guide)


def rows(ref, rewards: list[float], pids: list[int], t: int, seed: int, guide: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = len(rewards)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()  # (n, t)
    comp = torch.randint(0, len(ref.VOCAB) - 1, (n, t), generator=gen).masked_fill(mask == 0, ref.PAD)
    logp = -torch.rand(n, t, generator=gen) * mask
    return dict(pid=torch.tensor(pids), comp=comp, mask=mask, logp=logp, reward=torch.tensor(rewards),
                guide=torch.full((n,), guide))  # fmt: skip


def assert_same_rows(a: dict, b: dict) -> None:
    for k in ("pid", "comp", "mask", "logp", "reward", "guide"):
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        torch.testing.assert_close(a[k].to(b[k].dtype), b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("seed", range(3))
def test_group_advantages(ref, seed):
    gen = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(64, generator=gen) < 0.3).float()
    rewards[:8] = 0.0  # an all-wrong group
    rewards[8:16] = 1.0  # an all-right one
    ids = torch.randperm(500, generator=gen)[:8].repeat_interleave(8)
    perm = torch.randperm(64, generator=gen)  # groups interleaved, arbitrary ids
    mine = ref.group_advantages(rewards[perm], ids[perm])
    lib, _ = group_advantages(rewards[perm], ids[perm], "grpo")
    torch.testing.assert_close(mine, lib)
    assert (lib == 0).sum() >= 16 and lib.abs().max() > 1  # the case exercises both kinds of group


@pytest.mark.parametrize(("clip_low", "clip_high"), [(0.2, 0.2), (0.2, 0.28)])
def test_clipped_loss_and_gradient(ref, clip_low, clip_high):
    gen = torch.Generator().manual_seed(1)
    b, t = 16, 9
    old = -torch.rand(b, t, generator=gen) * 3
    logp = (old + 0.5 * torch.randn(b, t, generator=gen)).requires_grad_()
    mask = (torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=gen)).float()  # (B, T) with padding
    adv = torch.randn(b, generator=gen)
    is_guide = torch.arange(b) % 4 == 3  # guide rows: the library's default treatment is the ordinary surrogate
    ratio = (logp - old).exp()
    assert ((ratio < 1 - clip_low) & (mask > 0)).any() and ((ratio > 1 + clip_high) & (mask > 0)).any()
    mine = ref.policy_loss(logp, old, adv, mask, clip_low, clip_high)
    lib, _ = policy_loss(logp, old, adv, mask, is_guide=is_guide, clip_eps_low=clip_low, clip_eps_high=clip_high)
    torch.testing.assert_close(mine, lib)
    torch.testing.assert_close(torch.autograd.grad(mine, logp)[0], torch.autograd.grad(lib, logp)[0])


def test_gate_and_one_slot_merge(ref):
    g = 4
    accs = [0.0, 0.25, 0.5, 0.75, 1.0, 0.0]  # prompts 10..15; gated (< 0.6): 10, 11, 12, 15
    on_rewards = [float(i < round(a * g)) for a in accs for i in range(g)]
    on = rows(ref, on_rewards, [10 + k for k in range(6) for _ in range(g)], t=5, seed=0)
    # candidates: 10 has two correct (the first is used), 11 none correct (stays on-policy), 12 one, 13 is not
    # gated, 15 none at all; candidates are longer than the on-policy rows (the merge trims unused columns)
    cand = rows(ref, [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0], [10, 10, 10, 11, 11, 12, 13], t=8, seed=1)
    gated = ref.gated_prompts(on, 0.6)
    _, lib_gated = failing_groups(to_batch(ref, on), 0.6, 0.5)
    assert gated == lib_gated == [10, 11, 12, 15]
    merged = ref.merge_guides(on, cand, gated)
    lib_merged, m = merge_guides(to_batch(ref, on), to_batch(ref, cand), lib_gated, k=1, slot="last")
    assert m["guide/injected_frac"] == pytest.approx(2 / 6)
    assert_same_rows(merged, to_dict(ref, lib_merged))
    assert merged["guide"].nonzero().squeeze(-1).tolist() == [3, 11]  # the last slot of groups 10 and 12


def tiny_backend():
    from npo_lab.envs.arithmetic_backend import ArithmeticBackend
    from npo_lab.envs.config import TinyLMConfig

    # 1-digit sums and a short warm start: fast, with partial success (some groups solved, some not)
    task = ArithmeticConfig(digits=1, n_train=40, n_eval=8)
    model = TinyLMConfig(d_model=32, n_head=2, warm_steps=150, warm_batch=32, warm_lr=1e-2, temperature=0.7)
    return ArithmeticBackend(task, model, seed=0)


def twin(ref, backend):
    """The script's model holding the backend's weights (the same parameter names: a strict load)."""
    m = backend.model
    net = ref.CharLM(m.max_len, m.tok.embedding_dim, len(m.blocks), m.blocks[0].n_head)
    net.load_state_dict(backend.model.state_dict(), strict=True)
    return net


def test_logprobs_of_the_same_weights(ref):
    backend = tiny_backend()
    net = twin(ref, backend)
    b = backend.rollout(list(range(8)), 4)
    d = to_dict(ref, b)
    prompts = torch.tensor([ref.encode(backend.train_set[p].prompt) for p in d["pid"].tolist()])  # (B, P)
    mine = ref.token_logprobs(net, prompts, d["comp"], d["mask"], backend.cfg.temperature)
    lib, _ = backend.logprobs(b)
    torch.testing.assert_close(mine, lib)
    torch.testing.assert_close(mine, b.behavior_logprobs, atol=1e-4, rtol=1e-4)  # sampling used a KV cache


def test_npo_guided_update_steps(ref):
    """Two steps of npo_lab's grpo_step with NPO's guide source against the script's gate, merge and update on the
    same sampled rows: the same loss, gradient norm and weights after each step."""
    backend = tiny_backend()
    net = twin(ref, backend)
    grpo = GRPOConfig(batch_size=64, group_size=8, lr=1e-3, max_grad_norm=0.1)  # a clip that is active
    npo = NPOConfig(gate=0.6, guide_samples=8)
    args = ref.Args(temperature=backend.cfg.temperature, clip_eps=0.2, max_grad_norm=0.1, gate=0.6)
    state = make_state(backend, grpo, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=grpo.lr)
    source = NPO(npo, 10, grpo)
    source.checkpoint, source.start, source.until = (
        backend.save(),
        0,
        10,
    )  # guide from a fixed checkpoint during these steps
    prompts = torch.tensor([ref.encode(p.prompt) for p in backend.train_set])  # (N, P)
    data = ref.Data(prompts, [p.answer for p in backend.train_set], prompts[:1], [0], backend.max_new)
    calls = []
    rollout = backend.rollout
    backend.rollout = lambda pids, n, policy=None: calls.append(rollout(pids, n, policy)) or calls[-1]
    injected = 0
    for _ in range(2):
        calls.clear()
        before = [p.detach().clone() for p in net.parameters()]
        m = grpo_step(state, grpo, source)
        on = to_dict(ref, calls[0])
        gated = ref.gated_prompts(on, args.gate)
        assert gated == calls[1].group_ids.unique_consecutive().tolist()  # the prompts the library guided
        assert gated, "no group was gated: the test would not cover the guide rows"
        batch = ref.merge_guides(on, to_dict(ref, calls[1]), gated)
        injected += int(batch["guide"].sum())
        stats = ref.update(net, opt, batch, data, args)
        assert stats["loss"] == pytest.approx(m["loss/policy"], rel=1e-5, abs=1e-7)
        assert stats["grad_norm"] == pytest.approx(m["policy/grad_norm"], rel=1e-5)
        assert stats["grad_norm"] > args.max_grad_norm  # the gradient clip was exercised
        for (name, lib_p), mine, old in zip(backend.model.named_parameters(), net.parameters(), before):
            torch.testing.assert_close(mine, lib_p, msg=lambda msg, n=name: f"{n}: {msg}")
            assert not torch.equal(mine, old), f"{name} did not move"
    assert injected > 0, "no guide row was merged: the test would not cover the merge"


def test_rollback_is_exact(ref):
    args = ref.Args(digits=1, n_train=40, n_eval=8, d_model=16, n_head=2, batch_size=16, group_size=4, delta=2)
    args.warm_steps, args.warm_lr = 60, 1e-2
    torch.manual_seed(0)
    task = ArithmeticConfig(digits=1, n_train=40, n_eval=8)
    train, evals = make_splits(task)
    prompts = torch.tensor([ref.encode(p.prompt) for p in train])
    data = ref.Data(prompts, [p.answer for p in train], prompts[:1], [0], task.max_completion_len)
    net = ref.CharLM(prompts.shape[1] + data.max_new, 16, 2, 2)
    ref.warm_start(net, task, train, evals, args, prompts.shape[1])  # some success, so the steps move the weights
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    ref.grpo_step(net, opt, data, args)  # a non-empty optimizer state
    snap = ref.snapshot(net, opt)
    first = ref.grpo_step(net, opt, data, args)
    after_first = [p.detach().clone() for p in net.parameters()]
    guide = ref.lookahead(net, opt, data, args)  # 2 steps ahead, then back
    assert not all(torch.equal(a, b) for a, b in zip(guide.parameters(), net.parameters()))
    ref.restore(net, opt, snap)
    for a, b in zip(net.state_dict().values(), snap["model"].values()):
        assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), snap["torch_rng"])
    again = ref.grpo_step(net, opt, data, args)  # the same step from the same state: bit for bit the same
    assert again == first
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), after_first))


def test_the_script_runs_end_to_end(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--steps", "3", "--digits", "1", "--n-train", "40", "--n-eval", "8",
           "--d-model", "16", "--n-head", "2", "--warm-steps", "3", "--batch-size", "16", "--group-size", "4",
           "--interventions", "0", "2", "--delta", "1", "--eval-every", "1"]  # fmt: skip
    out = run_guarded(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("looked ahead 1 steps and rolled back") == 2, out.stdout
    final = float(out.stdout.strip().splitlines()[-1].split("accuracy ")[1].split()[0])
    assert math.isfinite(final) and 0.0 <= final <= 1.0

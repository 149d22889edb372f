"""notebooks/reference/npo_minimal.py, the single-file teaching copy of GRPO + NPO, computes what npo_lab computes.

On fixed batches: the group advantages, the clipped loss and its gradient (guide rows with the ratio to the policy
that sampled them, ``behavior_clipped``, npo_lab's default, and with ``on_policy``), the gate p-hat <= 0.6 and the
one-slot merge, the guide cache (one verified row per prompt) and the merge of cached rows, the policy's log-probs
(same weights), and two full NPO-guided update steps (same weights, same sampled batches, the same cache: gate,
merge, advantages, loss, gradient clipping, Adam) equal the library's to float tolerance. Both sides are computed
here, so a change to the math of either one fails a test. Also: the script's rollback is exact, its replay draws the
prompts its look-ahead drew, its cache holds one verified row per solvable prompt of the segment, and the script
runs end to end.
"""

from __future__ import annotations

import copy
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
from npo_lab.methods.base import verified_rows
from npo_lab.methods.npo import GuideCache
from npo_lab.tasks.arithmetic import ArithmeticConfig, make_splits, score
from npo_lab.train import grpo_step, lookahead, make_state

SCRIPT = Path(__file__).resolve().parents[1] / "notebooks" / "reference" / "npo_minimal.py"
FIELDS = ("group_ids", "completions", "mask", "behavior_logprobs", "rewards", "is_guide")
"""The script's batch: a dict of these, named as npo_lab's RolloutBatch names them (completions: its extras)."""


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("npo_minimal", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["npo_minimal"] = mod  # its dataclasses look the module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("npo_minimal", None)


def to_batch(d: dict) -> RolloutBatch:
    """The script's dict of rows as the library's RolloutBatch (completions in ``extras``, as the backend does)."""
    lengths = d["mask"].sum(-1).long().tolist()
    pids = d["group_ids"].tolist()
    extras = [{"pid": p, "completion": c[:n].clone()} for p, c, n in zip(pids, d["completions"], lengths)]
    return RolloutBatch.from_rows(
        behavior_logprobs=d["behavior_logprobs"], mask=d["mask"], rewards=d["rewards"].float(),
        group_ids=d["group_ids"], is_guide=d["is_guide"], extras=extras,
    )  # fmt: skip


def to_dict(ref, b: RolloutBatch) -> dict:
    """The library's RolloutBatch as the script's dict of rows."""
    comp = torch.full(b.mask.shape, ref.PAD, dtype=torch.long)  # (B, T)
    for i, e in enumerate(b.extras):
        comp[i, : len(e["completion"])] = e["completion"]
    return dict(group_ids=b.group_ids, completions=comp, mask=b.mask, behavior_logprobs=b.behavior_logprobs,
                rewards=b.rewards, is_guide=b.is_guide)  # fmt: skip


def rows(ref, rewards: list[float], pids: list[int], t: int, seed: int, guide: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = len(rewards)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()  # (n, t)
    comp = torch.randint(0, len(ref.VOCAB) - 1, (n, t), generator=gen).masked_fill(mask == 0, ref.PAD)
    logp = -torch.rand(n, t, generator=gen) * mask
    return dict(group_ids=torch.tensor(pids), completions=comp, mask=mask, behavior_logprobs=logp,
                rewards=torch.tensor(rewards), is_guide=torch.full((n,), guide))  # fmt: skip


def assert_same_rows(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) == sorted(FIELDS), (sorted(a), sorted(b))
    for k in FIELDS:
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


@pytest.mark.parametrize("guide_loss", ["behavior_clipped", "on_policy"])
@pytest.mark.parametrize(("clip_low", "clip_high"), [(0.2, 0.2), (0.2, 0.28)])
def test_clipped_loss_and_gradient(ref, clip_low, clip_high, guide_loss):
    gen = torch.Generator().manual_seed(1)
    b, t = 16, 9
    old = -torch.rand(b, t, generator=gen) * 3
    logp = (old + 0.5 * torch.randn(b, t, generator=gen)).requires_grad_()
    behavior = old + 0.8 * torch.randn(b, t, generator=gen)  # pi_{t+Delta}'s log-probs of the guide rows' tokens
    mask = (torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=gen)).float()  # (B, T) with padding
    adv = torch.randn(b, generator=gen)
    is_guide = torch.arange(b) % 4 == 3
    for anchor in (old, behavior):  # both ratios leave the clip range on some tokens, both ways
        ratio = (logp - anchor).exp()
        assert ((ratio < 1 - clip_low) & (mask > 0)).any() and ((ratio > 1 + clip_high) & (mask > 0)).any()
    mine = ref.policy_loss(logp, old, adv, mask, is_guide if guide_loss == "behavior_clipped" else None, behavior,
                           clip_low, clip_high)  # fmt: skip
    lib, _ = policy_loss(logp, old, adv, mask, is_guide=is_guide, behavior_logprobs=behavior, guide_loss=guide_loss,
                         clip_eps_low=clip_low, clip_eps_high=clip_high)  # fmt: skip
    torch.testing.assert_close(mine, lib)
    torch.testing.assert_close(torch.autograd.grad(mine, logp)[0], torch.autograd.grad(lib, logp)[0])
    other = "on_policy" if guide_loss == "behavior_clipped" else "behavior_clipped"
    lib_other, _ = policy_loss(logp, old, adv, mask, is_guide=is_guide, behavior_logprobs=behavior, guide_loss=other,
                               clip_eps_low=clip_low, clip_eps_high=clip_high)  # fmt: skip
    assert not torch.isclose(lib, lib_other), "the case must tell the two guide treatments apart"


def test_gate_is_at_most_the_threshold_and_the_merge_replaces_one_slot(ref):
    g = 5  # with G = 5 an accuracy of exactly 0.6 occurs: the paper's gate guides it (p-hat <= 0.6)
    accs = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.0]  # prompts 10..16; gated: 10, 11, 12, 13 (= 0.6), 16
    on_rewards = [float(i < round(a * g)) for a in accs for i in range(g)]
    on = rows(ref, on_rewards, [10 + k for k in range(7) for _ in range(g)], t=5, seed=0)
    # candidates: 10 has two correct (the first is used), 11 none correct (stays on-policy), 12 one, 13 one (gated
    # at the boundary), 14 is not gated, 16 none at all; candidates are longer than the on-policy rows (the merge
    # trims the unused columns)
    cand = rows(ref, [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [10, 10, 10, 11, 11, 12, 13, 14], t=8, seed=1)
    gated = ref.gated_prompts(on, 0.6)
    _, lib_gated = failing_groups(to_batch(on), 0.6, 0.5)  # npo_lab's default: gate_op="le"
    assert gated == lib_gated == [10, 11, 12, 13, 16]
    assert failing_groups(to_batch(on), 0.6, 0.5, "lt")[1] == [10, 11, 12, 16]  # the public code's strict gate
    merged = ref.merge_guides(on, cand, gated)
    lib_merged, m = merge_guides(to_batch(on), to_batch(cand), lib_gated, k=1, slot="last")
    assert m["guide/injected_frac"] == pytest.approx(3 / 7)
    assert_same_rows(merged, to_dict(ref, lib_merged))
    assert merged["is_guide"].nonzero().squeeze(-1).tolist() == [4, 14, 19]  # the last slot of groups 10, 12, 13


def test_the_cache_keeps_one_verified_row_per_prompt_and_merges_like_npo_lab(ref):
    # pi_{t+Delta}'s answers to five prompts: 20 right twice (the first is kept), 21 never, 22 once, 23 right (not
    # gated below), 24 once; rows of different lengths
    cand = rows(ref, [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], [20, 20, 20, 21, 21, 22, 22, 23, 24, 24], t=7,
                seed=2)  # fmt: skip
    mine = ref.verified_rows(cand)
    lib = verified_rows(to_batch(cand), 0.5)
    assert list(mine) == list(lib) == [20, 22, 23, 24]
    for p in mine:
        assert_same_rows(mine[p], to_dict(ref, lib[p]))
        assert mine[p]["rewards"].tolist() == [1.0] and mine[p]["mask"][0, -1] == 1  # one correct row, trimmed
    assert mine[20]["completions"].tolist() == ref.trim({k: v[1:2] for k, v in cand.items()})["completions"].tolist()
    on = rows(ref, [0.0] * 4 + [1.0, 0.0, 0.0, 0.0] + [1.0] * 4 + [0.0] * 4, [20] * 4 + [21] * 4 + [23] * 4 + [24] * 4,
              t=5, seed=3)  # fmt: skip
    gated = ref.gated_prompts(on, 0.6)
    assert gated == [20, 21, 24]
    hits = [p for p in gated if p in mine]
    merged = ref.merge_guides(on, ref.cat_rows([mine[p] for p in hits]), gated)
    cache = GuideCache()
    cache.rows = lib
    lib_rows, lib_hits = cache.plan_rows(gated, to_batch(on))
    assert lib_hits == hits == [20, 24]
    lib_merged, _ = merge_guides(to_batch(on), lib_rows, gated, k=1, slot="last")
    assert_same_rows(merged, to_dict(ref, lib_merged))
    assert merged["is_guide"].nonzero().squeeze(-1).tolist() == [3, 15]


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
    prompts = torch.tensor([ref.encode(backend.train_set[p].prompt) for p in d["group_ids"].tolist()])  # (B, P)
    mine = ref.token_logprobs(net, prompts, d["completions"], d["mask"], backend.cfg.temperature)
    lib, _ = backend.logprobs(b)
    torch.testing.assert_close(mine, lib)
    torch.testing.assert_close(mine, b.behavior_logprobs, atol=1e-4, rtol=1e-4)  # sampling used a KV cache


@pytest.mark.parametrize("guide_loss", ["behavior_clipped", "on_policy"])
def test_npo_guided_update_steps(ref, guide_loss):
    """Two steps of npo_lab's grpo_step with NPO's cached guides against the script's gate, merge and update on the
    same sampled rows and the same cache: the same loss, gradient norm and weights after each step."""
    backend = tiny_backend()
    net = twin(ref, backend)
    # G = 5: a group accuracy can be exactly the gate 0.6 (guided); max_grad_norm: a clip that is active
    grpo = GRPOConfig(batch_size=200, group_size=5, lr=1e-3, max_grad_norm=0.1)  # every prompt, every step
    npo = NPOConfig(gate=0.6, guide_samples=8, guide_loss=guide_loss)
    assert NPOConfig().guide_loss == "behavior_clipped" and NPOConfig().guide_source == "cache"  # the defaults
    args = ref.Args(temperature=backend.cfg.temperature, clip_eps=0.2, max_grad_norm=0.1, gate=0.6,
                    guide_loss=guide_loss)  # fmt: skip
    state = make_state(backend, grpo, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=grpo.lr)
    calls = []
    rollout = backend.rollout
    backend.rollout = lambda pids, n, policy=None: calls.append(rollout(pids, n, policy)) or calls[-1]
    # the guide pi_{t+3}: three plain steps ahead, rolled back exactly (the script's twin still holds pi_t)
    ahead = lookahead(state, 3, lambda: grpo_step(state, grpo))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), backend.model.parameters()))
    source = NPO(npo, 10, grpo)
    calls.clear()
    source.cache.fill(state, ahead.checkpoint, list(range(len(backend.train_set))), npo.guide_samples, 0.5)
    cache = {}  # the script's cache from the same sampled rows
    for c in calls:
        cache |= ref.verified_rows(to_dict(ref, c))
    assert list(cache) == list(source.cache.rows) and 0 < len(cache) < len(backend.train_set)
    source.checkpoint, source.start, source.until = ahead.checkpoint, 0, 10  # guide these steps from the cache
    prompts = torch.tensor([ref.encode(p.prompt) for p in backend.train_set])  # (N, P)
    data = ref.Data(prompts, [p.answer for p in backend.train_set], prompts[:1], [0], backend.max_new, None)
    injected, at_the_gate = 0, 0
    for _ in range(2):
        calls.clear()
        before = [p.detach().clone() for p in net.parameters()]
        m = grpo_step(state, grpo, source)
        assert len(calls) == 1, "a guided step samples the on-policy group only: its guides come from the cache"
        on = to_dict(ref, calls[0])
        gated = ref.gated_prompts(on, args.gate)
        assert gated, "no group was gated: the test would not cover the guide rows"
        at_the_gate += sum(on["rewards"][on["group_ids"] == p].sum().item() == 3 for p in gated)  # p-hat = 3/5
        assert m["guide/gated_frac"] == pytest.approx(len(gated) / (grpo.batch_size // grpo.group_size))
        hits = [p for p in gated if p in cache]
        batch = ref.merge_guides(on, ref.cat_rows([cache[p] for p in hits]), gated) if hits else on
        injected += int(batch["is_guide"].sum())
        if hits:  # the two treatments of the guide rows give different losses here: the test tells them apart
            flip = "on_policy" if guide_loss == "behavior_clipped" else "behavior_clipped"
            other = ref.Args(**dict(vars(args), guide_loss=flip))
            scratch = copy.deepcopy(net)
            alt = ref.update(scratch, torch.optim.SGD(scratch.parameters(), lr=0.0), batch, data, other)
        stats = ref.update(net, opt, batch, data, args)
        if hits:
            assert alt["loss"] != pytest.approx(stats["loss"], rel=1e-4)
        assert stats["loss"] == pytest.approx(m["loss/policy"], rel=1e-5, abs=1e-7)
        assert stats["grad_norm"] == pytest.approx(m["policy/grad_norm"], rel=1e-5)
        assert stats["grad_norm"] > args.max_grad_norm  # the gradient clip was exercised
        for (name, lib_p), mine, old in zip(backend.model.named_parameters(), net.parameters(), before):
            torch.testing.assert_close(mine, lib_p, msg=lambda msg, n=name: f"{n}: {msg}")
            assert not torch.equal(mine, old), f"{name} did not move"
    assert injected > 0, "no guide row was merged: the test would not cover the merge"
    assert at_the_gate > 0, "no group had p-hat = 0.6: the test would not tell <= from <"


def small_run(ref, **kw):
    """The script's pieces on 1-digit sums, warm-started until some groups are solved."""
    args = ref.Args(digits=1, n_train=40, n_eval=8, d_model=16, n_head=2, batch_size=16, group_size=4, **kw)
    args.warm_steps, args.warm_lr = 100, 1e-2
    torch.manual_seed(0)
    task = ArithmeticConfig(digits=1, n_train=40, n_eval=8)
    train, evals = make_splits(task)
    prompts = torch.tensor([ref.encode(p.prompt) for p in train])
    cursor = torch.Generator().manual_seed(0)
    data = ref.Data(prompts, [p.answer for p in train], prompts[:1], [0], task.max_completion_len, cursor)
    net = ref.CharLM(prompts.shape[1] + data.max_new, 16, 2, 2)
    ref.warm_start(net, task, train, evals, args, prompts.shape[1])  # some success, so the steps move the weights
    return args, data, net, torch.optim.Adam(net.parameters(), lr=1e-3)


def test_rollback_is_exact_and_the_replay_draws_the_segment(ref):
    args, data, net, opt = small_run(ref, delta=3)
    ref.grpo_step(net, opt, data, args)  # a non-empty optimizer state
    snap = ref.snapshot(net, opt, data)
    first = ref.grpo_step(net, opt, data, args)
    after_first = [p.detach().clone() for p in net.parameters()]
    at_t = ref.snapshot(net, opt, data)
    cache, segment = ref.lookahead(net, opt, data, args)  # 3 steps ahead, the cache filled, then back
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), after_first))
    assert len(segment) == args.delta and all(len(s) == args.batch_size // args.group_size for s in segment)
    replay = [ref.grpo_step(net, opt, data, args, cache) for _ in range(args.delta)]
    assert [s["prompts"] for s in replay] == segment  # the replay meets the look-ahead's prompts
    assert sum(s["injected"] for s in replay) > 0  # and some of them got a cached guide row
    # the cache holds one verified-correct row of pi_{t+Delta} for every prompt of the segment it could solve: train
    # the look-ahead again from step t (the same steps), then let pi_{t+Delta} answer the segment's prompts
    ref.restore(net, opt, data, at_t)
    assert [ref.grpo_step(net, opt, data, args)["prompts"] for _ in range(args.delta)] == segment
    prompts = sorted({p for s in segment for p in s})
    answers = ref.rollout(net, prompts, args.guide_samples, data, args)  # (as the cache drew them: one chunk)
    solved = {p for p, r in zip(answers["group_ids"].tolist(), answers["rewards"].tolist()) if r > 0.5}
    assert list(cache) == [p for p in prompts if p in solved] and 0 < len(cache) < len(prompts)
    for p, row in cache.items():
        i = next(i for i, (q, r) in enumerate(zip(answers["group_ids"].tolist(), answers["rewards"].tolist()))
                 if q == p and r > 0.5)  # fmt: skip
        assert_same_rows(row, ref.trim({k: v[i : i + 1] for k, v in answers.items()}))
        assert score(ref.decode(row["completions"][0].tolist()), data.answers[p]) == 1.0  # verified again here
    ref.restore(net, opt, data, snap)
    for a, b in zip(net.state_dict().values(), snap["model"].values()):
        assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), snap["torch_rng"])
    assert torch.equal(data.cursor.get_state(), snap["cursor"])
    again = ref.grpo_step(net, opt, data, args)  # the same step from the same state: bit for bit the same
    assert again == first
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), after_first))


def test_the_script_runs_end_to_end(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--steps", "3", "--digits", "1", "--n-train", "40", "--n-eval", "8",
           "--d-model", "16", "--n-head", "2", "--warm-steps", "3", "--batch-size", "16", "--group-size", "4",
           "--interventions", "0", "2", "--delta", "1", "--eval-every", "1"]  # fmt: skip
    out = run_guarded(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("looked ahead 1 steps") == 2 and out.stdout.count("rolled back") == 2, out.stdout
    final = float(out.stdout.strip().splitlines()[-1].split("accuracy ")[1].split()[0])
    assert math.isfinite(final) and 0.0 <= final <= 1.0
    help_text = run_guarded([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert "at most this (the paper's 0.6)" in help_text.stdout, help_text.stdout  # --help shows field docstrings

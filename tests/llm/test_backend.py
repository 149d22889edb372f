"""The Qwen3-VL backend on a tiny random Qwen3-VL (built from a config, locally trained tokenizer), offline on CPU."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli, tiny_llm_config

from npo_lab.config import GRPOConfig, NPOConfig, RunConfig
from npo_lab.core.losses import policy_loss
from npo_lab.methods import NPO
from npo_lab.train import grpo_step, make_state, restore, snapshot, train
from npo_lab.utils import seed_everything

pytestmark = pytest.mark.llm
transformers = pytest.importorskip("transformers")

from npo_lab.llm.backend import DiskCheckpoint, QwenVLBackend  # noqa: E402
from npo_lab.llm.config import DataConfig, LLMConfig  # noqa: E402
from npo_lab.llm.model import is_vision_param, load_model, load_processor  # noqa: E402

REWARD_MODULE = '''
def even_length(prompts, completions, **columns):
    """1 for a completion of even length: about half the rows, so groups are mixed and guides exist."""
    return [float(len(c) % 2 == 0) for c in completions]
'''


@pytest.fixture(scope="session")
def reward_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rewards")
    (d / "npo_test_rewards.py").write_text(REWARD_MODULE)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


def small_cfg(**kw) -> LLMConfig:
    return tiny_llm_config(**kw)


@pytest.fixture
def make_backend(reward_dir):
    made = []

    def make(seed: int = 0, **kw) -> QwenVLBackend:
        seed_everything(seed)
        be = QwenVLBackend(small_cfg(**kw), seed=seed)
        made.append(be)
        return be

    yield make
    for be in made:
        be.close()


GRPO = GRPOConfig(batch_size=8, group_size=4, lr=1e-2, micro_batch_size=3)


def test_rollout_shapes_rewards_and_behaviour_logprobs(make_backend):
    be = make_backend()
    b = be.rollout([0, 1], 4)
    assert b.size == 8 and b.group_ids.tolist() == [0] * 4 + [1] * 4
    assert set(b.rewards.tolist()) <= {0.0, 1.0}
    lengths = b.mask.sum(-1).long().tolist()
    assert lengths == [len(e["ids"]) for e in b.extras] and max(lengths) <= 6
    # rows of the current weights skip the behaviour forward (NaN): the trainer's anchor is the same number
    assert torch.isnan(b.behavior_logprobs[b.mask.bool()]).all()
    with torch.no_grad():
        lp, ent = be.logprobs(b)
    assert (lp[b.mask.bool()] < 0).all() and (ent[b.mask.bool()] > 0).all()
    assert all(be.tokenizer.decode(e["ids"], skip_special_tokens=True) == e["text"] for e in b.extras)
    # no vision placeholder is ever generated (it would break the image-feature count)
    assert not any(i in be.banned_ids for e in b.extras for i in e["ids"].tolist())
    # a checkpoint's rows carry that policy's log-probs, from the same forward path
    ck = be.save()
    g = be.rollout([0, 1], 4, policy=ck)
    with torch.no_grad():
        lp_g, _ = be.logprobs(g, policy=ck)
    torch.testing.assert_close(g.behavior_logprobs * g.mask, lp_g, rtol=0, atol=1e-5)


@pytest.mark.parametrize("minibatch", [0, 4])  # single pass, and a separate no-grad pass before two minibatches
def test_the_trainer_fills_nan_behaviour_with_the_anchor_in_both_update_modes(make_backend, minibatch):
    grpo = dataclasses.replace(GRPO, minibatch_size=minibatch)
    be = make_backend()
    state = make_state(be, grpo, seed=0)
    seen = {}

    class Spy(NPO):
        def after_step(self, state, outcome):
            seen["batch"], seen["entropy"] = outcome.batch, outcome.entropy

    grpo_step(state, grpo, Spy(NPOConfig(interventions=()), total_steps=10, grpo=grpo))
    b = seen["batch"]
    assert not torch.isnan(b.behavior_logprobs).any() and not torch.isnan(b.old_logprobs).any()
    torch.testing.assert_close(b.behavior_logprobs, b.old_logprobs)
    assert (b.old_logprobs[b.mask.bool()] < 0).all() and (seen["entropy"][b.mask.bool()] > 0).all()


def reference_logprobs(be: QwenVLBackend, b) -> torch.Tensor:
    """Per-token log-probs from a plain full-sequence forward, one row at a time (no left padding, all logits)."""
    out = torch.zeros_like(b.mask)
    for i, e in enumerate(b.extras):
        ex = be.train_set[e["pid"]]
        enc = be.processor(text=[be._prompt_text(ex)], images=list(ex.images), return_tensors="pt")
        ids = torch.cat([enc["input_ids"], e["ids"].unsqueeze(0)], 1)
        inputs = dict(enc, input_ids=ids, attention_mask=torch.ones_like(ids))
        if "mm_token_type_ids" in enc:
            zeros = torch.zeros_like(e["ids"]).unsqueeze(0)
            inputs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], zeros], 1)
        logits = be.model(**inputs).logits[0, enc["input_ids"].shape[1] - 1 : -1].float() / be.cfg.temperature
        logits[:, be.banned_ids] = float("-inf")
        lsm = torch.log_softmax(logits, -1)
        out[i, : len(e["ids"])] = lsm.gather(-1, e["ids"].unsqueeze(-1)).squeeze(-1)
    return out


def test_backend_loss_equals_the_core_loss_on_a_reference_forward(make_backend):
    be = make_backend()
    b = be.rollout([0, 1], 4)
    adv = torch.linspace(-1, 1, b.size)
    with torch.no_grad():
        ref = reference_logprobs(be, b)
        lp, _ = be.logprobs(b)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    old = ref - 0.05 * b.mask
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, aggregation="token_mean")
    loss_backend, _ = policy_loss(be.logprobs(b)[0], old, adv, b.mask, **kw)
    loss_core, _ = policy_loss(reference_logprobs(be, b), old, adv, b.mask, **kw)
    assert loss_backend.item() == pytest.approx(loss_core.item(), abs=1e-6)


@pytest.mark.parametrize("freeze_vision", [False, True])
def test_every_trainable_parameter_changes_and_frozen_ones_do_not(make_backend, freeze_vision):
    be = make_backend(freeze_vision=freeze_vision)
    before = {n: p.detach().clone() for n, p in be.model.named_parameters()}
    state = make_state(be, GRPO, seed=0)
    for _ in range(2):
        m = grpo_step(state, GRPO)
    assert torch.isfinite(torch.tensor(m["loss/total"]))
    for n, p in be.model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if freeze_vision and is_vision_param(n):
            assert not p.requires_grad and not changed, n
        else:
            assert p.requires_grad and changed, f"{n} did not change"


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_lora_trains_adapters_only_and_round_trips(make_backend, freeze_vision):
    pytest.importorskip("peft")
    be = make_backend(lora_r=4, freeze_vision=freeze_vision)
    before = {n: p.detach().clone() for n, p in be.model.named_parameters()}
    state = make_state(be, GRPO, seed=0)
    for _ in range(2):  # LoRA's B starts at 0, so A gets its first gradient on the second step
        grpo_step(state, GRPO)
    for n, p in be.model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        trained = "lora_" in n or (not freeze_vision and "modules_to_save" in n)
        assert changed == trained, n  # adapters (and a trained vision copy) moved; base weights did not
    ck = be.save()
    assert (ck.path / "adapter_model.safetensors").is_file() and (ck.path / "adapter_config.json").is_file()
    b = be.rollout([0], 4)
    with torch.no_grad():
        want, _ = be.logprobs(b)
        guide, _ = be.logprobs(b, policy=ck)  # the adapter folder loads directly (base model + adapter)
    torch.testing.assert_close(guide, want, rtol=0, atol=1e-6)
    grpo_step(state, GRPO)
    be.load(ck)
    with torch.no_grad():
        again, _ = be.logprobs(b)
    assert torch.equal(again, want)


def test_save_load_gives_identical_logits_and_the_folder_loads_with_from_pretrained(make_backend):
    be = make_backend()
    b = be.rollout([0, 1], 2)
    ck = be.save()
    with torch.no_grad():
        want, _ = be.logprobs(b)
    rng = be.gen.get_state()
    with torch.no_grad():
        for p in be.model.parameters():
            p.add_(0.01)
    be.gen.manual_seed(123)
    be.load(ck)
    with torch.no_grad():
        got, _ = be.logprobs(b)
    assert torch.equal(got, want) and torch.equal(be.gen.get_state(), rng)
    # the checkpoint is a plain save_pretrained folder: AutoModelForImageTextToText reads it, logits identical
    m2 = load_model(str(ck.path), torch.float32).eval()
    proc = load_processor(be.name, local_files_only=True)
    ex = be.train_set[0]
    enc = proc(text=[be._prompt_text(ex)], images=list(ex.images), return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(m2(**enc).logits, be.model(**enc).logits)


def test_a_model_folder_with_only_pickled_weights_is_refused(make_backend, tmp_path):
    """Guides, teachers and models load from safetensors only: a pytorch_model.bin (a pickle, which could run code
    when loaded) is never read."""
    be = make_backend()
    folder = tmp_path / "pickled"
    be.model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(be.model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"llm.model: could not load folder .*no file named model.safetensors"):
        load_model(str(folder), torch.float32)


def test_temporary_checkpoints_are_removed_when_released(make_backend, tmp_path):
    import gc

    be = make_backend()
    ck = be.save()
    path = ck.path
    kept = ck.persist(tmp_path / (path.name + "-kept"))
    assert path.is_dir() and Path(kept["path"]).is_dir()
    del ck
    gc.collect()
    assert not path.exists() and Path(kept["path"]).is_dir()
    be.load(kept)  # a persisted checkpoint (plain dict) loads back


def test_snapshot_restore_is_exact_across_grpo_steps(make_backend):
    be = make_backend()
    state = make_state(be, GRPO, seed=0)
    grpo_step(state, GRPO)
    snap = snapshot(state)
    params = {n: p.detach().clone() for n, p in be.model.named_parameters()}
    m1 = grpo_step(state, GRPO)
    restore(state, snap)
    assert all(torch.equal(params[n], p) for n, p in be.model.named_parameters())
    m2 = grpo_step(state, GRPO)  # the same step again: same prompts, same samples, same update
    assert m1["loss/total"] == m2["loss/total"] and m1["reward/on_policy_mean"] == m2["reward/on_policy_mean"]


def test_a_full_npo_step_end_to_end(make_backend):
    """Look-ahead of Delta steps, exact rollback, then guided steps with near-future rows in failing groups."""
    be = make_backend()
    grpo = dataclasses.replace(GRPO)
    npo = NPOConfig(delta=2, interventions=(0,), guide_samples=4, gate=0.6)
    state = make_state(be, grpo, seed=0)
    before = {n: p.detach().clone() for n, p in be.model.named_parameters()}
    source = NPO(npo, 3, grpo)
    rows = []
    res = train(state, source, RunConfig(steps=3, eval_every=3), grpo, on_step=None, logger=_Rows(rows))
    assert res.interventions == [0] and res.lookahead_steps == 2
    guided = [r for r in rows if r.get("guide/gated_frac", 0) > 0]
    assert guided, "no group was guided"
    assert any(r.get("guide/rows", 0) > 0 for r in guided), rows
    assert any("reward/even_length/guide" in r for r in rows)
    assert state.step == 3
    assert any(not torch.equal(before[n], p) for n, p in be.model.named_parameters())


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def log(self, m, step):
        self.rows.append(dict(m))

    def flush(self):
        pass

    def close(self):
        pass


def test_malformed_rows_name_the_row(reward_dir, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(tmp_path / "a.png")
    rows = [
        {"images": ["a.png"], "problem": "<image>How many?", "answer": "1"},
        {"images": ["a.png"], "problem": "<image>How many?"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = small_cfg(data=DataConfig(dataset=str(tmp_path / "d.jsonl"), eval_rows=1))
    with pytest.raises(ValueError, match=r"row 1: missing answer"):
        QwenVLBackend(cfg)


def test_prompt_too_long_is_a_clear_error(make_backend):
    be = make_backend(max_prompt_tokens=8)
    with pytest.raises(ValueError, match=r"row 0: the prompt has \d+ tokens.*llm.max_prompt_tokens=8"):
        be.rollout([0], 2)


def test_a_truncated_checkpoint_is_reported_by_name(make_backend):
    be = make_backend()
    ck = be.save()
    f = ck.path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is unreadable"):
        be.load(ck)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        be.load({"path": str(ck.path) + "-missing"})


def test_disk_checkpoint_repr_names_the_folder(tmp_path):
    ck = DiskCheckpoint(tmp_path / "x", torch.zeros(1), owned=False)
    assert "x" in repr(ck)


def _train_cli(reward_dir, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    """``npo-lab train --backend qwen-vl`` on the tiny model with the test reward, plus ``flags``."""
    env = {"PYTHONPATH": str(reward_dir), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    args = [
        "train", "--backend", "qwen-vl", "--grpo.batch-size", "8",
        "--grpo.group-size", "4", "--llm.tiny-warm-steps", "0", "--llm.max-new-tokens", "4",
        "--llm.data.synthetic-train", "8", "--llm.data.synthetic-eval", "4", "--llm.reward.accuracy-weight", "0",
        "--llm.reward.custom", "npo_test_rewards:even_length", "--out", str(tmp_path), *flags,
    ]  # fmt: skip
    return run_cli(*args, env=env)


def test_cli_trains_and_dry_runs_the_qwen_vl_backend(reward_dir, tmp_path):
    env = {"PYTHONPATH": str(reward_dir), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = _train_cli(
        reward_dir, tmp_path, "--method", "npo", "--steps", "2", "--eval-every", "2", "--npo.delta", "1",
        "--npo.interventions", "0", "--checkpoint-every", "2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    run = next(tmp_path.iterdir())
    assert run.name.startswith("qwen-vl-tiny__npo__0__")
    res = json.loads((run / "result.json").read_text())
    assert res["interventions"] == [0] and res["lookahead_steps"] == 1
    ckpt = run / "checkpoints" / "step_000002"
    assert (ckpt / "policy" / "model.safetensors").is_file() and (ckpt / "manifest.json").is_file()
    # the near-future guide's folder is part of the checkpoint: a resumed run samples its guide rows from it
    assert (ckpt / "loop.method.checkpoint" / "model.safetensors").is_file()
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "qwen3vl_8b_paper.toml"
    dry = run_cli("train", "--backend", "qwen-vl", "--dry-run", "--config", str(recipe), env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "4096 prompt + 4096 response" in dry.stdout and "memory per GPU" in dry.stdout


def test_a_qwen_vl_run_resumes_exactly_with_its_guide_folder(reward_dir, tmp_path):
    """Kill after step 2 (the checkpoints after it are gone), resume: the weights, the guide and the metrics of the
    resumed run are those of the run left alone."""
    import csv

    flags = ["--method", "npo", "--steps", "4", "--eval-every", "2", "--npo.delta", "1", "--npo.interventions", "0",
             "--checkpoint-every", "1", "--keep-checkpoints", "0", "--threads", "1", "--no-tensorboard"]  # fmt: skip
    out = _train_cli(reward_dir, tmp_path / "a", *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    straight = next((tmp_path / "a").iterdir())
    copy = tmp_path / "b"
    shutil.copytree(straight, copy)
    for step in (3, 4):
        shutil.rmtree(copy / "checkpoints" / f"step_{step:06d}")
    env = {"PYTHONPATH": str(reward_dir), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = run_cli("train", "--resume", str(copy), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stdout
    for name in ("policy", "loop.method.checkpoint"):
        a, b = (r / "checkpoints" / "step_000004" / name / "model.safetensors" for r in (straight, copy))
        assert a.read_bytes() == b.read_bytes(), name

    def rows(run):
        with (run / "metrics.csv").open() as f:
            return [r for r in csv.reader(f) if not r[1].startswith("time/") and not r[1].endswith("_s")]

    assert rows(straight) == rows(copy) and len(rows(copy)) > 20


def test_bf16_compute_keeps_float32_master_weights_so_tiny_updates_land(make_backend):
    be = make_backend(dtype="bfloat16")
    trainable = [p for p in be.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    before = [p.detach().clone() for p in trainable]
    grpo = dataclasses.replace(GRPO, lr=1e-6)  # far below bf16's resolution for weights of size ~0.02
    state = make_state(be, grpo, seed=0)
    m = grpo_step(state, grpo)
    assert m["loss/total"] == m["loss/total"]
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, trainable))
    assert changed == len(trainable)
    b = be.rollout([0], 2)
    ck = be.save()
    with torch.no_grad():
        want, _ = be.logprobs(b)
        for p in trainable:
            p.add_(1e-3)
    be.load(ck)  # float32 masters round-trip exactly through the checkpoint
    with torch.no_grad():
        assert torch.equal(be.logprobs(b)[0], want)


def test_gradient_checkpointing_is_on_in_training_and_gives_the_same_gradients(make_backend):
    grads, counts = [], []
    for ckpt in (False, True):
        be = make_backend(gradient_checkpointing=ckpt)
        assert be.model.training
        b = be.rollout([0, 1], 2)
        if grads:  # the same rows for both models (identical weights and sampling seeds)
            assert [e["ids"].tolist() for e in b.extras] == grads[0][1]
        be.model.zero_grad()
        saved = [0]

        def pack(t, saved=saved):
            saved[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lp, _ = be.logprobs(b)
        (-(lp * b.mask).sum()).backward()
        grads.append(([p.grad.clone() for p in be.model.parameters()], [e["ids"].tolist() for e in b.extras]))
        counts.append(saved[0])
    assert counts[1] < counts[0] / 2, counts  # checkpointed layers keep their inputs only, not activations
    for g0, g1 in zip(grads[0][0], grads[1][0]):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-7)


def test_tied_embeddings_round_trip(reward_dir, tmp_path):
    """Qwen3-VL-2B/4B tie lm_head to the input embeddings; save_pretrained writes the shared weight once."""
    from npo_lab.llm.model import write_tiny_model

    folder = write_tiny_model(tmp_path / "tied", seed=0, tie=True)
    be = QwenVLBackend(small_cfg(model=str(folder)), seed=0)
    try:
        assert be.model.lm_head.weight is be.model.get_input_embeddings().weight
        b = be.rollout([0], 2)
        ck = be.save()
        with torch.no_grad():
            want, _ = be.logprobs(b)
            be.model.lm_head.weight.add_(0.01)
        be.load(ck)
        with torch.no_grad():
            assert torch.equal(be.logprobs(b)[0], want)
    finally:
        be.close()


def test_cli_rlep_trains_its_previous_run_on_the_same_backend(reward_dir, tmp_path):
    """The previous GRPO run's checkpoint must outlive the run that made it (a temporary folder otherwise)."""
    out = _train_cli(
        reward_dir, tmp_path, "--method", "rlep", "--steps", "1", "--eval-every", "1", "--rlep.source-steps", "1",
        "--rlep.decode-samples", "2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(next(tmp_path.iterdir()).joinpath("result.json").read_text())
    pool = [e for e in res["events"] if e.get("kind") == "rlep_pool"]
    assert len(pool) == 1 and pool[0]["decoded"] == 8 * 2, res["events"]  # the previous policy decoded every prompt

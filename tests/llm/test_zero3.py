"""DeepSpeed ZeRO-3 on 2 CPU processes (gloo), through torchrun and through accelerate launch with the shipped
config: NPO runs (look-ahead, rollback, guide rows), every parameter is partitioned and trains, both ranks end
with the same weights and metrics, save -> load and snapshot -> restore are exact, and the first step's update
equals a single-process run's on the same batch. Also the config checks (no DeepSpeed needed for those)."""

import copy
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_guarded, tiny_llm_config

pytestmark = pytest.mark.llm
pytest.importorskip("transformers")

from npo_lab.llm.config import LLMConfig  # noqa: E402
from npo_lab.llm.zero import ZERO3_CONFIG, engine_config, read_config, resolve_strategy  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REWARD_MODULE = '''
def sparse_length(prompts, completions, **columns):
    """1 for about a third of the rows: most groups fall below the gate, so guide rows are needed."""
    return [float(len(c) % 3 == 0) for c in completions]
'''


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launcher(name: str) -> list[str]:
    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    # the shipped config, with the process count overridden (accelerate runs torch.distributed.run)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml"), "--num_processes", "2",
            "--main_process_port", free_port()]  # fmt: skip


_RUNS: dict[str, Path] = {}


def launch(name: str, tmp_path_factory) -> Path:
    """The worker's output folder after a 2-process run (once per launcher and test session): llm.strategy
    'deepspeed' under torchrun, 'auto' under accelerate, which must find the DeepSpeed launch and its config file."""
    pytest.importorskip("deepspeed")
    if name in _RUNS:
        return _RUNS[name]
    out = tmp_path_factory.mktemp(f"zero3_{name}")
    (out / "npo_zero3_rewards.py").write_text(REWARD_MODULE)
    env = dict(os.environ, PYTHONPATH=str(out), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    # torchrun: float32 (compared with one process below); accelerate: DeepSpeed's bf16 mode (bf16 compute copies,
    # float32 masters), which CPU runs as well
    strategy, dtype = ("deepspeed", "float32") if name == "torchrun" else ("auto", "bfloat16")
    cmd = [*launcher(name), str(HERE / "zero3_worker.py"), str(out), strategy, dtype]
    res = run_guarded(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    _RUNS[name] = out
    return out


@pytest.mark.parametrize("name", ["torchrun", "accelerate"])
def test_npo_on_zero3_two_cpu_processes(name, tmp_path_factory):
    out = launch(name, tmp_path_factory)
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    expect_source = "the built-in ZeRO-3 config" if name == "torchrun" else "accelerate's deepspeed_config_file"
    assert r0["ds_source"].startswith(expect_source), r0["ds_source"]
    assert r0["compute_dtype"] == ("torch.float32" if name == "torchrun" else "torch.bfloat16")
    assert r0["partitioned"] == r0["model_params"] > 0  # every parameter is a ZeRO-3 parameter
    assert r0["changed"] == r0["n_params"] == r0["trainable"], r0  # every trainable parameter changed
    assert r0["checksum"] == r1["checksum"]  # one model, not two diverging copies
    assert r0["moved"] and r0["rollback_exact"] and r1["rollback_exact"]
    assert r0["round_trip"] and r1["round_trip"]
    assert r0["vllm_same"] and r1["vllm_same"]
    assert r0["nan_skipped"] and r1["nan_skipped"]
    assert r0["interventions"] == r1["interventions"] == [1] and r0["lookahead_steps"] == 1
    assert len(r0["rows"]) == len(r1["rows"]) > 0
    for a, b in zip([r0["step1"], *r0["rows"]], [r1["step1"], *r1["rows"]]):
        assert sorted(a) == sorted(b)
        for k in ("loss/total", "reward/on_policy_mean", "policy/grad_norm"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
                assert a[k] == a[k]  # finite, not NaN
    assert any(r.get("guide/rows", 0) > 0 for r in r0["rows"])


def test_zero3_step_equals_single_process_step(tmp_path_factory, monkeypatch):
    """The 2-rank ZeRO-3 update of the first step (2 accumulated micro-batches per rank, clipping active) equals
    one process's plain Adam update on the same batch from the same weights (float32)."""
    out = launch("torchrun", tmp_path_factory)
    from npo_lab.llm.backend import QwenVLBackend, _read_folder

    from npo_lab.train import grpo_step, make_state

    monkeypatch.syspath_prepend(str(out))  # the custom reward module
    monkeypatch.syspath_prepend(str(HERE))
    import zero3_worker as w

    batch = torch.load(out / "step1" / "batch.pt", weights_only=False)
    zero = json.loads((out / "step1" / "metrics.json").read_text())
    be = QwenVLBackend(tiny_llm_config(w.REWARD, micro_batch=3), seed=0)
    assert be.world_size == 1 and be.zero is None
    be.load(str(out / "step1" / "before"))
    state = make_state(be, w.GRPO, seed=0)
    assert isinstance(state.optimizer, torch.optim.Adam)
    monkeypatch.setattr(be, "rollout", lambda *a, **k: batch)
    single = grpo_step(state, w.GRPO)
    be.close()
    assert single["policy/grad_norm"] > 2 * w.GRPO.max_grad_norm  # the clipping is in play
    for k in ("loss/total", "policy/grad_norm", "policy/ratio_mean", "reward/on_policy_mean"):
        if k in single:
            assert zero[k] == pytest.approx(single[k], rel=1e-5, abs=1e-7), k
    after = _read_folder(out / "step1" / "after")
    before = _read_folder(out / "step1" / "before")
    params = dict(be.model.named_parameters())
    assert sorted(after) == sorted(params)
    off = total = 0
    for k, p in params.items():
        assert not torch.equal(after[k], before[k]), k
        # Adam's first step is lr * g / (|g| + eps): where a clipped gradient is far below eps (1e-8), a last-bit
        # difference of the reduction order shows in the update, so those few elements get a looser bound
        torch.testing.assert_close(after[k], p.detach(), rtol=0, atol=5e-3 * w.GRPO.lr, msg=k)
        diff = (after[k] - p.detach()).abs()
        off, total = off + int((diff > 1e-6).sum()), total + diff.numel()
    assert off < 0.005 * total, (off, total)  # measured: 0.02% of the elements differ by more than 1e-6


# ---- config checks (no DeepSpeed, no processes) -------------------------------------------------------------


def test_shipped_json_is_the_built_in_config():
    assert json.loads((ROOT / "configs" / "deepspeed" / "zero3.json").read_text()) == ZERO3_CONFIG


@pytest.mark.parametrize("name", ["deepspeed_zero3.yaml", "deepspeed_zero3_multinode.yaml"])
def test_accelerate_configs_name_the_shipped_json(name):
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    cfg = config_args.load_config_from_file(str(ROOT / "configs" / "accelerate" / name))
    assert cfg.distributed_type == "DEEPSPEED" and cfg.num_processes == 8 * cfg.num_machines
    assert (ROOT / cfg.deepspeed_config["deepspeed_config_file"]).is_file()
    if cfg.num_machines > 1:  # torch.distributed.run on every node, not pdsh/ssh from node 0
        assert cfg.deepspeed_config["deepspeed_multinode_launcher"] == "standard"


def test_engine_config_fills_what_the_trainer_owns():
    ds = engine_config(ZERO3_CONFIG, "x", torch.bfloat16, hidden=64)
    assert ds["bf16"] == {"enabled": True} and ds["gradient_accumulation_steps"] == 1
    assert ds["managed_gradient_accumulation"] is False and ds["gradient_clipping"] == 0.0
    assert ds["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 640
    assert engine_config(ZERO3_CONFIG, "x", torch.float32, hidden=64)["bf16"] == {"enabled": False}
    assert ZERO3_CONFIG["bf16"]["enabled"] == "auto"  # the built-in config is not modified


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"zero_optimization": {"stage": 2}}, "stage must be 3"),
        ({"optimizer": {"type": "AdamW"}}, "remove the 'optimizer' section"),
        ({"gradient_accumulation_steps": 4}, 'gradient_accumulation_steps must be "auto"'),
        ({"bf16": {"enabled": False}}, "disagrees with llm.dtype"),
        ({"fp16": {"enabled": True}}, "fp16 is not supported"),
        ({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}}, "zero_optimization.sub_group_size"),
    ],
)
def test_engine_config_refuses_what_it_cannot_honour(change, message):
    user = {**copy.deepcopy(ZERO3_CONFIG), **change}
    with pytest.raises(ValueError, match=message):
        engine_config(user, "my.json", torch.bfloat16, hidden=64)


def test_strategy_follows_the_launcher(monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", raising=False)
    assert resolve_strategy(LLMConfig()) == "fsdp2"
    assert resolve_strategy(LLMConfig(strategy="deepspeed")) == "deepspeed"
    assert read_config(LLMConfig())[1] == "the built-in ZeRO-3 config"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert resolve_strategy(LLMConfig()) == "deepspeed"
    with pytest.raises(ValueError, match="llm.strategy='fsdp2', but accelerate launched"):
        resolve_strategy(LLMConfig(strategy="fsdp2"))
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3}}')
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "ds.json"))
    assert read_config(LLMConfig())[0] == {"zero_optimization": {"stage": 3}}
    with pytest.raises(ValueError, match="llm.deepspeed_config: no DeepSpeed config file"):
        read_config(LLMConfig(deepspeed_config=str(tmp_path / "missing.json")))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(LLMConfig(deepspeed_config=str(tmp_path / "bad.json")))


def test_bad_combinations_name_the_field(monkeypatch):
    with pytest.raises(ValueError, match="llm.lora_r must be 0 with llm.strategy='deepspeed'"):
        LLMConfig(strategy="deepspeed", lora_r=8)
    with pytest.raises(ValueError, match="llm.dtype must be .* with llm.strategy='deepspeed'"):
        LLMConfig(strategy="deepspeed", dtype="float16")
    with pytest.raises(ValueError, match="llm.strategy must be one of"):
        LLMConfig(strategy="zero3")  # type: ignore[arg-type]


def test_deepspeed_missing_is_a_clear_error(monkeypatch):
    from npo_lab.llm.backend import QwenVLBackend

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed raises ImportError
    with pytest.raises(ImportError, match=r"llm.strategy='deepspeed' needs DeepSpeed: pip install -e '\.\[deepspeed"):
        QwenVLBackend(LLMConfig(strategy="deepspeed", tiny_warm_steps=0), seed=0)

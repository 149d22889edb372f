"""The vLLM rollout engine without vLLM (CPU): the weights it hands vLLM on a tiny Qwen3-VL (plain, LoRA, LoRA with a
trained vision tower, FSDP2-sharded), and the calls it makes to a fake ``vllm`` module."""

from __future__ import annotations

import json
import os
import socket
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import run_guarded

pytestmark = pytest.mark.llm
pytest.importorskip("transformers")
pytest.importorskip("peft")

from npo_lab.llm import vllm_engine  # noqa: E402
from npo_lab.llm.config import LLMConfig  # noqa: E402
from npo_lab.llm.model import load_model, load_processor, prepare_trainable, write_tiny_model  # noqa: E402
from npo_lab.llm.vllm_engine import VLLMEngine, vllm_weight_names, vllm_weights  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), 0)


def saved_names(folder: Path) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sorted(f.keys())


def lora_model(folder: Path, freeze_vision: bool):
    """A peft LoRA Qwen3-VL whose adapters (and trained vision copy) differ from the base weights."""
    torch.manual_seed(0)
    model = prepare_trainable(load_model(str(folder), torch.float32), LLMConfig(lora_r=4, freeze_vision=freeze_vision))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name or ".modules_to_save." in name:
                p.add_(0.05 * torch.randn_like(p))  # lora_B starts at zero; the vision copy starts as the original
    return model.eval()


def test_weight_names_drop_peft_wrapping():
    named = [
        ("base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight", 1),
        ("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.default.weight", 2),
        ("base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_B.default.weight", 3),
        ("base_model.model.model.visual.original_module.blocks.0.attn.qkv.weight", 4),
        ("base_model.model.model.visual.modules_to_save.default.blocks.0.attn.qkv.weight", 5),
        ("base_model.model.lm_head.weight", 6),
        ("model.language_model.norm.weight", 7),
    ]
    assert list(vllm_weight_names(named)) == [
        ("model.language_model.layers.0.self_attn.q_proj.weight", 1),
        ("model.visual.blocks.0.attn.qkv.weight", 5),
        ("lm_head.weight", 6),
        ("model.language_model.norm.weight", 7),
    ]


def test_plain_model_weights_are_its_checkpoint(tiny):
    model = load_model(str(tiny), torch.float32)
    got = dict(vllm_weights(model))
    assert sorted(got) == saved_names(tiny)
    params = dict(model.named_parameters())
    assert all(torch.equal(got[name], params[name]) for name in got)


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_lora_weights_are_merged_without_touching_the_model(tiny, freeze_vision):
    model = lora_model(tiny, freeze_vision)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    got = dict(vllm_weights(model))
    assert sorted(got) == saved_names(tiny)  # no peft prefixes, no lora_/original_module names
    n_lora = 0
    for name, m in model.named_modules():
        if hasattr(m, "lora_A"):
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            expect = m.base_layer.weight + b @ a * m.scaling["default"]
            torch.testing.assert_close(got[name.removeprefix("base_model.model.") + ".weight"], expect)
            n_lora += 1
    assert n_lora == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    copies = {n: p for n, p in model.named_parameters() if ".modules_to_save." in n}
    assert bool(copies) == (not freeze_vision)
    for name, p in vllm_weight_names(copies.items()):
        assert torch.equal(got[name], p)  # the trained copy of the vision tower, under the original name
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # unchanged and unmerged
    assert not any(getattr(m, "merged", False) for m in model.modules())
    # end to end: a plain model holding the merged weights computes what the peft model computes
    plain = load_model(str(tiny), torch.float32).eval()
    plain.load_state_dict(got, strict=True)
    proc = load_processor(str(tiny))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = proc(text=[text], images=[Image.new("RGB", (64, 64), (200, 30, 30))], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(plain(**enc).logits, model(**enc).logits, rtol=1e-4, atol=1e-5)


# ---- the engine, on a fake vllm module -------------------------------------------------------------------------


# The stand-in holds vLLM 0.33.0 to its signatures, read from that release's wheel: LLM.__init__'s parameters
# (vllm/entrypoints/llm.py) and the EngineArgs fields the engine passes through **kwargs (vllm/engine/arg_utils.py);
# SamplingParams' fields and the checks of its _verify_args (vllm/sampling_params.py); the executor backends of
# vllm/config/parallel.py; the prompt keys of vllm/inputs/llm.py (TextPrompt, _PromptOptions,
# MultiModalDataBuiltins).
LLM_INIT = {
    "model", "runner", "convert", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code",
    "allowed_local_media_path", "allowed_media_domains", "tensor_parallel_size", "dtype", "quantization", "revision",
    "tokenizer_revision", "chat_template", "seed", "gpu_memory_utilization", "cpu_offload_gb", "offload_group_size",
    "offload_num_in_group", "offload_prefetch_step", "offload_params", "enforce_eager", "enable_return_routed_experts",
    "return_sampling_mask", "disable_custom_all_reduce", "hf_token", "hf_overrides", "mm_processor_kwargs",
    "pooler_config", "structured_outputs_config", "profiler_config", "attention_config", "kv_cache_memory_bytes",
    "compilation_config", "quantization_config", "logits_processors", "spec_method", "spec_model", "spec_tokens",
}  # fmt: skip
ENGINE_ARGS = {"distributed_executor_backend", "max_model_len", "limit_mm_per_prompt", "enable_sleep_mode",
               "max_num_seqs", "enable_prefix_caching", "disable_log_stats"}  # fmt: skip
SAMPLING_FIELDS = {
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "watermarking", "top_p",
    "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
    "prompt_logprobs", "prompt_logprob_token_ids", "prompt_logprob_start", "logprob_token_ids", "flat_logprobs",
    "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
    "output_kind", "stream_interval", "skip_clone", "output_text_buffer_length", "structured_outputs", "logit_bias",
    "allowed_token_ids", "extra_args", "bad_words", "skip_reading_prefix_cache", "thinking_token_budget",
    "repetition_detection", "routed_experts_prompt_start", "trace_decode_token_ids",
}  # fmt: skip
PROMPT_KEYS = {"prompt", "multi_modal_data", "media_io_kwargs", "mm_processor_kwargs", "multi_modal_uuids",
               "cache_salt"}  # fmt: skip


class FakeLLM:
    def __init__(self, model, **kw):
        unknown = set(kw) - LLM_INIT - ENGINE_ARGS
        assert not unknown, f"not an argument of vllm 0.33's LLM(): {unknown}"
        assert kw.get("distributed_executor_backend") in (None, "ray", "mp", "uni", "external_launcher")
        assert kw.get("dtype", "auto") in ("auto", "half", "float16", "bfloat16", "float", "float32")
        assert 0 < kw.get("gpu_memory_utilization", 0.92) <= 1
        assert all(isinstance(v, int) for v in kw.get("limit_mm_per_prompt", {}).values())
        self.kw, self.calls, self.loaded = dict(model=model, **kw), [], []
        self.llm_engine = types.SimpleNamespace(reset_encoder_cache=lambda: self.calls.append("reset_encoder_cache"))

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None, mm_processor_kwargs=None):  # fmt: skip
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)  # one per prompt
        for prompt in prompts:
            assert set(prompt) <= PROMPT_KEYS and isinstance(prompt["prompt"], str), prompt
            assert set(prompt.get("multi_modal_data", {})) <= {"image", "video", "audio", "vision_chunk"}
        self.calls.append(("generate", prompts, sampling_params))
        return [
            types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=(7 + i, 2))]) for i in range(len(prompts))
        ]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        # the worker method (vllm/v1/worker/gpu_worker.py -> gpu_model_runner.py):
        # reload_weights(weights_iterator=None, weights_path=None, is_checkpoint_format=True)
        assert method == "reload_weights" and not args
        assert set(kwargs) <= {"weights_iterator", "weights_path", "is_checkpoint_format"}
        assert kwargs["is_checkpoint_format"] is True
        self.loaded = [(n, t.clone()) for n, t in kwargs["weights_iterator"]]
        self.calls.append(method)
        return [None]

    def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
        self.calls.append("reset_prefix_cache")
        return True


class FakeSamplingParams:
    """Only vLLM 0.33's fields, with the range checks of its _verify_args that this engine's values could meet."""

    def __init__(self, **kw):
        unknown = set(kw) - SAMPLING_FIELDS
        assert not unknown, f"not a field of vllm 0.33's SamplingParams: {unknown}"
        assert 0.0 <= kw.get("temperature", 1.0) <= 2.0
        assert 0.0 < kw.get("top_p", 1.0) <= 1.0
        assert isinstance(kw.get("top_k", 0), int) and kw.get("top_k", 0) >= -1
        assert kw.get("max_tokens", 16) >= 1 and kw.get("n", 1) >= 1
        assert all(isinstance(t, int) for t in kw.get("stop_token_ids") or [])
        bias = kw.get("logit_bias")
        assert bias is None or all(isinstance(k, int) and isinstance(v, float) for k, v in bias.items())
        assert kw.get("seed") is None or 0 <= kw["seed"] < 2**64
        self.kw = kw


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored after the test
    return fake


CFG = LLMConfig(temperature=0.7, top_p=0.9, max_new_tokens=5, max_prompt_tokens=100)


def test_engine_builds_one_colocated_llm(fake_vllm):
    engine = VLLMEngine("some/model", CFG, torch.device("cuda:0"), seed=3, banned_ids=[5, 4, 5], stop_ids=[2])
    assert engine.llm.kw == dict(
        model="some/model",
        tensor_parallel_size=1,
        distributed_executor_backend="uni",
        dtype="bfloat16",  # dtype auto on a GPU
        gpu_memory_utilization=0.4,
        max_model_len=105,
        limit_mm_per_prompt={"video": 0},
        seed=3,
    )
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # the engine core stays in this process


def test_engine_joins_the_launchers_group(fake_vllm, monkeypatch):
    monkeypatch.setattr(vllm_engine.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(vllm_engine.dist, "get_world_size", lambda: 2)
    engine = VLLMEngine("m", LLMConfig(dtype="float16"), torch.device("cuda:1"), seed=0)
    assert engine.llm.kw["distributed_executor_backend"] == "external_launcher"
    assert engine.llm.kw["dtype"] == "float16"


def test_generate_sends_one_request_per_row(fake_vllm):
    engine = VLLMEngine("m", CFG, torch.device("cuda"), seed=3, banned_ids=[5, 4, 5], stop_ids=[2, 3])
    im1, im2 = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), (9, 9, 9))
    out = engine.generate(["a", "b", "c"], [[im1], [im1, im2], []], greedy=False, seed=11)
    assert out == [[7, 2], [8, 2], [9, 2]]
    _, prompts, params = engine.llm.calls[-1]
    assert prompts == [
        {"prompt": "a", "multi_modal_data": {"image": im1}},
        {"prompt": "b", "multi_modal_data": {"image": [im1, im2]}},
        {"prompt": "c"},
    ]
    common = dict(n=1, max_tokens=5, stop_token_ids=[2, 3], detokenize=False)
    common["logit_bias"] = {4: float("-inf"), 5: float("-inf")}  # the vision placeholders are never sampled
    assert [p.kw for p in params] == [
        dict(common, temperature=0.7, top_p=0.9, top_k=0, seed=11 * 1_000_003 + i) for i in range(3)
    ]
    engine.generate(["a"], [[]], greedy=True, seed=11)
    (p,) = engine.llm.calls[-1][2]
    assert p.kw == dict(common, temperature=0.0, seed=11 * 1_000_003)


def test_sync_loads_changed_weights_only(fake_vllm, tiny):
    engine = VLLMEngine("m", CFG, torch.device("cuda"), seed=0)
    model = lora_model(tiny, freeze_vision=False)
    assert engine.sync(model, ("current", 1)) is True
    assert engine.llm.calls == ["reload_weights", "reset_prefix_cache", "reset_encoder_cache"]
    expect = dict(vllm_weights(model))
    assert [n for n, _ in engine.llm.loaded] == list(expect)
    assert all(torch.equal(t, expect[n]) for n, t in engine.llm.loaded)
    assert engine.sync(model, ("current", 1)) is False  # unchanged: nothing loaded
    assert len(engine.llm.calls) == 3
    assert engine.sync(model, ("checkpoint", "/ckpt-1")) is True
    assert engine.llm.calls[3:] == ["reload_weights", "reset_prefix_cache", "reset_encoder_cache"]
    assert engine.synced_key == ("checkpoint", "/ckpt-1") and engine.stats["syncs"] == 2


def test_engine_needs_vllm_and_a_gpu(monkeypatch):
    with pytest.raises(ValueError, match="CUDA device"):
        VLLMEngine("m", LLMConfig(), torch.device("cpu"), seed=0)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match=r"\[vllm\] install profile in its own environment"):
        VLLMEngine("m", LLMConfig(), torch.device("cuda"), seed=0)
    with pytest.raises(ValueError, match="temperature <= 2"):
        VLLMEngine("m", LLMConfig(temperature=2.5), torch.device("cuda"), seed=0)


# ---- FSDP2: two CPU ranks gather each parameter and merge LoRA like the unsharded model -------------------------

WORKER = """
import json, sys
import torch, torch.distributed as dist
from npo_lab.llm.config import LLMConfig
from npo_lab.llm.dist import fully_shard_qwen_vl
from npo_lab.llm.model import load_model, prepare_trainable
from npo_lab.llm.vllm_engine import vllm_weights

dist.init_process_group("gloo")
torch.manual_seed(0)
model = prepare_trainable(load_model(sys.argv[1], torch.float32), LLMConfig(lora_r=4, freeze_vision=False))
with torch.no_grad():
    for name, p in model.named_parameters():
        if ".lora_B." in name or ".modules_to_save." in name:
            p.add_(0.05 * torch.randn_like(p))
ref = {n: t.clone() for n, t in vllm_weights(model)}
fully_shard_qwen_vl(model)
sharded = sum(hasattr(p, "full_tensor") for p in model.parameters())
got = dict(vllm_weights(model))
same = sorted(got) == sorted(ref) and all(torch.allclose(got[n], ref[n], atol=1e-6) for n in ref)
out = {"sharded": sharded, "same": same, "n": len(got)}
open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w").write(json.dumps(out))
dist.destroy_process_group()
"""


def test_fsdp2_weights_are_gathered_per_parameter(tiny, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = run_guarded([*cmd, str(tmp_path / "worker.py"), str(tiny), str(tmp_path)], capture_output=True,
                      text=True, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["sharded"] > 0 and r["same"] and r["n"] == len(saved_names(tiny)), r

"""Configuration of the Qwen3-VL backend (standard library only, so ``npo-lab --help`` stays cheap).

Defaults are sized for the CPU path (the tiny random Qwen3-VL on the synthetic image task); the recipes in
``recipes/`` carry the real runs' values. ``[paper]`` marks a value the NPO paper states, ``[assumption]`` a
choice made here where it is silent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from npo_lab.config import _check, _check_choices

REASON_KINDS = ("color_add", "larger_color", "count_add", "compare")
"""The question kinds of the synthetic ``reason`` task (npo_lab.llm.synthetic draws them)."""
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # module:function or module:Class.method
_DEVICE = re.compile(r"^(auto|cpu|(cuda|mps|xpu|npu|hpu)(:\d+)?)$")


@dataclass
class DataConfig:
    """Where prompts come from: the built-in synthetic image task, a JSONL file, or a Hugging Face dataset."""

    dataset: str = "synthetic"
    """'synthetic' (PIL-drawn verifiable image tasks, offline), a .jsonl file, a folder written by
    datasets' save_to_disk, or a Hugging Face dataset id (e.g. hiyouga/geometry3k; loaded with
    datasets.load_dataset, which may download it)."""
    split: str = "train"
    """Training split (Hugging Face datasets; ignored for JSONL and synthetic)."""
    eval_split: str = "test"
    """Held-out split; for a JSONL file, a second file given as eval_file."""
    eval_file: str = ""
    """JSONL only: the held-out file; empty = hold out the last eval_rows rows of the training file."""
    image_key: str = "images"
    """Column with the image(s): a list (or one) of paths relative to the JSONL file, {'bytes': ...} or
    {'path': ...} dicts, or PIL images (the geometry3k schema of verl and EasyR1)."""
    question_key: str = "problem"
    """Column with the question text; '<image>' in it marks where each image goes (else images come first)."""
    answer_key: str = "answer"
    """Column with the ground-truth answer (a number or LaTeX; graded with math-verify)."""
    max_rows: int = 0
    """Use at most this many training rows; 0 = all."""
    eval_rows: int = 64
    """Held-out rows scored by evaluate() (greedy)."""
    bad_rows: Literal["error", "skip"] = "error"
    """A malformed row (missing image, answer or question; unreadable image): error stops with the row's index;
    skip drops it and counts it (a warning gives the count and the first bad row)."""
    system_prompt: str = "Reason briefly, then give the final answer in \\boxed{}."
    """System message of every prompt; empty for none. [assumption]"""
    synthetic_task: Literal["count", "digits", "mixed", "color", "reason"] = "mixed"
    """synthetic: count (how many shapes), digits (read the digits and add them), mixed (both), color (name
    the colour of one large shape by its number), or reason (read the image, then one small step of reasoning:
    the kinds of reason_kinds in turn; npo_lab.llm.synthetic describes each)."""
    reason_kinds: str = "color_add,larger_color,count_add,compare"
    """synthetic reason: comma-separated question kinds, taken in turn: color_add (a shape's colour number plus
    m), larger_color (the colour number of the larger of two shapes), count_add (how many shapes, 1-4, plus m),
    compare (the larger of two digits)."""
    reason_max_addend: int = 4
    """synthetic reason: the addend m of color_add and count_add is drawn from 1..reason_max_addend."""
    synthetic_train: int = 256
    """synthetic: training prompts."""
    synthetic_eval: int = 64
    """synthetic: held-out prompts (a disjoint seed stream)."""
    synthetic_seed: int = 0
    """synthetic: seed of the generator (the task set is a pure function of it)."""
    image_size: int = 64
    """synthetic: side of the square images, in pixels."""

    def __post_init__(self) -> None:
        for name in ("max_rows", "eval_rows", "synthetic_train", "synthetic_eval"):
            _check(getattr(self, name) >= 0, f"llm.data.{name}", getattr(self, name), ">= 0")
        _check(self.image_size >= 16, "llm.data.image_size", self.image_size, ">= 16")
        _check(self.reason_max_addend >= 1, "llm.data.reason_max_addend", self.reason_max_addend, ">= 1")
        kinds = [k.strip() for k in self.reason_kinds.split(",") if k.strip()]
        _check(
            bool(kinds) and all(k in REASON_KINDS for k in kinds) and len(set(kinds)) == len(kinds),
            "llm.data.reason_kinds",
            self.reason_kinds,
            f"comma-separated distinct kinds of {', '.join(REASON_KINDS)}",
        )
        for name in ("image_key", "question_key", "answer_key"):
            _check(bool(getattr(self, name)), f"llm.data.{name}", getattr(self, name), "a column name")
        for name in ("dataset", "split", "eval_split"):
            _check(bool(getattr(self, name)), f"llm.data.{name}", getattr(self, name), "non-empty")
        _check_choices(self, "llm.data")


@dataclass
class RewardConfig:
    """The verifiable reward: math-verify accuracy, an optional format reward, optional custom callables."""

    accuracy_weight: float = 1.0
    """Weight of the accuracy reward: 1 when the completion's final answer (its last box, answer tag or answer
    phrase, with no later answer, retraction or hedge: docs/llm.md) equals the ground truth, by math-verify."""
    format_weight: float = 0.0
    """Weight of the format reward (1 when the completion ends with a \\boxed{} answer, and has a
    <think>...</think> block first when think_tags is on). Keep it below 0.5 so a well-formatted wrong
    answer never counts as correct (grpo.correct_threshold). [assumption: off, as in the paper's RLVR]"""
    think_tags: bool = False
    """The format reward also asks for a <think>...</think> block before the answer."""
    custom: str = ""
    """Extra reward callables, comma-separated 'module:function' (TRL-style:
    fn(prompts, completions, *, images, **columns) -> list[float | None]); each is added with weight 1."""
    timeout_s: float = 5.0
    """Time limit for grading one completion (parse + verify), enforced in a worker process that is
    restarted when it runs over; a timed-out completion scores 0."""
    max_chars: int = 4000
    """Only the last max_chars characters of a completion are parsed (size limit on untrusted text)."""
    workers: int = 1
    """Grading worker processes."""
    lowest_terms: bool = True
    """A fraction in the answer must be in lowest terms (2/4 is wrong for 1/2, 4/2 for 2) unless the ground truth
    itself has an unreduced fraction. Turn off for tasks that do not ask for simplified answers. [assumption: on,
    as MATH-style ground truths are reduced and their problems ask for simplest form]"""
    decimal_match: Literal["exact", "rounded"] = "exact"
    """How a plain-number answer is compared with a plain-number ground truth. exact: equal as exact rationals
    (2.50 = 5/2; 2.5000001 is wrong for 2.5, 0.333 for 1/3). rounded: an answer with more decimal places than a
    decimal ground truth also counts when it rounds (half away from zero) to it at the ground truth's places
    (3.1416 for 3.14), for datasets whose answers were rounded; then 2.5000001 counts for 2.5 too. [assumption]"""

    def __post_init__(self) -> None:
        _check(self.timeout_s > 0, "llm.reward.timeout_s", self.timeout_s, "> 0")
        _check(self.max_chars >= 16, "llm.reward.max_chars", self.max_chars, ">= 16")
        _check(self.workers >= 1, "llm.reward.workers", self.workers, ">= 1")
        _check(self.accuracy_weight >= 0, "llm.reward.accuracy_weight", self.accuracy_weight, ">= 0")
        _check(self.format_weight >= 0, "llm.reward.format_weight", self.format_weight, ">= 0")
        for spec in (c.strip() for c in self.custom.split(",") if c.strip()):
            _check(bool(_CALLABLE.match(spec)), "llm.reward.custom", spec, "comma-separated 'module:function' paths")
        _check_choices(self, "llm.reward")


@dataclass
class LLMConfig:
    """The Qwen3-VL policy, its generation engine, its data and its rewards."""

    model: str = "tiny"
    """A Hugging Face id (e.g. Qwen/Qwen3-VL-8B-Instruct), a local folder written by save_pretrained, or 'tiny':
    a randomly initialised ~250k-parameter Qwen3-VL with a locally trained tokenizer (CPU, tests, tutorials)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype (forward passes under autocast, or FSDP2's mixed precision); auto = bfloat16 on a GPU,
    float32 on CPU. Trainable weights are kept in float32 (master weights: a bf16 weight would round small Adam
    updates away), frozen ones in this dtype; guide models load in it."""
    device: str = "auto"
    """auto = cuda:<local rank> when a GPU is visible, else cpu."""
    attn_implementation: str = "sdpa"
    """transformers attention implementation (sdpa, eager, flash_attention_2)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% more time)."""
    freeze_vision: bool = False
    """Keep the vision tower (and its merger) fixed. [assumption: trained, EasyR1's default]"""
    lora_r: int = 0
    """LoRA rank on the language model's linear layers (peft); 0 = full fine-tuning."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    """Comma-separated module names that get LoRA adapters (language model only; vision per freeze_vision)."""
    max_prompt_tokens: int = 512
    """Prompts longer than this (text + image tokens) are rejected with the row's index. The paper: 4096."""
    max_new_tokens: int = 24
    """Completion budget. The paper: 4096 [paper: 8192 split evenly between prompt and response]."""
    temperature: float = 1.0
    """Sampling temperature (also applied to every training log-prob, so ratios stay consistent)."""
    top_p: float = 1.0
    """Nucleus sampling; 1 = off (log-probs are of the untruncated tempered distribution)."""
    micro_batch: int = 8
    """Rows per generation pass and per no-grad log-prob pass (the gradient micro-batch is
    grpo.micro_batch_size)."""
    engine: Literal["hf", "vllm"] = "hf"
    """Rollout engine: hf (transformers generate; CPU and GPU, tested) or vllm (GPU only; install profile
    '.[vllm]' in its own environment; weights are synced after every update)."""
    strategy: Literal["auto", "fsdp2", "deepspeed"] = "auto"
    """How the model is sharded when the run has several processes (torchrun / accelerate launch): fsdp2
    (torch's fully_shard per layer), deepspeed (DeepSpeed ZeRO-3: the '[deepspeed]' install profile; full
    fine-tuning, bfloat16 or float32), or auto = deepspeed when accelerate launched the run with a DeepSpeed config,
    else fsdp2. With one process nothing is sharded and neither is used."""
    deepspeed_config: str = ""
    """strategy deepspeed: a DeepSpeed JSON config (ZeRO stage 3); empty = the deepspeed_config_file that accelerate
    launch names, else the built-in one (configs/deepspeed/zero3.json). Keys the trainer owns (batch sizes,
    accumulation, clipping) must be "auto" or absent; no optimizer or scheduler section."""
    vllm_gpu_memory_utilization: float = 0.4
    """vllm: share of the GPU's total memory the engine takes (its weights + KV cache, beside training); vLLM checks
    that this much is free when it starts, after the training model is on the GPU."""
    scratch_dir: str = ""
    """Where look-ahead checkpoints (save_pretrained folders) go; empty = a temporary folder. Each is about
    4 bytes x trainable parameters (float32 master weights: 32 GiB for a full 8B run; a LoRA run writes only the
    adapter)."""
    teacher: str = ""
    """luffy only: the external teacher (a hub id or folder of a stronger model sharing the tokenizer)."""
    tiny_seed: int = 0
    """model=tiny: seed of the random weights (the tokenizer is deterministic)."""
    tiny_warm_steps: int = 150
    """model=tiny: supervised warm-start steps on the training rows' answers written as '\\boxed{answer}', so RL
    starts from a policy that answers in format and is sometimes right (as the arithmetic task's warm start).
    [assumption, tuned]"""
    tiny_warm_lr: float = 3e-3
    """model=tiny: warm-start Adam learning rate."""
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        _check(bool(self.model), "llm.model", self.model, "a hub id, a folder, or 'tiny'")
        _check(bool(_DEVICE.match(self.device)), "llm.device", self.device, "auto, cpu or cuda/mps/xpu/npu/hpu[:N]")
        _check(bool(self.attn_implementation.strip()), "llm.attn_implementation", self.attn_implementation, "a name")
        _check(self.lora_alpha >= 1, "llm.lora_alpha", self.lora_alpha, ">= 1")
        _check(
            bool(self.lora_targets.strip(",")), "llm.lora_targets", self.lora_targets, "comma-separated module names"
        )
        _check(self.tiny_warm_lr > 0, "llm.tiny_warm_lr", self.tiny_warm_lr, "> 0")
        _check(self.max_prompt_tokens >= 8, "llm.max_prompt_tokens", self.max_prompt_tokens, ">= 8")
        _check(self.max_new_tokens >= 1, "llm.max_new_tokens", self.max_new_tokens, ">= 1")
        _check(self.temperature > 0, "llm.temperature", self.temperature, "> 0")
        _check(0 < self.top_p <= 1, "llm.top_p", self.top_p, "in (0, 1]")
        _check(self.micro_batch >= 1, "llm.micro_batch", self.micro_batch, ">= 1")
        _check(self.lora_r >= 0, "llm.lora_r", self.lora_r, ">= 0")
        _check(self.tiny_warm_steps >= 0, "llm.tiny_warm_steps", self.tiny_warm_steps, ">= 0")
        _check(0 <= self.lora_dropout < 1, "llm.lora_dropout", self.lora_dropout, "in [0, 1)")
        _check(
            0 < self.vllm_gpu_memory_utilization < 1,
            "llm.vllm_gpu_memory_utilization",
            self.vllm_gpu_memory_utilization,
            "in (0, 1)",
        )
        if self.strategy == "deepspeed":
            one_gpu = "0 with llm.strategy='deepspeed' (LoRA is the one-GPU path)"
            _check(self.lora_r == 0, "llm.lora_r", self.lora_r, one_gpu)
            _check(
                self.dtype != "float16",
                "llm.dtype",
                self.dtype,
                "'bfloat16', 'float32' or 'auto' with llm.strategy='deepspeed' (fp16 would need loss scaling)",
            )
        if self.engine == "vllm":
            _check(self.temperature <= 2, "llm.temperature", self.temperature, "<= 2 with llm.engine='vllm'")
        _check_choices(self, "llm")

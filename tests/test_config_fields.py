"""Every config field is validated: a bad value is refused with an error that names the field and what it accepts.

The tables below list, for every field of every config, the values it must refuse, or say why any value of the
field's type is acceptable. A new field that is in neither table fails ``test_every_field_is_covered``, so
nobody adds a setting without deciding what it refuses.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from npo_lab.envs.config import GymConfig, TinyLMConfig
from npo_lab.llm.config import DataConfig, LLMConfig, RewardConfig

from npo_lab.cli import BenefitMapCommand, CompareCommand, ExperimentConfig, QVSCommand, TrainCommand
from npo_lab.config import AutoNPOConfig, ExGRPOConfig, GRPOConfig, LuffyConfig, NPOConfig, RLEPConfig, RunConfig
from npo_lab.tasks.arithmetic import ArithmeticConfig

NAN, INF = math.nan, math.inf

# (config class, prefix in error messages) -> {field: [values it must refuse]}
BAD: dict[tuple[type, str], dict[str, list]] = {
    (GRPOConfig, "grpo"): {
        "batch_size": [0, -8, 30],  # 30: not divisible by the group size
        "group_size": [1, 0],
        "minibatch_size": [-1, 48],
        "micro_batch_size": [-1],
        "epochs": [0],
        "lr": [0.0, -1e-3, NAN, INF],
        "lr_schedule": ["step", ""],
        "lr_warmup_steps": [-1],
        "max_grad_norm": [-1.0, NAN],
        "advantage": ["gae"],
        "aggregation": ["mean"],
        "norm_constant": [-1.0, INF],
        "clip_eps_low": [-0.1, 1.0, NAN],
        "clip_eps_high": [-0.1, INF],
        "dual_clip_c": [0.5, 1.0, -3.0, NAN],
        "log_ratio_clamp": [-1.0, NAN],
        "kl_coef": [-0.1, NAN],
        "kl_estimator": ["k2"],
        "entropy_coef": [NAN, INF],
        "correct_threshold": [NAN, -INF],
    },
    (NPOConfig, "npo"): {
        "delta": [0, -5],
        "gate": [-0.1, 1.5, NAN],
        "gate_op": ["<=", "ge"],
        "guide_slots": [0, 2],  # 2: the cache (the default guide_source) keeps one row per prompt
        "guide_source": ["teacher"],
        "guide_samples": [0],
        "slot": ["first"],
        "guide_loss": ["ppo"],
        "shaping_gamma": [0.0, -1.0, INF],
        "is_cap": [0.0, NAN],
        "interventions": [(-1,), (0, -5)],
        "every": [-1],
        "when": ["always"],
        "window": ["forever"],
        "guidance_window": [-1],
        "future": ["past"],
        "extrapolate_k": [0],
        "extrapolate_alpha": [-1.0, NAN],
    },
    (AutoNPOConfig, "autonpo"): {
        "mode": ["future"],
        "candidates": [(), (0, 5), (-2,), (3, 10)],  # (3, 10): not multiples of snapshot_every in retrospective mode
        "snapshot_every": [0],
        "slice": ["all"],
        "window": [1, 0],
        "smoothing": [0.0, 1.5, NAN],
        "stagnation_slope": [NAN, INF],
        "entropy_slope": [NAN, INF],
        "entropy_floor": [-0.1, INF],
        "entropy_fraction": [-0.1, 1.0],
        "bootstrap_floor": [-0.1, 1.1],
        "bootstrap_until": [-1],
        "cooldown": [0],
        "max_interventions": [-1],
        "pool_size": [0],
        "pool_refresh": ["lru"],
        "q_samples": [0],
        "q_prompts": [0],
        "v_estimator": ["kl", "grad_norm"],  # grad_norm: lookahead mode only
        "kl_beta": [0.0, NAN],
        "v_floor": [0.0, NAN],
        "max_grad_rows": [1],
    },
    (LuffyConfig, "luffy"): {
        "gate": [-0.1, 1.1],
        "guide_slots": [0],
        "teacher_samples": [0],
        "guide_loss": ["x"],
        "shaping_gamma": [0.0, NAN],
        "recipe": ["verl"],
    },
    (ExGRPOConfig, "exgrpo"): {
        "experience_ratio": [0.0, 1.0],
        "start_solve_rate": [-0.1, 1.1],
        "bucket_sigma": [0.0],
        "selection": ["oldest"],
        "guide_loss": ["x"],
        "shaping_gamma": [0.0],
        "rows_per_prompt": [0],
        "recipe": ["trl"],
    },
    (RLEPConfig, "rlep"): {
        "replay_per_group": [0],
        "decode_samples": [0],
        "guide_loss": ["x"],
        "source_steps": [-1],
    },
    (RunConfig, ""): {
        "steps": [0],
        "eval_every": [0],
        "final_evals": [0],
        "checkpoint_every": [-1],
        "keep_checkpoints": [-1],
    },
    (ArithmeticConfig, "task"): {
        "name": ["gsm8k"],
        "digits": [0, 7],
        "operation": ["sub"],
        "modulus": [1],
        "n_train": [0, 10**6],  # 10**6: more problems than 3-digit operands allow
        "n_eval": [0],
        "min_digits": [-1, 4],  # 4: more than digits=3
    },
    (TinyLMConfig, "model"): {
        "d_model": [4, 66],  # 66: not divisible by n_head=4
        "n_layer": [0],
        "n_head": [0, 3],
        "temperature": [0.0, NAN],
        "warm_steps": [-1],
        "warm_lr": [0.0, INF],
        "warm_batch": [0],
        "warm_easy_digits": [0],
        "warm_full_frac": [-0.1, 1.1],
        "warm_styles": ["", "bare,cursive"],
        "teacher_style": ["cursive"],
        "teacher_steps": [0],
    },
    (GymConfig, "gym"): {
        "policy": ["lstm"],
        "hidden": [0],
        "n_train": [0],
        "n_eval": [0],
        "temperature": [0.0, INF],
        "teacher_steps": [0],
    },
    (DataConfig, "llm.data"): {
        "dataset": [""],
        "split": [""],
        "eval_split": [""],
        "image_key": [""],
        "question_key": [""],
        "answer_key": [""],
        "max_rows": [-1],
        "eval_rows": [-1],
        "bad_rows": ["ignore"],
        "synthetic_task": ["shapes"],
        "reason_kinds": ["", "count", "compare,compare"],
        "reason_max_addend": [0],
        "synthetic_train": [-1],
        "synthetic_eval": [-1],
        "image_size": [8],
    },
    (RewardConfig, "llm.reward"): {
        "accuracy_weight": [-1.0, NAN],
        "format_weight": [-1.0, INF],
        "custom": ["module_without_function", "a:b:c", "mod:", "mod:1fn"],
        "timeout_s": [0.0, INF],
        "max_chars": [8],
        "workers": [0],
        "decimal_match": ["round", ""],
    },
    (LLMConfig, "llm"): {
        "model": [""],
        "dtype": ["int8"],
        "device": ["gpu", "cuda:x", "", "tpu"],
        "attn_implementation": ["", " "],  # any name transformers knows (sdpa, flash_attention_4, a hub kernel)
        "lora_r": [-1],
        "lora_alpha": [0],
        "lora_dropout": [-0.1, 1.0],
        "lora_targets": [""],
        "max_prompt_tokens": [4],
        "max_new_tokens": [0],
        "temperature": [0.0, NAN],
        "top_p": [0.0, 1.5],
        "micro_batch": [0],
        "engine": ["sglang"],
        "strategy": ["zero3"],
        "vllm_gpu_memory_utilization": [0.0, 1.0],
        "tiny_warm_steps": [-1],
        "tiny_warm_lr": [0.0, NAN],
    },
    (CompareCommand, ""): {
        "methods": ["", "grpo,grpo", "ppo"],
        "seeds": [0],
        "workers": [-1],
        "target": [-0.1, 1.1],
        "target_fraction": [0.0, 1.5],
        "bootstrap": [10],
    },
    (ExperimentConfig, ""): {"backend": ["mujoco"]},
    (TrainCommand, ""): {
        "method": ["ppo", "npo:delta=0"],
        "previous": ["no-such-checkpoint"],
        "threads": [-1],
    },
    (QVSCommand, ""): {
        "at": [(), (-1,), (10**6,)],
        "deltas": [(), (0,)],
        "probe": [0],
        "k": [0],
        "seeds": [0],
        "workers": [-1],
        "extrapolate_k": [-1],
    },
    (BenefitMapCommand, ""): {
        "row_knob": ["steps", "task.no_such_field", "nosection.x"],
        "row_values": [("0", "7"), ("x",), ("1", "1")],  # 7: above digits; x: not an integer; 1 twice
        "col_knob": ["grpo", "task.min_digits"],  # the row knob again
        "col_values": [("0.0",), (), ("0.0001", "0.0001")],  # grpo.lr = 0; a knob with no value; a value twice
        "methods": ["npo,npo:delta=1", "grpo,rlep,npo:delta=1", "grpo,grpo,npo:delta=1"],
        "control": ["npo:delta=2"],
        "qvs_at": [(), (100,)],
        "qvs_deltas": [(), (0,)],
        "qvs_probe": [0],
        "qvs_k": [0],
        "extrapolate_k": [-1],
        "target_fraction": [0.0],
        "seeds": [0],
        "workers": [-1],
        "bootstrap": [10],
    },
}

# fields where every value of the field's type is acceptable, and why
FREE: dict[type, dict[str, str]] = {
    NPOConfig: {"restore_optimizer": "a switch"},
    RunConfig: {"tensorboard": "a switch"},
    ArithmeticConfig: {"reverse_answer": "a switch", "seed": "any integer seeds a split"},
    TinyLMConfig: {"teacher_seed": "any integer seeds the teacher"},
    GymConfig: {"vector": "a switch", "teacher_seed": "any integer seeds the teacher"},
    DataConfig: {
        "eval_file": "empty, or a path read (and named if missing) when the data loads",
        "system_prompt": "any text, empty for none",
        "synthetic_seed": "any integer seeds the generator",
    },
    RewardConfig: {"think_tags": "a switch", "lowest_terms": "a switch"},
    LLMConfig: {
        "gradient_checkpointing": "a switch",
        "freeze_vision": "a switch",
        "scratch_dir": "empty (a temporary folder) or a folder, created when needed",
        "teacher": "empty, or a hub id or folder that only luffy reads (checked before any work)",
        "tiny_seed": "any integer seeds the tiny model",
        "deepspeed_config": "empty, or a DeepSpeed JSON file, read and checked when a ZeRO-3 run starts (test_zero3)",
    },
}
# fields of the commands that are nested configs or inherited (covered by their own class above) or free
COMMAND_FREE = {
    "dry_run": "a switch",
    "env": "an environment id, checked against gymnasium's registry before any work (test_gym)",
    "first_seed": "any integer",
    "out": "any folder",
    "seed": "any integer",
    "teacher": "a switch",
    "resume": "a run or checkpoint folder, checked before any work (test_resume)",
    "preset": "a label: --preset NAME is checked against the presets before any work (test_benefit_map)",
    "measure": "a switch",
}
NESTED = {f.name for f in dataclasses.fields(CompareCommand) if dataclasses.is_dataclass(f.type) or f.name in
          ("task", "model", "gym", "llm", "grpo", "npo", "autonpo", "luffy", "exgrpo", "rlep")}  # fmt: skip


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _covered(cls: type) -> set[str]:
    own = {name for parent, free in FREE.items() if issubclass(cls, parent) for name in free}
    for (parent, _), fields in BAD.items():  # its own table and those of the classes it extends
        if issubclass(cls, parent):
            own |= set(fields)
    if issubclass(cls, ExperimentConfig):
        own |= NESTED | (_fields(cls) & set(COMMAND_FREE))
    if cls is LLMConfig:
        own |= {"data", "reward"}
    return own


@pytest.mark.parametrize("cls", [c for c, _ in BAD], ids=lambda c: c.__name__)
def test_every_field_is_covered(cls):
    missing = _fields(cls) - _covered(cls)
    assert not missing, f"{cls.__name__}: add these fields to BAD or FREE: {sorted(missing)}"


CASES = [
    (cls, prefix, name, v) for (cls, prefix), fields in BAD.items() for name, vals in fields.items() for v in vals
]


@pytest.mark.parametrize(
    "cls,prefix,name,value", CASES, ids=[f"{c[1] or c[0].__name__}.{c[2]}={c[3]!r}" for c in CASES]
)
def test_a_bad_value_is_refused_naming_the_field(cls, prefix, name, value):
    with pytest.raises(ValueError) as e:
        cls(**{name: value})
    msg = str(e.value)
    qualified = f"{prefix}.{name}" if prefix else name
    assert qualified in msg or f"{name} " in msg, msg
    assert "must" in msg or "unknown" in msg or "did you mean" in msg, msg


def test_the_default_of_every_config_is_valid():
    for cls, _ in BAD:
        cls()  # raises if a default breaks a rule


def test_counts_for_the_docs():
    """The figure docs/reliability.md quotes: bad-value cases and fields covered (kept in step with the tables)."""
    n_fields = sum(len(v) for v in BAD.values()) + sum(len(v) for v in FREE.values())
    assert len(CASES) >= 200 and n_fields >= 150, (len(CASES), n_fields)

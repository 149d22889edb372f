"""``--dry-run``: the effective batch arithmetic of a run and a per-GPU memory estimate, without loading weights.

The model's shape comes from ``config.json`` of a local folder, or from the table below for the public Qwen3-VL
ids (numbers read from their published config.json files). The estimate is an order-of-magnitude planning aid:

    weights      (4 P_train + b P_frozen) / W   (FSDP2 shards over W ranks; trainable weights are float32 master
                                                 weights, frozen ones b = bytes of llm.dtype; DeepSpeed ZeRO-3 in
                                                 bf16 also keeps a b-byte compute copy: + b P_train / W)
    gradients    4 P_train / W
    Adam         8 P_train / W                  (two float32 moments)
    guide model  P x b                          (NPO/AutoNPO/LUFFY/RLEP load a checkpoint unsharded on every rank;
                                                 a second one is cached with the reference policy)
    reference    P x b                          (only when grpo.kl_coef > 0)
    activations  17 x s x r x h x L x b         (Korthikanti et al. 2022: 34 s r h bytes per layer in 16-bit, no
                                                 recomputation; s x r x h x L x b with gradient checkpointing:
                                                 each layer's input), s = prompt + response tokens,
                                                 r = grpo.micro_batch_size rows
    log-probs    r x response x V x (b + 8)     (the kept logits, and float32 log-softmax + its exp for the
                                                 entropy, per row of the micro-batch until the backward)
    KV cache     g x s x L x 2 x kv x d x b     (generation, g = llm.micro_batch rows)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# text: hidden, layers, intermediate, heads, kv heads, head dim, vocab, tied; vision: depth, hidden, intermediate
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-VL-2B-Instruct": dict(
        h=2048, L=28, i=6144, a=16, kv=8, d=128, V=151936, tied=True, vd=24, vh=1024, vi=4096
    ),
    "Qwen/Qwen3-VL-4B-Instruct": dict(
        h=2560, L=36, i=9728, a=32, kv=8, d=128, V=151936, tied=True, vd=24, vh=1024, vi=4096
    ),
    "Qwen/Qwen3-VL-8B-Instruct": dict(
        h=4096, L=36, i=12288, a=32, kv=8, d=128, V=151936, tied=False, vd=27, vh=1152, vi=4304
    ),
}


def shape_from_config(doc: dict[str, Any]) -> dict[str, Any]:
    t, v = doc.get("text_config", doc), doc.get("vision_config", {})
    return dict(
        h=t["hidden_size"],
        L=t["num_hidden_layers"],
        i=t["intermediate_size"],
        a=t["num_attention_heads"],
        kv=t.get("num_key_value_heads", t["num_attention_heads"]),
        d=t.get("head_dim", t["hidden_size"] // t["num_attention_heads"]),
        V=t["vocab_size"],
        tied=bool(doc.get("tie_word_embeddings", t.get("tie_word_embeddings", False))),
        vd=v.get("depth", 0),
        vh=v.get("hidden_size", 0),
        vi=v.get("intermediate_size", 0),
    )


def count_params(s: dict[str, Any]) -> dict[str, int]:
    """Parameters of the language model and of the vision tower (norms and biases ignored)."""
    attn = s["h"] * s["a"] * s["d"] * 2 + s["h"] * s["kv"] * s["d"] * 2
    mlp = 3 * s["h"] * s["i"]
    text = s["L"] * (attn + mlp) + s["V"] * s["h"] * (1 if s["tied"] else 2)
    vision = s["vd"] * (4 * s["vh"] ** 2 + 2 * s["vh"] * s["vi"])
    return {"text": text, "vision": vision, "total": text + vision}


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def plan(llm: Any, grpo: Any, method: str, world_size: int = 1, shape: dict[str, Any] | None = None) -> str:
    """A markdown report of the batch arithmetic and the memory estimate (see the module docstring)."""
    lines = [
        f"# dry run: {llm.model}, method {method}, {world_size} process(es)",
        "",
        "(The process count is WORLD_SIZE, as torchrun and accelerate launch set it: prefix WORLD_SIZE=32 to plan a "
        "32-GPU run.)",
        "",
    ]
    if shape is None:
        cfg_file = Path(llm.model, "config.json")
        doc = json.loads(cfg_file.read_text()) if llm.model != "tiny" and cfg_file.is_file() else {}
        if doc:
            shape = shape_from_config(doc)
        elif llm.model in KNOWN_SHAPES:
            shape = KNOWN_SHAPES[llm.model]
        elif llm.model == "tiny":
            shape = dict(h=64, L=2, i=128, a=4, kv=2, d=16, V=410, tied=False, vd=2, vh=32, vi=64)
    rows = grpo.batch_size
    mb = grpo.minibatch_size or rows
    micro = grpo.micro_batch_size or mb
    per_rank = math.ceil(mb / world_size)
    s_tok = llm.max_prompt_tokens + llm.max_new_tokens
    lines += [
        "| batch arithmetic | value |",
        "|---|---|",
        f"| prompts per step x G | {grpo.prompts_per_step} x {grpo.group_size} = {rows} rows |",
        f"| optimizer steps per batch | {grpo.epochs} epoch(s) x {rows // mb} minibatch(es) = "
        f"{grpo.epochs * rows // mb} |",
        f"| rows per rank per minibatch | {per_rank} (in {math.ceil(per_rank / micro)} micro-batch(es) of "
        f"<= {micro}) |",
        f"| generation micro-batch | {llm.micro_batch} rows |",
        f"| tokens per row (max) | {llm.max_prompt_tokens} prompt + {llm.max_new_tokens} response = {s_tok} |",
        f"| tokens per step (max) | {rows * s_tok:,} ({rows * llm.max_new_tokens:,} generated) |",
        "",
    ]
    if shape is None:
        lines.append(f"No shape known for {llm.model!r} (not a local folder nor in KNOWN_SHAPES): no memory estimate.")
        return "\n".join(lines)
    n = count_params(shape)
    b = 4 if llm.dtype == "float32" or (llm.dtype == "auto" and llm.model == "tiny") else 2
    if llm.lora_r > 0:
        targets = {t.strip() for t in llm.lora_targets.split(",") if t.strip()}
        q, kv_out = shape["a"] * shape["d"], shape["kv"] * shape["d"]
        fan = {  # (in + out) of each projection a LoRA pair (A: in x r, B: r x out) spans
            "q_proj": shape["h"] + q,
            "k_proj": shape["h"] + kv_out,
            "v_proj": shape["h"] + kv_out,
            "o_proj": q + shape["h"],
            "gate_proj": shape["h"] + shape["i"],
            "up_proj": shape["h"] + shape["i"],
            "down_proj": shape["i"] + shape["h"],
        }
        adapters = shape["L"] * llm.lora_r * sum(fan.get(t, 2 * shape["h"]) for t in targets)
        train = adapters + (0 if llm.freeze_vision else n["vision"])
    else:
        train = n["total"] - (n["vision"] if llm.freeze_vision else 0)
    frozen = n["total"] - (0 if llm.lora_r > 0 else train)
    w = world_size
    act_per = (1 if llm.gradient_checkpointing else 17) * s_tok * micro * shape["h"] * shape["L"] * b
    guide = n["total"] * b if method in ("npo", "autonpo", "luffy", "rlep") else 0
    ref = n["total"] * b if grpo.kl_coef > 0 else 0
    logits = micro * llm.max_new_tokens * shape["V"] * (b + 8)
    kv = llm.micro_batch * s_tok * shape["L"] * 2 * shape["kv"] * shape["d"] * b
    launched = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"  # as llm/zero.py reads it
    zero3 = w > 1 and (llm.strategy == "deepspeed" or (llm.strategy == "auto" and launched))
    copies = b * train if zero3 and b < 4 else 0  # ZeRO-3's bf16 compute copy beside the float32 masters
    parts = {
        f"weights (sharded{', ZeRO-3' if zero3 else ''})": (4 * train + copies + b * frozen) / w,
        "gradients (sharded)": 4 * train / w,
        "Adam moments (sharded)": 8 * train / w,
        "guide model (unsharded)": guide,
        "reference model (unsharded)": ref,
        "activations (one micro-batch)": act_per,
        "log-prob rows": logits,
        "KV cache (generation)": kv,
    }
    lines += [
        f"Parameters: {n['total'] / 1e9:.2f} B ({n['text'] / 1e9:.2f} B language, {n['vision'] / 1e9:.2f} B vision); "
        f"trainable {train / 1e9:.3f} B (float32 master weights); compute in {b}-byte {llm.dtype}.",
        "",
        "| memory per GPU (estimate) | bytes |",
        "|---|---|",
        *[f"| {k} | {_gib(v)} |" for k, v in parts.items()],
        f"| **total** | **{_gib(sum(parts.values()))}** |",
        "",
        f"A look-ahead checkpoint on disk: {_gib(4 * train if llm.lora_r else 4 * train + b * (n['total'] - train))} "
        f"(NPO keeps the snapshot and each kept Delta; AutoNPO one per candidate).",
    ]
    return "\n".join(lines)

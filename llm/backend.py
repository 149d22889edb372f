"""The Qwen3-VL backend: :class:`npo_lab.backend.Backend` on a transformers vision-language model.

* A prompt id is a row of the training set (images + question + answer); a group is G completions of it.
* ``rollout`` samples with ``generate`` (chat template, images, temperature/top-p) from the current weights
  or from a saved checkpoint (the near-future guide), in micro-batches, then scores the completions with the
  configured rewards; ``behavior_logprobs`` are recomputed by a forward pass of the sampling model.
* ``logprobs`` runs the training forward path (images included, ``logits_to_keep`` = completion length,
  log-softmax row by row in float32), differentiable under the current weights.
* Checkpoints are ``save_pretrained`` folders on disk (full weights, or the LoRA adapter), so a guide loads
  directly for generation; look-ahead and rollback read and write them. A temporary checkpoint folder is
  deleted when the last handle to it goes away.
* Under ``torchrun`` / ``accelerate launch`` the model is sharded with FSDP2, or with DeepSpeed ZeRO-3
  (``llm.strategy``; llm/zero.py), and rows are split over ranks.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from npo_lab.llm.config import LLMConfig
from npo_lab.llm.data import build_messages, load_split
from npo_lab.llm.dist import (
    World,
    agree,
    barrier,
    broadcast_str,
    fully_shard_qwen_vl,
    gather_rows,
    init_world,
    shard_rows,
)
from npo_lab.llm.example import Example
from npo_lab.llm.model import load_model, load_processor, param_counts, prepare_trainable, resolve_model, torch_dtype
from npo_lab.llm.rewards import RewardSet
from npo_lab.llm.zero import Zero3, ZeroUpdate, engine_config, read_config, require_deepspeed, resolve_strategy
from safetensors.torch import load_file
from torch import Tensor, nn

from npo_lab.backend import Checkpoint, LocalUpdate, UpdateStrategy
from npo_lab.batch import RolloutBatch
from npo_lab.checkpoint import link_tree

CHECKPOINT_FORMAT = "npo_lab-hf-folder-v1"
_WARM: dict[str, tuple[dict[str, Tensor], float]] = {}
_CACHE_BYTES = 1 << 30
"""Pixel-value bytes the per-row prompt cache may hold (1 GiB)."""


class DiskCheckpoint:
    """A ``save_pretrained`` folder plus the backend's sampling-RNG state.

    Temporary (``owned``) folders are removed when the handle is garbage-collected, so NPO's snapshot and
    look-ahead checkpoints take disk space only while the driver holds them. :meth:`persist` copies one to a
    permanent place for a training checkpoint and returns a plain dict (``weights_only``-loadable)."""

    def __init__(self, path: str | Path, rng: Tensor, owned: bool = True, remove: bool = True) -> None:
        self.path, self.rng = Path(path), rng
        if owned and remove:
            weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def persist(self, dest: str | Path) -> dict[str, Any]:
        """Put the folder at ``dest`` (a new folder inside a training checkpoint being written): hard links where
        the file system allows (the files are never modified), else a copy."""
        link_tree(self.path, Path(dest))
        return {"format": CHECKPOINT_FORMAT, "path": str(dest), "rng": self.rng}

    def __repr__(self) -> str:
        return f"DiskCheckpoint({str(self.path)!r})"


def _as_disk(policy: Checkpoint) -> tuple[Path, Tensor | None]:
    if isinstance(policy, DiskCheckpoint):
        return policy.path, policy.rng
    if isinstance(policy, dict) and "path" in policy:
        return Path(policy["path"]), policy.get("rng")
    if isinstance(policy, str | Path):
        return Path(policy), None
    raise ValueError(f"the Qwen3-VL backend cannot read the checkpoint {type(policy).__name__}: expected a folder")


class QwenVLBackend:
    """Qwen3-VL policy + processor + data + rewards, behind the core's backend protocol."""

    def __init__(self, cfg: LLMConfig, seed: int = 0) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.cfg, self.seed = cfg, seed
        cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda") or cfg.device.startswith("cuda")
        self.strategy = resolve_strategy(cfg)  # used with several processes; checked (and DeepSpeed found) first
        if self.strategy == "deepspeed":
            require_deepspeed()
        self.world: World = init_world("cuda" if cuda else "cpu")
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{self.world.local_rank}" if cuda else "cpu")
        else:
            self.device = torch.device(cfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dtype = torch_dtype(cfg.dtype, self.device)
        if cfg.model == "tiny":  # rank 0 writes the tiny model's folder, the other ranks read it
            self.name = broadcast_str(resolve_model(cfg) if self.world.main else "", self.world)
        else:
            self.name = cfg.model
        self.processor = load_processor(self.name, local_files_only=Path(self.name).is_dir())
        self.tokenizer = self.processor.tokenizer
        self._prompts: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()
        self._prompt_bytes = 0
        self.tokenizer.padding_side = "left"
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_ids = self._eos_ids()
        # vision placeholders are never actions: a completion holding one would break the image-feature count
        vision = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")
        self.banned_ids = sorted({i for i in self.tokenizer.convert_tokens_to_ids(list(vision)) if _is_id(i, self)})
        if cfg.lora_r > 0 and self.world.size > 1:
            raise ValueError(
                "llm.lora_r > 0 runs in one process only (LoRA is the single-GPU path); with several processes "
                f"use full fine-tuning, which {'ZeRO-3' if self.strategy == 'deepspeed' else 'FSDP2'} shards"
            )
        with torch.random.fork_rng():  # LoRA init draws from the global RNG: make it a function of the seed
            torch.manual_seed(seed)
            model = prepare_trainable(load_model(self.name, self.dtype, cfg.attn_implementation), cfg)
        # trainable weights are float32 master weights (a bf16 weight would round most small Adam updates away);
        # the forward passes run in llm.dtype under autocast, frozen weights stay in llm.dtype
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        self.model = model.to(self.device)
        self.model.train()  # from_pretrained returns eval mode, in which gradient checkpointing is off
        self.entropy_grad = True  # make_state turns it off when no loss term uses the entropy's gradient
        self.counts = param_counts(self.model)
        self.train_set, self.data_stats = load_split(cfg.data, "train")
        self.eval_set, _ = load_split(cfg.data, "eval")
        if not self.eval_set:
            raise ValueError("llm.data: the held-out split is empty; evaluate() needs rows (llm.data.eval_rows >= 1)")
        self.warm_start_loss = float("nan")
        if cfg.model == "tiny" and cfg.tiny_warm_steps > 0:
            key = repr(
                (cfg.tiny_seed, cfg.tiny_warm_steps, cfg.tiny_warm_lr, cfg.data, cfg.lora_r, cfg.freeze_vision, seed)
            )
            if key not in _WARM:  # the warm start is a pure function of its settings: once per process
                loss = self._warm_start(cfg.tiny_warm_steps, cfg.tiny_warm_lr, seed)
                _WARM[key] = ({k: v.detach().clone() for k, v in self.model.state_dict().items()}, loss)
            state, self.warm_start_loss = _WARM[key]
            self.model.load_state_dict(state)
        self.update_strategy: UpdateStrategy | None = None  # one process: the trainer's default (torch Adam)
        self.zero: Zero3 | None = None
        self._state_keys: list[str] | None = None  # ZeRO-3: the state-dict names, read before partitioning
        if self.world.size > 1 and self.strategy == "deepspeed":
            if self.dtype == torch.float16:
                raise ValueError("llm.dtype float16 is not supported with DeepSpeed ZeRO-3 here: use bfloat16")
            self._state_keys = list(self.model.state_dict())
            hidden = int(self.model.config.get_text_config().hidden_size)
            user, source = read_config(cfg)
            self.zero = Zero3(self.model, engine_config(user, source, self.dtype, hidden), source)
            # the engine owns backward and the optimizer step (npo_lab.backend.UpdateStrategy)
            self.update_strategy = ZeroUpdate(self.zero, self.world.size, self.world.rank)
        elif self.world.size > 1:
            fully_shard_qwen_vl(self.model, self.dtype)
            self.update_strategy = LocalUpdate(self.world.size, self.world.rank)  # torch Adam on the shards
            # FSDP2 initialises from the root module's first forward; generate() would reach the vision tower
            # first, so run one tiny forward through the root now
            with torch.no_grad():
                self._forward_logprobs(self.model, [self.train_set[0]], [[self.eos_ids[0]]])
        self.is_lora = cfg.lora_r > 0
        self.rewards = RewardSet(cfg.reward)
        self.gen = torch.Generator().manual_seed(seed + 7919)
        scratch = ""
        if self.world.main:
            root = Path(cfg.scratch_dir) if cfg.scratch_dir else Path(tempfile.gettempdir())
            root.mkdir(parents=True, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix="npo_lab_ckpts_", dir=root)
        self.scratch = Path(broadcast_str(scratch, self.world))
        if self.world.main:
            weakref.finalize(self, shutil.rmtree, str(self.scratch), True)
        self._n_saved = 0
        self._guides: OrderedDict[str, Any] = OrderedDict()
        self.stats = {"generated_tokens": 0, "generate_s": 0.0}
        self.engine: Any = None
        if cfg.engine == "vllm":  # one colocated vLLM per rank, built on every rank at once, after the model is placed
            from npo_lab.llm.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(self.name, cfg, self.device, seed, self.banned_ids, self.eos_ids)

    def _banned(self, row: Tensor) -> Tensor:
        return (
            row.index_fill(-1, torch.tensor(self.banned_ids, device=row.device), float("-inf"))
            if self.banned_ids
            else row
        )

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for t in ("<|im_end|>", "<|endoftext|>"):
            i = self.tokenizer.convert_tokens_to_ids(t)
            if isinstance(i, int) and i != self.tokenizer.unk_token_id:
                ids.add(i)
        return sorted(i for i in ids if i is not None)

    # ---- the Backend protocol -------------------------------------------------------------------
    @property
    def num_prompts(self) -> int:
        return len(self.train_set)

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.size

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    def rollout(self, prompt_ids: Sequence[int], n: int, policy: Checkpoint | None = None) -> RolloutBatch:
        pids = [int(p) for p in prompt_ids for _ in range(n)]
        for p in set(pids):
            if not 0 <= p < len(self.train_set):
                raise IndexError(f"prompt id {p} is outside the training set (0 .. {len(self.train_set) - 1})")
        rows = self._sample([self.train_set[p] for p in pids], policy, greedy=False)
        t = max(len(r["ids"]) for r in rows)
        behavior = torch.zeros(len(rows), t)
        mask = torch.zeros(len(rows), t)
        for i, r in enumerate(rows):
            # current weights: NaN = "not computed"; the trainer's ratio anchor is the same number (no extra pass)
            behavior[i, : len(r["ids"])] = torch.tensor(r["behavior"]) if r["behavior"] else float("nan")
            mask[i, : len(r["ids"])] = 1.0
        extras = [
            {
                "pid": p,
                "ids": torch.tensor(r["ids"]),
                "text": r["text"],
                "rewards": r["components"],
                "trunc": r["trunc"],
            }
            for p, r in zip(pids, rows)
        ]
        return RolloutBatch.from_rows(
            behavior_logprobs=behavior,
            mask=mask,
            rewards=torch.tensor([r["reward"] for r in rows], dtype=torch.float32),
            group_ids=torch.tensor(pids, dtype=torch.long),
            extras=extras,
        )

    def logprobs(self, batch: RolloutBatch, policy: Checkpoint | None = None) -> tuple[Tensor, Tensor | None]:
        model = self._policy_model(policy)
        examples = [self.train_set[e["pid"]] for e in batch.extras]
        comps = [e["ids"].tolist() for e in batch.extras]
        t = batch.mask.shape[1]
        if torch.is_grad_enabled() and policy is None:  # the training path: this rank's rows, one pass
            # under ZeRO-3 through the engine: its forward advances the gradient-accumulation micro-step
            logp, ent = self._forward_logprobs(self.zero.engine if self.zero else model, examples, comps)
            return _pad_cols(logp, t), _pad_cols(ent, t)
        # no grad: split rows over ranks, micro-batched, gathered (every rank then holds every row)
        idx, valid = shard_rows(len(comps), self.world)
        out: list[tuple[list[float], list[float]]] = []
        for s in range(0, len(idx), self.cfg.micro_batch):
            chunk = idx[s : s + self.cfg.micro_batch]
            with torch.no_grad():
                lp, en = self._forward_logprobs(model, [examples[i] for i in chunk], [comps[i] for i in chunk])
            out += [(lp[k].tolist(), en[k].tolist()) for k in range(len(chunk))]
        logp = torch.zeros(len(comps), t)
        ent = torch.zeros(len(comps), t)
        for i, (lp_row, en_row) in enumerate(gather_rows(out, valid, self.world)):
            n_tok = len(comps[i])
            logp[i, :n_tok] = torch.tensor(lp_row[:n_tok])
            ent[i, :n_tok] = torch.tensor(en_row[:n_tok])
        return logp * batch.mask, ent * batch.mask

    def save(self) -> DiskCheckpoint:
        """Write the weights (the LoRA adapter with LoRA) as a ``save_pretrained`` folder; costs one full write
        (about 2 bytes per parameter in bf16) and is read back by :meth:`load` or by generation."""
        self._n_saved += 1
        path = self.scratch / f"ckpt-{self._n_saved:06d}"
        state = self._full_state_dict()
        if self.world.main:
            self.model.save_pretrained(path, state_dict=state, safe_serialization=True)
        barrier(self.world)
        return DiskCheckpoint(path, self.gen.get_state(), owned=True, remove=self.world.main)

    def load(self, checkpoint: Checkpoint) -> None:
        path, rng = _as_disk(checkpoint)
        state = _read_folder(path)
        if self.is_lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, state)
            unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
            if unexpected:
                raise ValueError(f"checkpoint {path}: adapter keys do not match the model: {unexpected[:3]}")
        else:
            missing = _missing_weights(self.model, state, self._state_keys)
            if missing:
                raise ValueError(f"checkpoint {path} lacks {len(missing)} weights of the model, e.g. {missing[:3]}")
            if self.zero is not None:
                self.zero.load_full_state(state)  # the float32 masters and the partitioned compute copies
            elif self.world.size > 1:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

                set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=False))
            else:
                own = self.model.state_dict()
                with torch.no_grad():
                    for k, v in state.items():
                        if k in own:
                            own[k].copy_(v)  # in place, in the parameter's own dtype (float32 master weights)
        barrier(self.world)  # rank 0 may delete a temporary folder once its handle is gone: all ranks have read it
        if rng is not None:
            self.gen.set_state(rng)

    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out rows: accuracy (the accuracy reward, or total reward above 0.5 when
        accuracy is off), mean reward and completion length."""
        rows = self._sample(self.eval_set, None, greedy=True)
        key = "accuracy" if "accuracy" in rows[0]["components"] else None
        correct = [float((r["components"][key] or 0.0) >= 1.0) if key else float(r["reward"] > 0.5) for r in rows]
        return {
            "eval/accuracy": sum(correct) / len(correct),
            "eval/reward": sum(r["reward"] for r in rows) / len(rows),
            "eval/completion_tokens": sum(len(r["ids"]) for r in rows) / len(rows),
        }

    # ---- optional capabilities ------------------------------------------------------------------
    def teacher(self) -> Checkpoint:
        """LUFFY's external teacher: the folder or hub id in ``llm.teacher``."""
        if not self.cfg.teacher:
            raise ValueError("method luffy on --backend qwen-vl needs --llm.teacher <hub id or folder>")
        return DiskCheckpoint(self.cfg.teacher, self.gen.get_state(), owned=False)

    def batch_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        """Per-reward means of on-policy and guide rows, completion lengths and the truncation rate."""
        m: dict[str, float] = {}
        guide = batch.is_guide.tolist()
        names = sorted({k for e in batch.extras if isinstance(e, dict) for k in e.get("rewards", {})})
        for kind, want in (("on_policy", False), ("guide", True)):
            rows = [e for e, g in zip(batch.extras, guide) if g == want and isinstance(e, dict)]
            if not rows:
                continue
            for name in names:
                vals = [e["rewards"][name] for e in rows if e["rewards"].get(name) is not None]
                if vals:
                    m[f"reward/{name}/{kind}"] = sum(vals) / len(vals)
            m[f"charts/completion_tokens/{kind}"] = sum(len(e["ids"]) for e in rows) / len(rows)
            m[f"charts/truncated/{kind}"] = sum(float(e["trunc"]) for e in rows) / len(rows)
        return m

    def decode_batch(self, batch: RolloutBatch) -> list[str]:
        return [e["text"] for e in batch.extras]

    def close(self) -> None:
        self.rewards.close()

    # ---- internals ---------------------------------------------------------------------------------
    def _warm_start(self, steps: int, lr: float, seed: int, batch: int = 16) -> float:
        """Supervised steps on '\\boxed{answer}' completions of training rows, through the training forward path
        (the tiny model only: it gives RL a policy that answers in format and is sometimes right)."""
        import random

        rng = random.Random(seed * 31 + 17)
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=lr)
        loss_val = float("nan")
        self.model.train()
        for _ in range(steps):
            rows = [self.train_set[rng.randrange(len(self.train_set))] for _ in range(batch)]
            comps = [
                self.tokenizer.encode("\\boxed{" + ex.answer + "}", add_special_tokens=False) + [end] for ex in rows
            ]
            logp, _ = self._forward_logprobs(self.model, rows, comps)
            mask = torch.zeros_like(logp)
            for i, c in enumerate(comps):
                mask[i, : len(c)] = 1.0
            loss = -(logp * mask).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_val = loss.item()
        return loss_val

    def _autocast(self) -> Any:
        """Forward passes in llm.dtype over float32 master weights (FSDP2's mixed-precision policy does it for a
        sharded model)."""
        import contextlib

        if self.dtype == torch.float32 or self.world.size > 1:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _weights_key(self, policy: Checkpoint | None) -> tuple[str, object]:
        """Names the sampling weights: a checkpoint's folder, or the current weights' in-place version (every
        optimizer step and load bumps the version counters of the trainable parameters, DTensors included)."""
        if policy is not None:
            return ("checkpoint", str(_as_disk(policy)[0]))
        if self.zero is not None:  # ZeRO-3 updates the partitions, not the parameters' own tensors
            return ("current", self.zero.updates)
        return ("current", sum(p._version for p in self.model.parameters() if p.requires_grad))

    def _full_state_dict(self) -> dict[str, Tensor] | None:
        if self.is_lora:
            from peft import get_peft_model_state_dict

            if self.world.size > 1:
                full = self._gathered_state()  # collective; only rank 0 receives the tensors
                return get_peft_model_state_dict(self.model, state_dict=full) if self.world.main else None
            return None  # peft's save_pretrained writes the adapter
        if self.zero is not None:
            return self.zero.full_state(self._state_keys or [])  # a collective; the float32 masters, on rank 0
        if self.world.size > 1:
            return self._gathered_state()
        return None

    def _gathered_state(self) -> dict[str, Tensor]:
        """The full (unsharded) state dict on rank 0, on CPU; an empty dict on the other ranks."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _policy_model(self, policy: Checkpoint | None) -> Any:
        if policy is None:
            return self.model
        path, _ = _as_disk(policy)
        key = str(path)
        for stale in [k for k in self._guides if k.startswith(str(self.scratch)) and not Path(k).exists()]:
            del self._guides[stale]  # its checkpoint was released (an old guide): free the memory now
        if key not in self._guides:
            model = load_model(key, self.dtype, self.cfg.attn_implementation).to(self.device).eval()
            model.requires_grad_(False)
            self._guides[key] = model
            while len(self._guides) > 2:  # the guide and the reference policy stay loaded
                self._guides.popitem(last=False)
        self._guides.move_to_end(key)
        return self._guides[key]

    def _prompt_text(self, ex: Example) -> str:
        return self._prompt(ex)["text"]

    def _prompt(self, ex: Example) -> dict[str, Any]:
        """The processed prompt of one row (chat text, token ids with the image tokens expanded, pixel values,
        image grids), computed once and cached: a group's G rows, the generation pass and the training pass
        all reuse it. The cache holds at most ``_CACHE_BYTES`` of pixel values (oldest entries leave first)."""
        key = (id(ex), ex.index)
        hit = self._prompts.get(key)
        if hit is not None:
            self._prompts.move_to_end(key)
            return hit
        text = self.processor.apply_chat_template(
            build_messages(ex, self.cfg.data.system_prompt), tokenize=False, add_generation_prompt=True
        )
        enc = self.processor(text=[text], images=list(ex.images) or None, return_tensors="pt")
        n_tok = int(enc["input_ids"].shape[1])
        if n_tok > self.cfg.max_prompt_tokens:
            raise ValueError(
                f"row {ex.index}: the prompt has {n_tok} tokens (text + image), more than "
                f"llm.max_prompt_tokens={self.cfg.max_prompt_tokens}"
            )
        entry = {
            "text": text,
            "ids": enc["input_ids"][0],
            "mm": enc["mm_token_type_ids"][0] if "mm_token_type_ids" in enc else None,
            "pixels": enc.get("pixel_values"),
            "grid": enc.get("image_grid_thw"),
        }
        size = entry["pixels"].numel() * entry["pixels"].element_size() if entry["pixels"] is not None else 0
        self._prompts[key] = entry
        self._prompt_bytes += size
        entry["bytes"] = size
        while self._prompt_bytes > _CACHE_BYTES and len(self._prompts) > 1:
            _, old = self._prompts.popitem(last=False)
            self._prompt_bytes -= old["bytes"]
        return entry

    def _batch_inputs(self, examples: Sequence[Example], comps: Sequence[list[int]] | None = None) -> dict[str, Any]:
        """Left-padded model inputs for prompts (+ completions): input_ids, attention_mask, mm_token_type_ids,
        pixel_values and image_grid_thw in row order, on the device."""
        prompts = [self._prompt(ex) for ex in examples]
        seqs, types = [], []
        for i, pr in enumerate(prompts):
            c = list(comps[i]) if comps is not None else []
            seqs.append(pr["ids"].tolist() + c)
            if pr["mm"] is not None:
                types.append(pr["mm"].tolist() + [0] * len(c))
        length = max(len(q) for q in seqs)
        input_ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        attn = torch.zeros(len(seqs), length, dtype=torch.long)
        for i, q in enumerate(seqs):  # left padding: every row ends at the last position
            input_ids[i, length - len(q) :] = torch.tensor(q)
            attn[i, length - len(q) :] = 1
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attn}
        if types:
            mtt = torch.zeros(len(seqs), length, dtype=torch.long)
            for i, q in enumerate(types):
                mtt[i, length - len(q) :] = torch.tensor(q)
            inputs["mm_token_type_ids"] = mtt
        pixels = [pr["pixels"] for pr in prompts if pr["pixels"] is not None]
        if pixels:  # packed over images as [total_patches, dim]: concatenated in row order
            inputs["pixel_values"] = torch.cat(pixels)
            inputs["image_grid_thw"] = torch.cat([pr["grid"] for pr in prompts if pr["grid"] is not None])
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def _forward_logprobs(
        self, model: Any, examples: Sequence[Example], comps: Sequence[list[int]]
    ) -> tuple[Tensor, Tensor]:
        """(rows, T) log-probs and entropies of completions ``comps`` after their prompts, T = longest."""
        inputs = self._batch_inputs(examples, comps)
        t = max(len(c) for c in comps)
        with self._autocast():
            logits = model(**inputs, logits_to_keep=t + 1, use_cache=False).logits  # (rows, t + 1, V)
        logps, ents = [], []
        for i, c in enumerate(comps):  # row by row in float32: bounded memory for a 150k vocabulary
            n_tok = len(c)
            row = self._banned(completion_logits(logits, i, n_tok).float() / self.cfg.temperature)  # (n_tok, V)
            lsm = F.log_softmax(row, -1)
            target = torch.tensor(c, device=lsm.device).unsqueeze(-1)
            logps.append(F.pad(lsm.gather(-1, target).squeeze(-1), (0, t - n_tok)))
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.entropy_grad):  # no graph if unused
                p = lsm.exp()
                ents.append(F.pad(-(p * lsm.masked_fill(p == 0, 0.0)).sum(-1), (0, t - n_tok)))
        return torch.stack(logps).cpu(), torch.stack(ents).cpu()

    @torch.no_grad()
    def _sample(self, examples: Sequence[Example], policy: Checkpoint | None, greedy: bool) -> list[dict[str, Any]]:
        """Generate one completion per example (this rank's share), score it, and gather every rank's rows."""
        import time

        model = self._policy_model(policy)
        # each rank samples its share of the rows (a guide model too), then every rank gets every row: the batch,
        # and so every decision taken from it, is the same on all ranks
        sharded = self.world
        idx, valid = shard_rows(len(examples), sharded)
        # a bad row (a prompt over llm.max_prompt_tokens, an unreadable image) fails on the rank that owns it: every
        # rank learns of it before the collective passes of generation, so none waits forever
        agree(self.world, lambda: [self._prompt(examples[i]) for i in idx])
        seed = int(torch.randint(0, 2**62, (1,), generator=self.gen).item())
        was_training = model.training
        model.eval()
        local: list[dict[str, Any]] = []
        # vLLM samples the current weights from its own copy (reloaded when they changed); a checkpoint's rows (the
        # guide, a teacher) come from its cached HF model, so alternating guide and policy never reloads vLLM
        engine = self.engine if policy is None else None
        if engine is not None:
            engine.sync(model, self._weights_key(policy))
            self.stats.update(vllm_syncs=engine.stats["syncs"], vllm_sync_s=engine.stats["sync_s"])
        # a complete generation config: nothing is inherited from the checkpoint's generation_config.json (its
        # top_k, repetition penalty, ...), so sampling is exactly the distribution the log-probs are taken under
        from transformers import GenerationConfig

        sampling = {} if greedy else dict(temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0)
        gen_cfg = GenerationConfig(
            do_sample=not greedy,
            max_new_tokens=self.cfg.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            suppress_tokens=self.banned_ids or None,
            **sampling,
        )
        t0 = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + sharded.rank)  # sampling depends on the backend's generator only
            if engine is not None:  # this rank's rows in one call; the prompts are checked (and cached) first
                chunk = [examples[i] for i in idx]
                texts = [self._prompt_text(ex) for ex in chunk]
                images = [list(ex.images) for ex in chunk]
                new = engine.generate(texts, images, greedy=greedy, seed=seed + sharded.rank)
                for ex, toks in zip(chunk, new):
                    ids, trunc = _cut(toks, self.eos_ids, self.pad_id)
                    local.append({"ids": ids, "trunc": trunc, "ex": ex})
            else:
                for s in range(0, len(idx), self.cfg.micro_batch):
                    chunk = [examples[i] for i in idx[s : s + self.cfg.micro_batch]]
                    enc = self._batch_inputs(chunk)
                    with self._autocast():
                        out = model.generate(**enc, generation_config=gen_cfg, synced_gpus=sharded.size > 1)
                    new = out[:, enc["input_ids"].shape[1] :].tolist()
                    for ex, toks in zip(chunk, new):
                        ids, trunc = _cut(toks, self.eos_ids, self.pad_id)
                        local.append({"ids": ids, "trunc": trunc, "ex": ex})
        self.stats["generate_s"] += time.perf_counter() - t0
        self.stats["generated_tokens"] += sum(len(r["ids"]) for r in local[:valid])
        # behaviour log-probs of a checkpoint's rows (a guide, a teacher): a forward pass of that model on the
        # training path. Rows of the current weights skip it: the trainer's ratio anchor is the same quantity.
        for r in local:
            r["behavior"] = []
        if policy is not None and not greedy:
            for s in range(0, len(local), self.cfg.micro_batch):
                part = local[s : s + self.cfg.micro_batch]
                lp, _ = self._forward_logprobs(model, [r["ex"] for r in part], [r["ids"] for r in part])
                for k, r in enumerate(part):
                    r["behavior"] = lp[k, : len(r["ids"])].tolist()
        texts = [self.tokenizer.decode(r["ids"], skip_special_tokens=True) for r in local]
        totals, comps = agree(  # a custom reward that raises on this rank's rows stops every rank with its message
            self.world,
            lambda: self.rewards.score(
                [self._prompt_text(r["ex"]) for r in local],
                texts,
                [r["ex"].answer for r in local],
                [list(r["ex"].images) for r in local],
                [r["ex"].columns for r in local],
            ),
        )
        rows = [
            {
                "ids": r["ids"],
                "trunc": r["trunc"],
                "behavior": r["behavior"],
                "text": text,
                "reward": float(total),
                "components": {name: vals[i] for name, vals in comps.items()},
            }
            for i, (r, text, total) in enumerate(zip(local, texts, totals))
        ]
        if was_training:
            model.train()
        return gather_rows(rows, valid, sharded)


def completion_logits(logits: Tensor, row: int, n_tok: int) -> Tensor:
    """The logits that score the ``n_tok`` completion tokens of ``row``: (n_tok, V).

    Rows are left-padded, so every completion ends at the last position; the logits at position j predict token
    j + 1, so the completion's tokens are scored by the ``n_tok`` positions before the last one. Off by one here and
    every token is scored by the distribution that predicts the next one: tests/llm/test_qwen_learning.py shifts this
    window on purpose and checks that learning stops."""
    k = logits.shape[1]  # (rows, k, V), k = the longest completion + 1
    return logits[row, k - n_tok - 1 : k - 1]


def _cut(tokens: list[int], eos_ids: list[int], pad_id: int) -> tuple[list[int], bool]:
    """A generated row up to and including its first end token; (tokens, truncated)."""
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[: i + 1], False
    while tokens and tokens[-1] == pad_id and pad_id not in eos_ids:
        tokens = tokens[:-1]
    return (tokens or [eos_ids[0]]), True


def _missing_weights(model: nn.Module, state: dict[str, Tensor], keys: list[str] | None = None) -> list[str]:
    """Weights of ``model`` (state-dict names ``keys``, default its state_dict's) that ``state`` lacks; tied weights
    (one parameter under several names, e.g. lm_head and the input embeddings of Qwen3-VL-2B/4B, which
    save_pretrained writes once) count as present under any name."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    alias = {n for names in groups.values() if len(names) > 1 for n in names}
    missing = [k for k in (keys or model.state_dict()) if k not in state and k not in alias]
    missing += [names[0] for names in groups.values() if len(names) > 1 and not any(n in state for n in names)]
    return missing


def _is_id(i: Any, be: QwenVLBackend) -> bool:
    return isinstance(i, int) and i >= 0 and i != be.tokenizer.unk_token_id


def _pad_cols(x: Tensor, t: int) -> Tensor:
    return F.pad(x, (0, t - x.shape[1])) if x.shape[1] < t else x[:, :t]


def _read_folder(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``save_pretrained`` folder (single or sharded safetensors, or a LoRA adapter)."""
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (path / name).is_file():
            return _load_safetensors(path / name)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"checkpoint {index} is unreadable (no weight_map): {e}") from e
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(_load_safetensors(path / shard))
        return state
    raise ValueError(f"checkpoint folder {path} has no safetensors weights (model.safetensors or an adapter)")


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors (never a pickle); a truncated or corrupted file is named in the error."""
    try:
        return load_file(str(file))
    except Exception as e:  # SafetensorError, OSError: header or data cut short
        raise ValueError(f"checkpoint file {file} is unreadable (truncated or corrupted?): {e}") from e


def make_qwen_vl_backend(cfg: LLMConfig, seed: int) -> QwenVLBackend:
    """Picklable factory for ``npo-lab compare`` (``functools.partial(make_qwen_vl_backend, cfg)``)."""
    return QwenVLBackend(cfg, seed=seed)

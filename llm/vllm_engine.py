"""Optional vLLM rollout engine for the Qwen3-VL backend (``llm.engine = "vllm"``), colocated as TRL's
``vllm_mode="colocate"``: one engine per rank on that rank's GPU (tensor parallel 1), each rank generating its own
rows, and the policy's weights loaded into the engine whenever they changed since the last load.

**Not run against a real vLLM here**: this machine has no GPU, and vLLM cannot be installed beside this
environment's torch (vLLM 0.33.0 pins torch==2.14.0 and transformers>=5.16.1,<5.21). The unit tests check the
weight names and merged values on CPU and the calls made to a stand-in ``vllm`` module that holds them to vLLM
0.33.0's signatures.

Written against vLLM 0.33.0, read from its PyPI wheel (``vllm/_version.py``: commit 4ba787ec9), and every call
checked again against that source (docs/llm.md lists what remains for a GPU):

* ``vllm/entrypoints/llm.py``: ``LLM(model, tensor_parallel_size, dtype, seed, gpu_memory_utilization, **engine
  args)`` (``distributed_executor_backend``, ``max_model_len``, ``limit_mm_per_prompt`` are ``EngineArgs``
  fields), ``LLM.generate(prompts, sampling_params, *, use_tqdm)`` (one ``SamplingParams`` per prompt allowed;
  outputs in prompt order), ``collective_rpc(method, timeout, args, kwargs)``, ``reset_prefix_cache``;
* ``vllm/v1/worker/utils.py`` (``request_memory``): ``gpu_memory_utilization`` is the share of the GPU's *total*
  memory vLLM takes (its weights + KV cache), and it must be free when the engine starts, next to the training
  model already on the GPU;
* ``vllm/v1/worker/gpu_worker.py`` / ``gpu_model_runner.py`` and ``vllm/model_executor/model_loader/reload/
  inplace.py``: the worker method ``reload_weights(weights_iterator, is_checkpoint_format=True)`` runs the model's
  ``load_weights`` in place (layer by layer, into the existing storage, so CUDA graphs stay valid; a layer's
  tensors are buffered by reference until the layer is complete, so each yielded tensor must stay unchanged until
  the call returns) and resets the runner's encoder and multimodal caches (``UniProcExecutor.collective_rpc``
  calls the worker in this process: the iterator is not serialised);
* ``vllm/v1/engine/llm_engine.py`` / ``core.py``: ``reset_encoder_cache`` ("should be called when model weights are
  updated": cached vision embeddings are keyed by image hash only; it also clears the scheduler's cache manager,
  which ``reload_weights`` does not);
* ``vllm/model_executor/models/qwen3_vl.py``: ``Qwen3VLForConditionalGeneration.load_weights`` applies
  ``hf_to_vllm_mapper`` (``model.visual.`` -> ``visual.``, ``model.language_model.`` -> ``language_model.model.``,
  ``lm_head.`` -> ``language_model.lm_head.``), so it takes the names ``save_pretrained`` writes;
* ``vllm/sampling_params.py``: ``n, temperature (0 = greedy, at most 2), top_p, top_k, seed (per request), max_tokens,
  stop_token_ids, detokenize, logit_bias`` (``dict[int, float]``, added to the logits before sampling and before the
  greedy argmax, ``vllm/v1/sample/logits_processor/builtin.py``; ``allowed_token_ids`` would need the whole
  vocabulary minus the banned ids per request, so the banned vision ids get a -inf bias instead);
* ``vllm/config/parallel.py`` and ``vllm/v1/executor/uniproc_executor.py``: ``distributed_executor_backend=
  "external_launcher"`` joins the launcher's process group (RANK, LOCAL_RANK) and turns V1 multiprocessing off, so
  the engine core lives in the calling process; ``vllm/distributed/parallel_state.py``: with the launcher's group
  already initialised, vLLM builds its world group over all ranks and tensor-parallel groups of one rank each (the
  "ExternalDP" dimension), so each rank's engine generates on its own; ``ExecutorWithExternalLauncher.
  determine_available_memory`` takes the minimum over ranks (a collective: build the engines on all ranks at once);
* ``vllm/v1/core/sched/utils.py`` and ``vllm/v1/engine/detokenizer.py``: a stop token stays in
  ``CompletionOutput.token_ids`` (also with ``detokenize=False``).

And TRL (huggingface/trl at f2cd57710ae345ea6428ae95363267fcf38a3dc8), ``trl/generation/vllm_generation.py`` (used
by ``trl/trainer/grpo_trainer.py``): colocate ``LLM(...)`` arguments, ``{"prompt"..., "multi_modal_data": {"image":
...}}`` requests with ``n=1``, and the weight names of ``sync_weights`` / ``_sync_fsdp2_params_to_vllm`` (strip
``base_model.model.`` and ``.base_layer``, skip ``lora_`` and ``original_module`` names, strip
``modules_to_save.default.``, ``full_tensor()`` per FSDP2 parameter). Unlike TRL, LoRA is merged out of place (base
+ B @ A * scaling in float32, per layer), so the training weights are never modified (``merge_adapter`` then
``unmerge_adapter`` in bf16 does not restore them bit for bit).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from npo_lab.llm.config import LLMConfig
from npo_lab.llm.model import torch_dtype
from torch import Tensor, nn

_SAVED_COPY = re.compile(r"\.modules_to_save\.[^.]+\.")


def vllm_weight_names(named: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """(name, value) pairs of a (peft-wrapped) Qwen3-VL under the names its ``save_pretrained`` checkpoint uses,
    which vLLM's ``load_weights`` maps itself; LoRA factors and the frozen originals of peft's trained copies
    (``modules_to_save``) are dropped. Pure: the values pass through untouched."""
    for name, value in named:
        if ".lora_" in name or ".original_module." in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield _SAVED_COPY.sub(".", name).replace("_checkpoint_wrapped_module.", ""), value


def _full(t: Tensor) -> Tensor:
    """The whole tensor of an FSDP2 (DTensor) or DeepSpeed ZeRO-3 parameter (a copy, gathered): a collective, every
    rank must call it in the same order."""
    if hasattr(t, "full_tensor"):
        return t.full_tensor()
    if hasattr(t, "ds_id"):  # ZeRO-3: gathered for the copy, released after it
        from deepspeed import zero

        with zero.GatheredParameters([t]):
            return t.data.clone()
    return t


@torch.no_grad()
def _merged(weight: Tensor, lora: nn.Module | None) -> Tensor:
    """``weight`` (gathered) plus the active, unmerged LoRA deltas of the layer it belongs to (in float32)."""
    w = _full(weight).detach()
    if lora is None or getattr(lora, "disable_adapters", False):
        return w
    acc = None
    if getattr(lora, "lora_embedding_A", None):  # an embedding adapter keeps its factors elsewhere: not merged here
        raise NotImplementedError("llm.engine='vllm': LoRA on an embedding layer cannot be merged for vLLM")
    for a in lora.active_adapters:
        if a not in lora.lora_A or a in lora.merged_adapters:
            continue
        if lora.use_dora.get(a) or lora.lora_bias.get(a):
            raise NotImplementedError("llm.engine='vllm': LoRA with DoRA or lora_bias cannot be merged for vLLM")
        delta = _full(lora.lora_B[a].weight).float() @ _full(lora.lora_A[a].weight).float() * lora.scaling[a]
        delta = delta.T if lora.fan_in_fan_out else delta
        acc = w.float() + delta if acc is None else acc + delta
    return w if acc is None else acc.to(w.dtype)


def vllm_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``model``'s current weights for vLLM: checkpoint names, whole tensors, LoRA merged (the model is unchanged).
    One parameter at a time, so a sharded model is gathered one parameter at a time (on every rank)."""
    lora_layers = ((f"{n}.base_layer.weight", m) for n, m in model.named_modules() if hasattr(m, "lora_A"))
    owner = dict(vllm_weight_names(lora_layers))  # the merged weight's name -> its peft LoRA layer
    for name, p in vllm_weight_names(model.named_parameters()):
        yield name, _merged(p, owner.get(name))


class VLLMEngine:
    """One colocated ``vllm.LLM`` per rank: ``generate`` this rank's rows, ``sync`` a model's weights into it.

    Build it on every rank at the same time (the engines agree on the free memory with a collective). Its KV cache
    and weights take ``llm.vllm_gpu_memory_utilization`` of the GPU next to training; no sleep mode."""

    def __init__(
        self,
        model_name: str,
        cfg: LLMConfig,
        device: torch.device,
        seed: int,
        banned_ids: Sequence[int] = (),
        stop_ids: Sequence[int] = (),
    ) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"llm.engine='vllm' needs a CUDA device, got {device}; use llm.engine='hf' on CPU")
        if cfg.temperature > 2:
            raise ValueError(f"llm.engine='vllm' samples at temperature <= 2 (vLLM's limit), got {cfg.temperature}")
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "the vllm engine needs the [vllm] install profile in its own environment: vLLM pins its own torch "
                "and transformers; see docs/llm.md"
            ) from e
        self.cfg, self.device = cfg, device
        self.banned_ids, self.stop_ids = sorted(set(banned_ids)), sorted(set(stop_ids))
        self._sampling_params = vllm.SamplingParams
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world > 1:  # torchrun / accelerate: vLLM joins the launcher's group, one engine per rank
            backend = "external_launcher"
        else:  # one process: keep the engine core in this process, so weights are loaded by reference
            if device.index not in (None, 0):
                where = f"runs on cuda:0 in one process, got {device}: pick the GPU with CUDA_VISIBLE_DEVICES"
                raise ValueError(f"llm.engine='vllm' {where}")
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            backend = "uni"
        self.llm = vllm.LLM(
            model=model_name,
            tensor_parallel_size=1,
            distributed_executor_backend=backend,
            dtype=str(torch_dtype(cfg.dtype, device)).removeprefix("torch."),
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
            limit_mm_per_prompt={"video": 0},  # the backend's rows hold images only
            seed=seed,
        )
        self.synced_key: object = None  # the engine starts from model_name's weights: the first sync always loads
        self.stats = {"syncs": 0, "sync_s": 0.0}

    def generate(
        self, texts: Sequence[str], images: Sequence[Sequence[Any]], *, greedy: bool, seed: int
    ) -> list[list[int]]:
        """One completion per prompt (chat-templated text with one image placeholder per image): the generated
        token ids, prompt excluded, ending with the stop token unless ``max_new_tokens`` ran out. Row ``i`` samples
        with the seed ``seed * 1_000_003 + i``, so rows (and ranks given different seeds) draw different streams."""
        kw: dict[str, Any] = dict(n=1, max_tokens=self.cfg.max_new_tokens, stop_token_ids=self.stop_ids)
        kw.update(detokenize=False, logit_bias={i: float("-inf") for i in self.banned_ids} or None)
        if greedy:
            kw.update(temperature=0.0)
        else:
            kw.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=0)
        params = [self._sampling_params(**kw, seed=(seed * 1_000_003 + i) % 2**63) for i in range(len(texts))]
        prompts: list[dict[str, Any]] = []
        for text, ims in zip(texts, images):
            prompts.append({"prompt": text})
            if ims:  # as TRL: a single image is passed alone, several as a list
                prompts[-1]["multi_modal_data"] = {"image": ims[0] if len(ims) == 1 else list(ims)}
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    def sync(self, model: nn.Module, key: object) -> bool:
        """Load ``model``'s current weights into the engine unless ``key`` (e.g. ``("current", version)`` or
        ``("checkpoint", path)``) is the one last loaded; returns whether it loaded. A sharded (FSDP2) model is
        gathered parameter by parameter, so every rank must call this together (they agree on whether to load)."""
        changed = key != self.synced_key
        if any(hasattr(p, "full_tensor") or hasattr(p, "ds_id") for p in model.parameters()):
            flag = torch.tensor([float(changed)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            changed = bool(flag.item())
        if not changed:
            return False
        t0 = time.perf_counter()
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": vllm_weights(model), "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()  # KV blocks of the old weights
        self.llm.llm_engine.reset_encoder_cache()  # image embeddings of the old weights (scheduler and runner)
        self.synced_key = key
        self.stats["syncs"] += 1
        self.stats["sync_s"] += time.perf_counter() - t0
        return True

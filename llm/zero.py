"""DeepSpeed ZeRO-3 as the multi-process strategy of the Qwen3-VL backend (``llm.strategy = "deepspeed"``).

npo_lab's trainer owns the loop: the micro-batches, each one's loss weighted by its share of the minibatch and
by the world size. DeepSpeed's engine owns what ZeRO-3 must: the partitioned parameters, gradients and float32
master weights, backward and the optimizer step. The backend hands the trainer a :class:`ZeroUpdate` (its
``npo_lab.backend.UpdateStrategy``), which delegates to :class:`Zero3`.

Written against DeepSpeed 0.19.8's source (``runtime/engine.py``, ``runtime/zero/stage3.py``,
``runtime/zero/partition_parameters.py``, ``utils/tensor_fragment.py``):

* **Gradients.** ``engine.backward(loss, scale_wrt_gas=False)``: the trainer already weighs each micro-batch, so
  DeepSpeed must not divide by ``gradient_accumulation_steps`` again. With ``managed_gradient_accumulation =
  false`` every ``engine.step()`` is the accumulation boundary, however many micro-batches came before it.
  ZeRO-3 reduce-scatters each micro-batch's gradients as the mean over ranks (sum / world; the trainer's world-size
  factor undoes the division) and adds them into float32 partitions. The training forward goes through the
  engine, because the engine's forward advances ZeRO-3's micro-step counter, which decides between copying and
  adding a gradient partition.
* **Clipping and non-finite gradients.** ZeRO-3's ``clip_grad`` is set to ``grpo.max_grad_norm`` before each
  step. Its formula is clip_grad_norm_'s: scale by max_norm / (norm + 1e-6) when that is below 1. A NaN or
  infinite norm makes ZeRO-3 skip the update (``overflow``) and report an infinite norm, and the trainer stops.
* **Generation and no-grad passes** call the module itself. ZeRO-3's hooks gather each submodule's parameters
  while it runs and release them after it, so ``generate(synced_gpus=True)`` keeps the ranks in step.
* **Checkpoints.** ``save`` writes the float32 master weights of the trainable parameters
  (``safe_get_full_fp32_param``, a collective) and the gathered values of frozen ones. ``load`` writes both
  copies back: this rank's slice of each master (``safe_set_local_fp32_param``), and the compute copy through
  ``GatheredParameters(modifier_rank=0)``, which broadcasts rank 0's values and re-partitions them.
* **The optimizer state** that NPO's snapshot copies is this rank's Adam moments over its float32 partitions
  (:class:`ZeroOptimizer`). The weights themselves come back through ``load``.

Importing this module does not import DeepSpeed; :func:`require_deepspeed` does.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from npo_lab.llm.config import LLMConfig
from torch import Tensor, nn

ZERO3_CONFIG: dict[str, Any] = {
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_max_live_parameters": 1000000000,
        "stage3_max_reuse_distance": 1000000000,
    },
    "bf16": {"enabled": "auto"},
    "communication_data_type": "fp32",
    "data_types": {"grad_accum_dtype": "fp32"},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 1000000000,
    "wall_clock_breakdown": False,
}
"""The built-in DeepSpeed config, identical to configs/deepspeed/zero3.json (a test keeps them equal). "auto"
values are filled by :func:`engine_config`."""

_OWNED = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")
"""Keys the trainer owns: each must be "auto" or absent in a user's config."""


def launched_with_deepspeed() -> bool:
    """``accelerate launch`` with a DeepSpeed config (distributed_type: DEEPSPEED) sets this for every process."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def resolve_strategy(cfg: LLMConfig) -> str:
    """'fsdp2' or 'deepspeed': ``llm.strategy``, where 'auto' follows the launcher (DeepSpeed under ``accelerate
    launch`` with a DeepSpeed config, FSDP2 otherwise)."""
    if cfg.strategy == "auto":
        return "deepspeed" if launched_with_deepspeed() else "fsdp2"
    if cfg.strategy == "fsdp2" and launched_with_deepspeed():
        raise ValueError(
            "llm.strategy='fsdp2', but accelerate launched this run with a DeepSpeed config "
            "(ACCELERATE_USE_DEEPSPEED=true): use llm.strategy='deepspeed' (or 'auto'), or launch with "
            "configs/accelerate/fsdp2.yaml"
        )
    return cfg.strategy


def require_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError(
            "llm.strategy='deepspeed' needs DeepSpeed: pip install -e '.[deepspeed]' (scripts/setup.sh installs it; "
            "see docs/llm.md)"
        ) from e
    return deepspeed


def read_config(cfg: LLMConfig) -> tuple[dict[str, Any], str]:
    """The DeepSpeed config to start from and where it came from: ``llm.deepspeed_config``, else the file that
    ``accelerate launch`` names (its deepspeed_config_file), else :data:`ZERO3_CONFIG`."""
    path = cfg.deepspeed_config or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if not path:
        return copy.deepcopy(ZERO3_CONFIG), "the built-in ZeRO-3 config"
    field = "llm.deepspeed_config" if cfg.deepspeed_config else "accelerate's deepspeed_config_file"
    if not Path(path).is_file():
        raise ValueError(f"{field}: no DeepSpeed config file at {path!r}")
    try:
        loaded = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ValueError(f"{field}: {path} is not valid JSON: {e}") from e
    if not isinstance(loaded, dict):
        raise ValueError(f"{field}: {path} must hold a JSON object")
    return loaded, f"{field} {path}"


def engine_config(user: dict[str, Any], source: str, dtype: torch.dtype, hidden: int) -> dict[str, Any]:
    """``user``'s DeepSpeed config checked and completed for npo_lab's loop.

    The trainer owns the optimizer (Adam at grpo.lr), the micro-batches and the clipping, so ``optimizer`` and
    ``scheduler`` sections are refused, and the batch-size, accumulation and clipping keys must be "auto" or
    absent; precision follows ``llm.dtype`` (bf16 with float32 master weights, or float32). The bucket sizes set
    to "auto" get the values that transformers' DeepSpeed integration uses for the model's hidden size."""
    ds = copy.deepcopy(user)
    zero = ds.get("zero_optimization")
    if not isinstance(zero, dict) or zero.get("stage") != 3:
        raise ValueError(f"{source}: zero_optimization.stage must be 3 (this backend runs ZeRO-3 only)")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ValueError(f"{source}: remove the '{key}' section (the trainer owns the optimizer: Adam, grpo.lr)")
    for key in _OWNED:
        if ds.get(key, "auto") != "auto":
            raise ValueError(f'{source}: {key} must be "auto" or absent (the trainer owns it), got {ds[key]!r}')
    if ds.get("fp16", {}).get("enabled") not in (None, False, "auto"):
        raise ValueError(f"{source}: fp16 is not supported (use bf16: llm.dtype='bfloat16')")
    want_bf16 = dtype == torch.bfloat16
    bf16 = ds.get("bf16", {}).get("enabled", "auto")
    if bf16 != "auto" and bool(bf16) != want_bf16:
        raise ValueError(f'{source}: bf16.enabled={bf16!r} disagrees with llm.dtype ({dtype}); set it to "auto"')
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": want_bf16}
    ds.pop("fp16", None)
    ds.update(
        train_micro_batch_size_per_gpu=1,
        gradient_accumulation_steps=1,
        gradient_clipping=0.0,  # set per step from grpo.max_grad_norm (Zero3.step)
        managed_gradient_accumulation=False,  # every engine.step() is the accumulation boundary
    )
    ds.setdefault("steps_per_print", 1000000000)
    auto_sizes = {
        "reduce_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    for key, value in auto_sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    ds["zero_optimization"] = zero
    left = [k for k, v in _walk(ds) if v == "auto"]
    if left:
        raise ValueError(f'{source}: npo_lab cannot fill the "auto" value of {", ".join(left)}; give a value')
    return ds


def _walk(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def skip_cpu_shm_kernel(deepspeed: Any) -> None:
    """On the CPU accelerator DeepSpeed compiles a shared-memory all-reduce kernel the first time it sets up its
    communication (about 50 s on 2 cores, with a C++ compiler). Only its tensor-parallel inference all-reduce uses
    it; training collectives go through torch.distributed (gloo), so the kernel is marked unavailable."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class ZeroOptimizer:
    """What the trainer holds as its optimizer under ZeRO-3: ``zero_grad``, ``param_groups`` (the learning rate
    lives there), and ``state_dict`` / ``load_state_dict`` of this rank's Adam moments over its float32
    partitions (one entry per ZeRO-3 sub-group). The master weights are not part of it: ``backend.load`` restores
    them with the model weights, so NPO's snapshot/restore (save + this state) is exact."""

    def __init__(self, zero: Any) -> None:
        self.zero = zero  # DeepSpeedZeroOptimizer_Stage3
        self.inner: torch.optim.Optimizer = zero.optimizer  # the client Adam over the float32 partitions

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.zero.zero_grad(set_to_none=set_to_none)

    def _flats(self) -> list[Tensor]:
        return list(self.zero.fp32_partitioned_groups_flat)

    def state_dict(self) -> dict[str, Any]:
        state = []
        for flat in self._flats():
            entry = self.inner.state.get(flat, {})
            state.append({k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in entry.items()})
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.inner.param_groups]
        return {"format": "npo_lab-zero3-adam-v1", "state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        flats = self._flats()
        if state_dict.get("format") != "npo_lab-zero3-adam-v1" or len(state_dict["state"]) != len(flats):
            raise ValueError("optimizer state: not a ZeRO-3 state of this model and world size")
        for flat, saved in zip(flats, state_dict["state"]):
            if not saved:
                self.inner.state.pop(flat, None)
                continue
            self.inner.state[flat] = {
                k: v.detach().clone().to(flat.device) if torch.is_tensor(v) else copy.deepcopy(v)
                for k, v in saved.items()
            }
        for group, saved in zip(self.inner.param_groups, state_dict["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})

    def reset(self, lr: float) -> None:
        """A fresh Adam at ``lr`` (no moments, step 0), as ``torch.optim.Adam(params, lr)`` would be."""
        self.inner.state.clear()
        for group in self.inner.param_groups:
            group["lr"] = lr


class Zero3:
    """A ZeRO-3 engine around ``model``: its trainable parameters get float32 masters and a torch Adam."""

    def __init__(self, model: nn.Module, ds_config: dict[str, Any], source: str = "") -> None:
        deepspeed = require_deepspeed()
        skip_cpu_shm_kernel(deepspeed)
        # DeepSpeed 0.19.8 calls torch.distributed.all_gather_into_tensor / reduce_scatter_tensor, which torch 2.13
        # marks deprecated: one FutureWarning per call would flood the log
        warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
        self.source = source  # where the DeepSpeed config came from (read_config)
        params = [p for p in model.parameters() if p.requires_grad]
        # the trainer's default optimizer (torch Adam); its learning rate is set by make_optimizer
        adam = torch.optim.Adam(params, lr=0.0)
        self.engine, zero, _, _ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=adam, config=ds_config
        )
        self.optimizer = ZeroOptimizer(zero)
        self.module: nn.Module = self.engine.module
        self.updates = 0  # optimizer steps applied and loads: names the current weights (vLLM's sync)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, max_grad_norm: float) -> float:
        """Clip to ``max_grad_norm`` (0 = no clipping) and apply the update; returns the gradient norm before
        clipping (infinite, with no update applied, when it is not finite)."""
        self.optimizer.zero.clip_grad = float(max_grad_norm or 0.0)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        if getattr(self.optimizer.zero, "overflow", False):
            return float("inf")
        self.updates += 1
        return float(norm)

    @torch.no_grad()
    def full_state(self, keys: list[str], everywhere: bool = False) -> dict[str, Tensor]:
        """The full weights under ``keys`` (the module's state-dict names) on CPU: the float32 masters of trainable
        parameters, the gathered values of frozen ones, buffers as they are. A collective (one parameter gathered at
        a time); rank 0 keeps the tensors (every rank with ``everywhere``), the others get an empty dict."""
        from deepspeed import zero
        from deepspeed.utils import safe_get_full_fp32_param

        keep = everywhere or torch.distributed.get_rank() == 0
        by_id: dict[int, Tensor] = {}
        for p in self.module.parameters():  # module.parameters() yields a tied parameter once
            if p.requires_grad:
                value = safe_get_full_fp32_param(p)
                if keep:
                    by_id[id(p)] = value.detach().cpu().clone()
            else:
                with zero.GatheredParameters([p]):
                    if keep:
                        by_id[id(p)] = p.data.detach().cpu().clone()
        if not keep:
            return {}
        names = dict(self.module.named_parameters(remove_duplicate=False))
        buffers = dict(self.module.named_buffers())
        out = {}
        for k in keys:
            if k in names:
                out[k] = by_id[id(names[k])]
            elif k in buffers:
                out[k] = buffers[k].detach().cpu().clone()
        return out

    @torch.no_grad()
    def load_full_state(self, state: dict[str, Tensor]) -> None:
        """Write full weights (every rank holds the same ``state``) into the partitions: the masters of trainable
        parameters from their float32 values, the compute copies through a gather from rank 0. A collective."""
        from deepspeed import zero
        from deepspeed.utils import safe_set_local_fp32_param

        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        seen: set[int] = set()
        for name, p in self.module.named_parameters(remove_duplicate=False):
            if id(p) in seen or name not in state:
                continue
            seen.add(id(p))
            value = state[name]
            if p.requires_grad:
                n = p.ds_tensor.numel()  # this rank's slice, of the padded flat tensor
                flat = torch.zeros(n * world, dtype=torch.float32)
                flat[: value.numel()] = value.reshape(-1).float()
                safe_set_local_fp32_param(p, flat[rank * n : (rank + 1) * n].to(p.ds_tensor.device))
            with zero.GatheredParameters([p], modifier_rank=0):
                if rank == 0:
                    p.data.copy_(value.to(p.dtype).view_as(p.data))
        for name, b in self.module.named_buffers():
            if name in state:
                b.copy_(state[name])
        self.updates += 1


class ZeroUpdate:
    """The trainer's :class:`npo_lab.backend.UpdateStrategy` under ZeRO-3: the engine owns backward (loss scaling,
    partitioned gradients) and the optimizer step (clipping; no update when the gradients are not finite)."""

    def __init__(self, zero: Zero3, world_size: int, rank: int) -> None:
        self.zero, self.world_size, self.rank = zero, world_size, rank

    def make_optimizer(self, params: list[nn.Parameter], lr: float) -> ZeroOptimizer:
        """The engine's Adam, reset to a fresh one at ``lr`` (``params`` are the engine's already)."""
        self.zero.optimizer.reset(lr)
        return self.zero.optimizer

    def backward(self, loss: Tensor) -> None:
        self.zero.backward(loss)

    def step(self, optimizer: Any, max_grad_norm: float) -> float:
        return self.zero.step(max_grad_norm)

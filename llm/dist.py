"""Multi-process runs: process-group set-up from the launcher's environment, FSDP2 sharding, row sharding.

``torchrun`` and ``accelerate launch`` both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables; the backend joins the group itself (NCCL on GPUs, gloo on CPU), so the same training script runs on
one CPU, one GPU, several GPUs and several nodes. Rollouts and no-grad log-probs are split by rows and
gathered, so every rank holds the same batch and takes the same decisions (gates, AutoNPO triggers, Delta*).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_world(device_type: str) -> World:
    """Join the process group the launcher describes (no-op for a single process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard_rows(n: int, world: World) -> tuple[list[int], int]:
    """This rank's contiguous share of ``n`` rows, padded (with its last row, or row 0) to the same length on
    every rank so sharded models run the same number of forward passes; returns (indices, valid count)."""
    per = -(-n // world.size)
    own = list(range(world.rank * per, min(n, (world.rank + 1) * per)))
    valid = len(own)
    pad = own[-1] if own else 0
    return own + [pad] * (per - valid), valid


def gather_rows(local: list[Any], valid: int, world: World) -> list[Any]:
    """Inverse of :func:`shard_rows`: every rank's valid rows, in row order, on every rank."""
    if world.size == 1:
        return local[:valid]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, local[:valid])
    return [row for part in out for row in part]  # type: ignore[union-attr]


def fully_shard_qwen_vl(model: Any, dtype: torch.dtype = torch.float32) -> Any:
    """FSDP2: shard each language-model decoder layer and each vision block, the vision tower, then the root
    module. With ``dtype`` below float32 the float32 master weights are gathered and computed in ``dtype``, and
    gradients are reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (
        {}
        if dtype == torch.float32
        else {"mp_policy": MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)}
    )

    layers = ("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock", "Qwen3VLMoeTextDecoderLayer", "Qwen3VLMoeVisionBlock")
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module, **mp)
    # generate() calls the vision tower directly (not through the root's forward): it needs its own unit
    for module in model.modules():
        if type(module).__name__ in ("Qwen3VLVisionModel", "Qwen3VLMoeVisionModel"):
            fully_shard(module, **mp)
    fully_shard(model, **mp)
    return model


def agree(world: World, work: Any) -> Any:
    """Run ``work()`` on every rank; if it raises on any rank, raise on all of them (with the first rank's message),
    so no rank is left waiting in a collective that a failed rank never reaches. Returns ``work()``'s result."""
    result, error = None, None
    try:
        result = work()
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, OSError) as e:
        if world.size == 1:
            raise
        error = f"rank {world.rank}: {type(e).__name__}: {e}"
    if world.size > 1:
        errors: list[Any] = [None] * world.size
        dist.all_gather_object(errors, error)
        first = next((e for e in errors if e), None)
        if first:
            raise ValueError(first)
    return result


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def broadcast_str(value: str, world: World) -> str:
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]

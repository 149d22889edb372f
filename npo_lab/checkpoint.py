"""Training checkpoints on disk: written atomically (temporary file, fsync, rename), read with
``torch.load(weights_only=True)`` so a checkpoint file can never run code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from npo_lab.utils import capture_rng

FORMAT = "npo_lab-checkpoint-v1"


def save_training_checkpoint(
    path: str | Path, state: Any, extra: dict[str, Any] | None = None, policy: Any = None, optimizer: bool = True
) -> Path:
    """Write weights (+ backend RNG), optimizer, global RNGs, data cursor and step to ``path`` atomically.

    ``policy`` is ``state.backend.save()`` when not given. A checkpoint that lives in a folder of its own (the
    Qwen3-VL backend's ``save_pretrained`` folders) offers ``persist(dest)``: it is copied beside ``path`` as
    ``<name>.policy/`` and the file records where. The previous file at ``path`` stays intact until the new one
    is complete on disk. ``optimizer=False`` leaves the optimizer state out (a sharded optimizer: one rank's
    shard is not a state to resume from)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    policy = state.backend.save() if policy is None else policy
    if hasattr(policy, "persist"):
        policy = policy.persist(path.with_name(path.stem + ".policy").resolve())
    doc = {
        "format": FORMAT,
        "step": state.step,
        "policy": policy,
        "optimizer": state.optimizer.state_dict() if optimizer else None,
        "rng": capture_rng(),
        "sampler": state.sampler.state_dict(),
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_checkpoint`; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not a torch file
        raise ValueError(f"checkpoint {path} is unreadable (truncated or corrupted?): {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not an {FORMAT} file")
    return doc

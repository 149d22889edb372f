"""Checkpoints on disk: damage is detected and named, a failed write loses nothing, nothing is ever unpickled."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from npo_lab import checkpoint
from npo_lab.checkpoint import (
    CheckpointError,
    FolderHandle,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


class FolderPolicy:
    """A folder-backed checkpoint like the Qwen3-VL backend's: ``persist(dest)`` writes a folder."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def persist(self, dest):
        dest = Path(dest)
        dest.mkdir(parents=True)
        (dest / "model.safetensors").write_bytes(self.payload)
        (dest / "config.json").write_text("{}")
        return {"format": "test-folder", "path": str(dest), "rng": torch.tensor([7])}


def doc(step: int) -> dict:
    return {
        "step": step,
        "policy": {"weights": {"w": torch.full((3, 4), float(step))}, "rng": torch.arange(5)},
        "guide": FolderPolicy(bytes([step]) * 1000),
        "loop": {"events": [{"step": 1, "q": 0.5}], "pool": [[3, [torch.ones(2)]]]},
    }


def test_round_trip_with_a_folder_policy(tmp_path):
    path = save_checkpoint(tmp_path, 3, doc(3))
    assert path == tmp_path / "step_000003" and latest_checkpoint(tmp_path) == path
    assert (tmp_path / "latest").read_text() == "step_000003\n"
    back = load_checkpoint(path)
    assert torch.equal(back["policy"]["weights"]["w"], torch.full((3, 4), 3.0))
    assert back["loop"]["pool"][0][0] == 3
    guide = back["guide"]
    assert (
        isinstance(guide, FolderHandle)
        and guide["format"] == "test-folder"
        and torch.equal(guide["rng"], torch.tensor([7]))
    )
    # the handle's folder is a private copy: it outlives the checkpoint (retention may delete that) ...
    shutil.rmtree(path)
    assert (Path(guide["path"]) / "model.safetensors").read_bytes() == bytes([3]) * 1000
    # ... is written into a newer checkpoint as a folder again, and is removed with the handle
    newer = save_checkpoint(tmp_path, 4, {"guide": guide})
    assert (newer / "guide" / "model.safetensors").read_bytes() == bytes([3]) * 1000
    folder = Path(guide["path"])
    del guide, back
    assert not folder.exists()


def test_retention_keeps_the_newest(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, doc(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000004", "step_000005"]


def _damage(kind: str, ckpt: Path) -> Path:
    """Damage checkpoint ``ckpt`` in one way; returns the file an error must name."""
    state, manifest, weights = ckpt / "state.pt", ckpt / "manifest.json", ckpt / "guide" / "model.safetensors"
    if kind == "flip a byte of state.pt":
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0x01
        state.write_bytes(bytes(data))
        return state
    if kind == "truncate state.pt":
        state.write_bytes(state.read_bytes()[:100])
        return state
    if kind == "append to state.pt":
        state.write_bytes(state.read_bytes() + b"x")
        return state
    if kind == "empty state.pt":
        state.write_bytes(b"")
        return state
    if kind == "delete state.pt":
        state.unlink()
        return state
    if kind == "flip a byte of a weights file":
        data = bytearray(weights.read_bytes())
        data[0] ^= 0x80
        weights.write_bytes(bytes(data))
        return weights
    if kind == "truncate a weights file":
        weights.write_bytes(weights.read_bytes()[:10])
        return weights
    if kind == "delete a weights file":
        weights.unlink()
        return weights
    if kind == "delete the manifest":
        manifest.unlink()
        return ckpt
    if kind == "garble the manifest":
        manifest.write_text("{not json")
        return manifest
    if kind == "an extra file in a weights folder":
        (ckpt / "guide" / "extra.safetensors").write_bytes(b"x")
        return ckpt
    if kind == "manifest of another format":
        m = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**m, "format": "something-else"}))
        return manifest
    raise AssertionError(kind)


CORRUPTIONS = [
    "flip a byte of state.pt",
    "truncate state.pt",
    "append to state.pt",
    "empty state.pt",
    "delete state.pt",
    "flip a byte of a weights file",
    "truncate a weights file",
    "delete a weights file",
    "delete the manifest",
    "garble the manifest",
    "manifest of another format",
    "an extra file in a weights folder",
]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_damage_is_detected_and_named(kind, tmp_path):
    ckpt = save_checkpoint(tmp_path, 1, doc(1))
    named = _damage(kind, ckpt)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    assert str(named) in str(e.value)


def test_a_legacy_or_foreign_file_is_named(tmp_path):
    bad = tmp_path / "step_000001.pt"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="step_000001.pt is unreadable"):
        load_checkpoint(bad)
    torch.save({"format": "other"}, bad)
    with pytest.raises(CheckpointError, match="not an npo_lab checkpoint"):
        load_checkpoint(bad)


class Boom:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    """state.pt is read with weights_only: a pickle with code in it is refused even when its checksums are right
    (an attacker who can write the file can also rewrite the manifest)."""
    ckpt = save_checkpoint(tmp_path, 1, doc(1))
    marker = tmp_path / "pwned"
    (ckpt / "state.pt").write_bytes(pickle.dumps({"step": 1, "x": Boom(str(marker))}))
    m = json.loads((ckpt / "manifest.json").read_text())
    m["files"]["state.pt"] = {
        "size": (ckpt / "state.pt").stat().st_size,
        "sha256": checkpoint._sha256(ckpt / "state.pt"),
    }
    (ckpt / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="state.pt is unreadable"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_values_that_could_not_be_read_back_are_refused_when_writing(tmp_path):
    save_checkpoint(tmp_path, 1, doc(1))
    with pytest.raises(CheckpointError, match=r"state\['loop'\]\['pool'\]\[1\]: a .*Boom is not a plain value"):
        save_checkpoint(tmp_path, 2, {"loop": {"pool": [1, Boom("x")]}})
    assert latest_checkpoint(tmp_path).name == "step_000001"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


WRITE_FAILURES = [
    (errno.ENOSPC, 1, "No space left on device"),  # the state file
    (errno.ENOSPC, 2, "No space left on device"),  # the manifest
    (errno.ENOSPC, 3, "No space left on device"),  # the 'latest' pointer
    (errno.EACCES, 1, "Permission denied"),
    (errno.EDQUOT, 2, "Disk quota exceeded"),
    (errno.EIO, 1, "Input/output error"),
]


@pytest.mark.parametrize("code,nth,text", WRITE_FAILURES)
def test_a_failed_write_names_the_cause_and_keeps_the_last_checkpoint(code, nth, text, tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, doc(1))
    calls = {"n": 0}
    write = checkpoint._write_file

    def failing(path, data):
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(code, os.strerror(code), str(path))
        write(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", failing)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path, 2, doc(2), keep=1)
    msg = str(e.value)
    assert text in msg and "step_000002" in msg and "step_000001" in msg and "is kept" in msg
    if nth < 3:  # the new checkpoint never became complete
        assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000001"]
        assert (tmp_path / "latest").read_text() == "step_000001\n"
    else:  # complete, but 'latest' was not moved and nothing older was removed (keep=1 notwithstanding)
        assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000001", "step_000002"]
    assert torch.equal(load_checkpoint(tmp_path / "step_000001")["policy"]["weights"]["w"], torch.full((3, 4), 1.0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_no_permission_to_create_the_folder(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(CheckpointError, match=r"Permission denied \[EACCES\]; no earlier checkpoint exists"):
        save_checkpoint(tmp_path, 1, doc(1))
    assert latest_checkpoint(tmp_path) is None


FSIZE_SCRIPT = """
import resource, sys, torch
from npo_lab.checkpoint import CheckpointError, save_checkpoint
root = sys.argv[1]
save_checkpoint(root, 1, {"w": torch.zeros(10)})
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a real write failure: files are capped at 200 kB
try:
    save_checkpoint(root, 2, {"w": torch.zeros(1_000_000)})
except CheckpointError as e:
    print(e)
    sys.exit(3)
"""


def test_a_real_file_size_limit_is_reported_and_loses_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "File too large [EFBIG]" in r.stdout and "step_000001" in r.stdout
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000001"]
    assert load_checkpoint(tmp_path / "step_000001")["w"].shape == (10,)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_interrupted_write_never_looks_complete(tmp_path, monkeypatch):
    """A write cut short by an exception (like a kill) leaves no folder that a reader would take as a checkpoint."""
    save_checkpoint(tmp_path, 1, doc(1))
    monkeypatch.setattr(checkpoint, "_sha256", lambda p, sync=False: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, doc(2))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000001"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_values_weights_only_cannot_read_are_refused_even_as_subclasses(tmp_path):
    import enum

    import numpy as np

    class Color(enum.IntEnum):
        RED = 1

    for bad, name in (
        (np.float64(0.5), "float64"),
        (Color.RED, "Color"),
        (torch.nn.Parameter(torch.ones(1)), "Parameter"),
    ):
        with pytest.raises(CheckpointError, match=f"state\\['x'\\]: a .*{name} is not a plain value"):
            save_checkpoint(tmp_path, 1, {"x": bad})
    assert latest_checkpoint(tmp_path) is None


def test_two_folder_policies_in_a_list_get_a_folder_each(tmp_path):
    ckpt = save_checkpoint(tmp_path, 1, {"pool": [FolderPolicy(b"a"), FolderPolicy(b"b")]})
    back = load_checkpoint(ckpt)
    assert [(Path(h["path"]) / "model.safetensors").read_bytes() for h in back["pool"]] == [b"a", b"b"]


def test_rewriting_a_step_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    """The final step written again (a resumed run): if the new folder never lands, the old one is back in place;
    a kill between the two renames leaves the old one aside, and clean_stale puts it back."""
    save_checkpoint(tmp_path, 1, doc(1))
    rename = Path.rename

    def interrupted(self, target):
        if ".tmp-" in self.name:  # the new folder's rename into place
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 1, doc(2))
    monkeypatch.setattr(Path, "rename", rename)
    assert load_checkpoint(tmp_path / "step_000001")["step"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # as a kill would leave it: the old folder renamed aside, the new one never renamed in
    (tmp_path / "step_000001").rename(tmp_path / ".step_000001.old-4242")
    assert checkpoint.clean_stale(tmp_path) == []
    assert load_checkpoint(tmp_path / "step_000001")["step"] == 1

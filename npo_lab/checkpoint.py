"""Training checkpoints on disk: either complete and verified, or absent; never unpickled.

One folder per checkpoint, under a run's ``checkpoints/``::

    step_000120/
        state.pt        the run's whole state: step, policy weights and sampling RNG (in-memory backends),
                        optimizer, every global RNG, data cursor (npo_lab.train.state.TrainState.state_dict), the
                        method's state (replay pools, AutoNPO's controller and mistake pool, the near-future guide
                        checkpoint), the training loop's own counters and results so far, the loggers' file
                        positions; read with ``torch.load(weights_only=True)``, so a file can never run code
        policy/ ...     folder-backed checkpoints (the Qwen3-VL backend's ``save_pretrained`` folders): the
                        policy, the guide, the reference policy, each in a folder of its own (safetensors)
        manifest.json   format, step, and the size and SHA-256 of every file above; written last
    latest              the name of the newest complete checkpoint

Writing is atomic: everything goes to a temporary sibling folder (each file fsynced, the manifest last), which is
fsynced and renamed into place; then ``latest`` is replaced (temporary file, fsync, rename); only then are
checkpoints beyond ``keep`` removed. A failure on the way (disk full, no permission, a kill) leaves at most a
temporary folder, never a folder that looks complete, and the previous checkpoint untouched.
Reading verifies the manifest: a missing, truncated or altered file is an error that names the file.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

FORMAT = "npo_lab-checkpoint-v2"
LEGACY_FORMAT = "npo_lab-checkpoint-v1"
"""Single ``.pt`` files of earlier versions: still readable (no checksums), never written."""
STATE_FILE, MANIFEST = "state.pt", "manifest.json"
_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and what is wrong."""


# ---- folder-backed policies ------------------------------------------------------------------------
class FolderHandle(dict):
    """A folder-backed checkpoint read back from a training checkpoint: a dict with ``path`` and the backend's
    other entries (e.g. ``rng``), which is what a folder-saving backend's ``load``/``rollout`` accept.

    The folder is a private hard-linked copy of the checkpoint's (no bytes are copied on one file system), removed
    when the handle is garbage-collected, so an old checkpoint can be deleted by the retention rule while a
    resumed run still samples from its guide. :meth:`persist` writes it into a newer checkpoint."""

    def __init__(self, path: Path, meta: dict[str, Any], owned: Path | None = None) -> None:
        super().__init__(meta, path=str(path))
        if owned is not None:  # the private folder (``path`` or a folder holding it) goes with the handle
            weakref.finalize(self, shutil.rmtree, str(owned), True)

    def persist(self, dest: str | Path) -> dict[str, Any]:
        link_tree(Path(self["path"]), Path(dest))
        return {**self, "path": str(dest)}


def link_tree(src: Path, dest: Path) -> None:
    """Copy the folder ``src`` to ``dest`` with hard links (a real copy where links are not possible): checkpoint
    files are written once and never modified, so a link is as good as a copy and costs no bytes."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=link)


def _persist_folders(doc: Any, folder: Path, where: str = "") -> Any:
    """``doc`` with every object that has ``persist(dest)`` written into ``folder/<name>`` and replaced by
    ``{"__folder__": name, ...}`` (the object's other entries, without its absolute path)."""
    done: dict[int, dict[str, Any]] = {}

    def walk(x: Any, key: str) -> Any:
        if hasattr(x, "persist"):
            if id(x) not in done:
                name = re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-.") or "policy"
                meta = x.persist(folder / name)
                done[id(x)] = {"__folder__": name, **{k: v for k, v in meta.items() if k != "path"}}
            return done[id(x)]
        if isinstance(x, dict):
            return type(x)((k, walk(v, f"{key}.{k}" if key else str(k))) for k, v in x.items())
        if isinstance(x, list | tuple):
            return type(x)(walk(v, f"{key}.{i}") for i, v in enumerate(x))
        return x

    return walk(doc, where)


def _resolve_folders(doc: Any, ckpt: Path, scratch: Path) -> Any:
    """Inverse of :func:`_persist_folders`: each ``{"__folder__": name}`` becomes a :class:`FolderHandle` on a
    hard-linked copy of ``ckpt/name`` in a private ``.resumed-*`` folder in ``scratch``."""

    def walk(x: Any) -> Any:
        if isinstance(x, dict) and "__folder__" in x:
            name = x["__folder__"]
            src = ckpt / name
            if not src.is_dir():
                raise CheckpointError(f"checkpoint {ckpt} lacks the folder {name}/ its state refers to")
            own = Path(tempfile.mkdtemp(prefix=".resumed-", dir=scratch))
            link_tree(src, own / name)
            return FolderHandle(own / name, {k: v for k, v in x.items() if k != "__folder__"}, owned=own)
        if isinstance(x, dict):
            return type(x)((k, walk(v)) for k, v in x.items())
        if isinstance(x, list | tuple):
            return type(x)(walk(v) for v in x)
        return x

    return walk(doc)


_SCALARS = (str, bytes, int, float, bool, type(None), torch.dtype, torch.Size)
"""Exact types: a subclass (numpy.float64, an IntEnum) is pickled by its class, which weights_only refuses."""


def check_plain(doc: Any, where: str = "state") -> None:
    """Raise :class:`CheckpointError` naming the first value ``torch.load(weights_only=True)`` could not read back
    (anything but tensors, numbers, strings, None and dicts / lists / tuples of them)."""
    if type(doc) in _SCALARS or type(doc) is torch.Tensor:
        return
    if type(doc) in (dict, OrderedDict):  # exact types: a subclass would be pickled by its class name
        for k, v in doc.items():
            if not isinstance(k, str | int | float | bool | type(None)):
                raise CheckpointError(f"cannot checkpoint {where}: key {k!r} is a {type(k).__name__}")
            check_plain(v, f"{where}[{k!r}]")
        return
    if type(doc) in (list, tuple):
        for i, v in enumerate(doc):
            check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"cannot checkpoint {where}: a {type(doc).__module__}.{type(doc).__name__} is not a plain value "
        "(tensors, numbers, strings, None, dicts and lists are)"
    )


# ---- writing ---------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (the one place checkpoint bytes reach the disk)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path, sync: bool = False) -> str:
    """The file's SHA-256; ``sync`` also fsyncs it (files a folder-backed policy copied in were never fsynced)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        if sync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _files(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            yield p


def save_checkpoint(root: str | Path, step: int, doc: dict[str, Any], keep: int = 0) -> Path:
    """Write ``doc`` as ``root/step_<step>/`` atomically, point ``root/latest`` at it, then keep only the newest
    ``keep`` checkpoints (0 keeps all). Objects in ``doc`` with ``persist(dest)`` (folder-backed policies) become
    folders beside ``state.pt``. Returns the checkpoint's folder.

    Raises :class:`CheckpointError` (naming the folder, the cause and the checkpoint that is kept) when anything
    fails; nothing is then marked as latest and the temporary folder is removed."""
    root = Path(root)
    final = root / f"step_{step:06d}"
    previous = latest_checkpoint(root) if root.is_dir() else None
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        body = _persist_folders(doc, tmp)
        check_plain(body)
        buf = io.BytesIO()
        torch.save(body, buf)
        _write_file(tmp / STATE_FILE, buf.getvalue())
        files = {
            str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p, sync=True)} for p in _files(tmp)
        }
        manifest = {"format": FORMAT, "step": step, "created": time.time(), "files": files}
        _write_file(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        for d in sorted({p.parent for p in _files(tmp)}, key=lambda p: -len(p.parts)):
            _fsync_dir(d)
        if final.exists():  # the same step written again (a resumed run): the new one replaces it
            old = root / f".{final.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)  # a kill before the next rename leaves .old-, which clean_stale renames back
            try:
                tmp.rename(final)
            except BaseException:
                old.rename(final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        tmp = None
        _fsync_dir(root)
        write_text_atomic(root / "latest", final.name + "\n")
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError | CheckpointError):
            kept = f"the last complete checkpoint ({previous}) is kept" if previous else "no earlier checkpoint exists"
            cause = f"{e.strerror} [{errno.errorcode.get(e.errno, e.errno)}]" if isinstance(e, OSError) else str(e)
            raise CheckpointError(f"could not write checkpoint {final}: {cause}; {kept}") from e
        raise
    if keep > 0:
        for old_ckpt in list_checkpoints(root)[:-keep]:
            if old_ckpt != final:  # renamed first: a kill during the removal leaves no half-deleted step_* folder
                doomed = root / f".{old_ckpt.name}.del-{os.getpid()}"
                old_ckpt.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)
    return final


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content atomically (temporary file, fsync, rename, fsync of the folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    _write_file(tmp, text.encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# ---- reading ---------------------------------------------------------------------------------------
def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints in ``root`` (those with a manifest), oldest first (by step)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / MANIFEST).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint in ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file of checkpoint ``path`` against its manifest; returns the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: it has no {MANIFEST} (its write was interrupted)")
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {mf} is corrupted: {e}") from e
    unlisted = [str(p.relative_to(path)) for p in _files(path) if p != mf and str(p.relative_to(path)) not in files]
    if unlisted:
        raise CheckpointError(f"checkpoint {path} holds files its manifest does not list: {unlisted[:3]}")
    for rel, info in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing")
        size = f.stat().st_size
        if size != info["size"]:
            raise CheckpointError(f"checkpoint file {f} is truncated or altered: {size} bytes, {info['size']} written")
        if _sha256(f) != info["sha256"]:
            raise CheckpointError(f"checkpoint file {f} is corrupted: its SHA-256 differs from the one written")
    return manifest


def load_checkpoint(path: str | Path, scratch: str | Path | None = None) -> dict[str, Any]:
    """Verify and read checkpoint ``path`` (a folder written by :func:`save_checkpoint`; a legacy ``.pt`` file is
    read without checksums). Folder-backed policies come back as :class:`FolderHandle` s, hard-linked into private
    folders in ``scratch`` (default: beside ``path``; pass another run's folder, or a temporary one, when reading a
    checkpoint of another run)."""
    path = Path(path)
    if path.is_file():
        return _load_legacy(path)
    verify_checkpoint(path)
    try:
        body = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # the checksum matched, so this is a file written by another version
        raise CheckpointError(f"checkpoint file {path / STATE_FILE} is unreadable: {e}") from e
    return _resolve_folders(body, path, Path(scratch) if scratch is not None else path.parent)


def _load_legacy(path: Path) -> dict[str, Any]:
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, or not a torch file
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupted?): {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != LEGACY_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an npo_lab checkpoint")
    policy = doc.get("policy")
    if isinstance(policy, dict) and "path" in policy:  # v1 folder policies were absolute paths beside the file
        doc["policy"] = FolderHandle(Path(policy["path"]), {k: v for k, v in policy.items() if k != "path"})
    return doc


def set_aside_after(root: str | Path, step: int) -> tuple[int, Path | None]:
    """Move the checkpoints of steps after ``step`` into ``root/superseded-<time>-*/``: they belong to a trajectory
    the run no longer follows (a resume from an earlier checkpoint, or a rollback), and a resume must not pick them.
    Returns how many were moved, and where."""
    root = Path(root)
    later = [p for p in list_checkpoints(root) if int(_NAME.match(p.name).group(1)) > step]  # type: ignore[union-attr]
    if not later:
        return 0, None
    aside = Path(tempfile.mkdtemp(prefix=f"superseded-{int(time.time())}-", dir=root))
    for p in later:
        p.rename(aside / p.name)
    return len(later), aside


def clean_stale(root: str | Path) -> list[Path]:
    """Remove what interrupted writes and earlier resumed processes left in ``root`` (temporary folders);
    returns them. Call it only when no other process writes to ``root``."""
    root = Path(root)
    if not root.is_dir():
        return []
    for old in [p for p in root.iterdir() if re.match(r"^\.(step_\d+)\.old-", p.name)]:
        final = root / old.name[1:].split(".old-")[0]
        if not final.exists():  # killed between the two renames of a replacement: the old one is the checkpoint
            old.rename(final)
    marks = (".tmp-", ".old-", ".del-")
    stale = [p for p in root.iterdir() if p.name.startswith(".") and any(m in p.name for m in marks)]
    stale += [p for p in root.iterdir() if p.name.startswith(".resumed-")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale

"""Loggers: a tidy CSV (step,name,value) and TensorBoard (imported lazily). Metric names: docs/metrics.md."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Protocol, TextIO


class Logger(Protocol):
    """Receives every step's metrics. A run that rolls back (AutoNPO) takes a :meth:`mark` with each snapshot and
    :meth:`rewind` s to it, so the log describes the trajectory the run kept."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def mark(self, step: int) -> Any: ...
    def rewind(self, mark: Any) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """Discards everything."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def mark(self, step: int) -> Any:
        return None

    def rewind(self, mark: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _reopen(path: Path, at: int | None, newline: str | None = None) -> TextIO:
    """``path`` opened for writing: a new file, or (``at`` = a size recorded by :meth:`position` in a checkpoint)
    the existing file cut back to that size, for appending, so a resumed run's rows follow the checkpoint's."""
    if at is None:
        return path.open("w", newline=newline)
    if not path.is_file() or path.stat().st_size < at:
        raise ValueError(f"cannot resume {path}: it is missing or shorter ({at} bytes were written before)")
    with path.open("r+b") as f:
        f.truncate(at)
    return path.open("a", newline=newline)


class MemoryLogger:
    """Keeps every logged metric in memory (notebooks, tests): ``rows`` in logging order, ``series(name)``.

    >>> log = MemoryLogger(); log.log({"reward/mean": 0.5}, 1); log.log({"reward/mean": 0.7}, 2)
    >>> log.series("reward/mean")
    ([1, 2], [0.5, 0.7])
    """

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def mark(self, step: int) -> int:
        return len(self.rows)

    def rewind(self, mark: int) -> None:
        """Forget what was logged after :meth:`mark` (a rollback)."""
        del self.rows[mark:]

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, in logging order (``lookahead/*`` metrics count look-ahead steps)."""
        pts = [(s, m[name]) for s, m in self.rows if name in m]
        return [s for s, _ in pts], [v for _, v in pts]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class CSVLogger:
    """Appends ``step,name,value`` rows to ``path`` (long format: every metric, whenever it is logged).

    ``resume_at``: continue a file at the size :meth:`position` returned when a checkpoint was written."""

    def __init__(self, path: str | Path, resume_at: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = _reopen(self.path, resume_at, newline="")
        self._w = csv.writer(self._f)
        if resume_at is None:
            self._w.writerow(["step", "name", "value"])

    def position(self) -> int:
        """Flush and return the file's size (what a checkpoint records to resume from)."""
        self._f.flush()
        os.fsync(self._f.fileno())  # on disk before a checkpoint records the size
        return os.fstat(self._f.fileno()).st_size

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k in sorted(metrics):
            v = float(metrics[k])
            self._w.writerow([step, k, repr(v) if math.isfinite(v) else str(v)])

    def mark(self, step: int) -> int:
        """The file's size now (a plain int: a checkpoint can keep it)."""
        self._f.flush()
        return os.fstat(self._f.fileno()).st_size

    def rewind(self, mark: int) -> None:
        """Cut the file back to :meth:`mark`: the rows of a rolled-back segment go (the replay writes them again)."""
        self._f.flush()
        os.ftruncate(self._f.fileno(), mark)
        self._f.seek(0, os.SEEK_END)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoardLogger:
    """Scalars to TensorBoard event files (``tensorboard --logdir <run dir>``).

    ``lookahead/*`` metrics count NPO's look-ahead steps, not training steps, so they go to a run of their own
    (``<run dir>/lookahead``). ``purge_step`` / ``lookahead_purge_step`` (a resumed run): TensorBoard hides what
    earlier processes logged at or after these steps, which the resumed run logs again."""

    def __init__(
        self, logdir: str | Path, purge_step: int | None = None, lookahead_purge_step: int | None = None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is slow to import

        self._w = SummaryWriter(str(logdir), purge_step=purge_step)
        self._la = SummaryWriter(str(Path(logdir) / "lookahead"), purge_step=lookahead_purge_step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            (self._la if k.startswith("lookahead/") else self._w).add_scalar(k, float(v), step)

    def mark(self, step: int) -> int:
        return step

    def rewind(self, mark: int) -> None:
        """TensorBoard cannot cut its files: a new writer hides every training step after ``mark`` (purge_step), as
        a resumed run does; the look-ahead run is left as it is."""
        from torch.utils.tensorboard import SummaryWriter

        logdir = self._w.log_dir
        self._w.close()
        self._w = SummaryWriter(logdir, purge_step=mark + 1)

    def flush(self) -> None:
        self._w.flush()
        self._la.flush()

    def close(self) -> None:
        self._w.close()
        self._la.close()


class MultiLogger:
    """Fans out to several loggers."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = loggers

    def log(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def mark(self, step: int) -> list[Any]:
        return [lg.mark(step) for lg in self.loggers]

    def rewind(self, mark: list[Any]) -> None:
        for lg, m in zip(self.loggers, mark):
            lg.rewind(m)

    def flush(self) -> None:
        for lg in self.loggers:
            lg.flush()

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


class EventLog:
    """The decisions a guide source takes (interventions, AutoNPO's candidate scores, replay-pool builds), as
    they happen: ``events.jsonl`` (one JSON object per line) and ``events.log`` (one readable line each)."""

    def __init__(self, folder: str | Path, resume_at: tuple[int, int] | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._json = _reopen(folder / "events.jsonl", resume_at[0] if resume_at else None)
        self._text = _reopen(folder / "events.log", resume_at[1] if resume_at else None)

    def position(self) -> tuple[int, int]:
        """Flush and return both files' sizes (see :meth:`CSVLogger.position`)."""
        for f in (self._json, self._text):
            f.flush()
            os.fsync(f.fileno())
        return os.fstat(self._json.fileno()).st_size, os.fstat(self._text.fileno()).st_size

    def __call__(self, event: dict) -> None:
        import json

        self._json.write(json.dumps(event, default=str) + "\n")
        self._text.write(format_event(event) + "\n")
        self._json.flush()
        self._text.flush()

    def close(self) -> None:
        self._json.close()
        self._text.close()


def format_event(ev: dict) -> str:
    """One readable line, e.g. ``step 120 intervention (stagnation): pool 64; delta 5: Q 0.31 V 1.02 S 0.30 ...``."""
    head = f"step {ev.get('step', '?')} {ev.get('kind', 'event')}"
    if "reason" in ev:
        head += f" ({ev['reason']})"
    parts = []
    for k, v in ev.items():
        if k in ("step", "kind", "reason"):
            continue
        if k == "candidates" and isinstance(v, dict):
            for d, sc in v.items():
                parts.append(f"delta {d}: Q {sc['q']:.3f} V {sc['v']:.3f} S {sc['s']:.3f}")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        else:
            parts.append(f"{k} {v}")
    return head + (": " + "; ".join(parts) if parts else "")

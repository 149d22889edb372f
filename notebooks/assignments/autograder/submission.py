"""Load a student's submission: run its code cells into a fresh module, leaving out the self-check and demo cells.

A submission is a Jupyter notebook (``.ipynb``) or a percent-format Python file (``# %%`` cells; a plain
script is one cell). Its code cells run in order in one module namespace, each with a time limit; a cell that
raises is recorded and the next one still runs, so one broken cell costs only the functions it defines.
Cells tagged ``selfcheck`` or ``demo`` (or whose first line starts with ``# Self-check``) are skipped: they call
the student's functions and compare them with npo_lab, which is the autograder's job. IPython magics and shell
lines (``%...``, ``!...``) are skipped too.

This is the student's own code running in the grading process: run the autograder in a subprocess (grade.py
does) and, for submissions you do not trust, inside a container.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import traceback
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SKIP_TAGS = {"selfcheck", "demo"}
NOTEBOOK_SUFFIXES = (".ipynb", ".py")
_HEADER = re.compile(r"^# %%(?P<rest>.*)$")
_TAGS = re.compile(r"tags=\[(?P<tags>[^\]]*)\]")
_MAGIC = re.compile(r"^(\s*)[%!]")


class GradingTimeout(BaseException):
    """Raised by the time limit. A BaseException, so a student's ``except Exception`` cannot swallow it."""


@contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise :class:`GradingTimeout` in the main thread after ``seconds`` (no limit without SIGALRM: Windows)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise GradingTimeout(f"{what} took longer than {seconds:g} s (an infinite loop?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Cell:
    index: int  # position among the notebook's cells (0-based), for messages
    source: str
    tags: list[str] = field(default_factory=list)


def read_code_cells(path: Path) -> list[Cell]:
    """The code cells of a notebook or percent-format file, in order."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        nb = json.loads(text)
        cells = []
        for i, c in enumerate(nb.get("cells", [])):
            if c.get("cell_type") != "code":
                continue
            src = c.get("source", "")
            tags = c.get("metadata", {}).get("tags", [])
            cells.append(Cell(i, "".join(src) if isinstance(src, list) else str(src), tags))
        return cells
    cells, lines, tags, markdown = [], [], [], False
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            if lines and not markdown:
                cells.append(Cell(len(cells), "\n".join(lines), tags))
            rest = m.group("rest")
            tm = _TAGS.search(rest)
            tags = [t.strip().strip("'\"") for t in tm.group("tags").split(",")] if tm else []
            markdown, lines = "[markdown]" in rest, []
        else:
            lines.append(line)
    if lines and not markdown:
        cells.append(Cell(len(cells), "\n".join(lines), tags))
    return cells


def notebook_assignment(path: Path) -> str | None:
    """The assignment a notebook says it is (metadata written by make.py), or None."""
    if path.suffix != ".ipynb":
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return None
    name = meta.get("npo_lab", {}).get("assignment") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


def matches(path: Path, assignment: str) -> bool:
    """Whether ``path`` is a submission of ``assignment`` (e.g. ``a1_group_advantages``): by the notebook's
    metadata, else by its file name (the full name, or the short id ``a1`` as a word of the name)."""
    if path.suffix not in NOTEBOOK_SUFFIXES:
        return False
    meta = notebook_assignment(path)
    if meta is not None:
        return meta == assignment
    stem = path.stem.lower()
    short = assignment.split("_", 1)[0]
    return assignment in stem or short in re.split(r"[^a-z0-9]+", stem)


def find_notebook(where: Path, assignment: str) -> Path | None:
    """``where`` itself if it is a file, else the one file under the folder ``where`` that is ``assignment``
    (an .ipynb preferred over a .py; checkpoints and hidden files ignored)."""
    if where.is_file():
        return where

    def visible(p: Path) -> bool:  # not under .ipynb_checkpoints, .git, ...
        return not any(part.startswith(".") for part in p.relative_to(where).parts)

    found = [p for p in sorted(where.rglob("*")) if p.is_file() and visible(p) and matches(p, assignment)]
    found.sort(key=lambda p: (p.suffix != ".ipynb", len(p.parts), str(p)))
    return found[0] if found else None


@dataclass
class Submission:
    """A loaded submission: its module and the errors of the cells that raised."""

    path: Path
    module: types.ModuleType
    errors: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        # only called for names that are not fields: the student's functions and classes
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(self.module, name)
        except AttributeError:
            msg = f"`{name}` is not defined in {self.path.name}"
            if self.errors:
                msg += " (cells that raised while loading:\n" + "\n".join(self.errors) + ")"
            raise NameError(msg) from None


def _without_magics(src: str) -> str:
    return "\n".join(_MAGIC.sub(r"\1pass  # ", line) if _MAGIC.match(line) else line for line in src.splitlines())


def load_submission(path: Path, cell_timeout: float | None = 30.0) -> Submission:
    """Run the graded code cells of ``path`` into a new module named ``student_submission``."""
    module = types.ModuleType("student_submission")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # dataclasses and pickling look classes up by module name
    sub = Submission(path, module)
    for cell in read_code_cells(path):
        first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
        if SKIP_TAGS & set(cell.tags) or first.lower().startswith("# self-check"):
            continue
        where = f"cell {cell.index}"
        try:
            with time_limit(cell_timeout, f"{path.name}, {where}"):
                exec(compile(_without_magics(cell.source), f"<{path.name} {where}>", "exec"), module.__dict__)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 (SystemExit and timeouts in student code are errors too)
            tb = traceback.extract_tb(e.__traceback__)
            line = next((f" (line {fr.lineno}: {fr.line})" for fr in reversed(tb) if fr.filename.startswith("<")), "")
            sub.errors.append(f"  {where}: {type(e).__name__}: {e}{line}")
    return sub

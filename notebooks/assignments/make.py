"""Generate the student and instructor notebooks of every assignment from its one source file.

    python notebooks/assignments/make.py            # write student/*.ipynb and instructor/*.ipynb
    python notebooks/assignments/make.py --check    # exit 1 if a committed notebook differs from its source
    python notebooks/assignments/make.py a1_group_advantages --out /some/folder   # one assignment, elsewhere

A source (``source/<assignment>.py``) is a percent-format Python file, runnable as it is (it is the solution):

* ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell (its lines are comments: ``# `` is
  stripped), ``# %% tags=["selfcheck"]`` a code cell with tags (any cell header may carry ``tags=[...]``).
* In a code cell, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` are the answer: the
  instructor version keeps them (without the marker lines), the student version replaces them with
  ``raise NotImplementedError`` at the same indentation (the nbgrader convention).
* Tags: ``selfcheck`` (a cell that compares the student's function with npo_lab; shown to both, skipped by the
  autograder's loader), ``demo`` (an ungraded cell that uses the student's functions; idem), ``instructor``
  (only in the instructor version: answers to discussion questions, notes on common mistakes), ``student``
  (only in the student version).

The output is deterministic (fixed cell ids, no outputs, ``execution_count`` null), so the committed notebooks
can be checked against their sources (``--check``, and ``tests/test_assignments.py``).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "source"
VERSIONS = ("student", "instructor")
KNOWN_TAGS = ("selfcheck", "demo", "instructor", "student")
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError")
_HEADER = re.compile(r"^# %%(?P<rest>.*)$")
_TAGS = re.compile(r"tags=\[(?P<tags>[^\]]*)\]")

BANNER = {
    "student": (
        "> **Student version** of `{name}`, generated from `notebooks/assignments/source/{name}.py` by\n"
        "> `notebooks/assignments/make.py`. Replace every `raise NotImplementedError` with your code, run the\n"
        "> self-check cell under each exercise, and hand in this `.ipynb` file. Keep the function names and\n"
        "> signatures: the autograder calls them by name."
    ),
    "instructor": (
        "> **Instructor version** of `{name}` (solutions), generated from\n"
        "> `notebooks/assignments/source/{name}.py` by `notebooks/assignments/make.py`. Do not hand this one out;\n"
        "> the student version is `notebooks/assignments/student/{name}.ipynb`. Grading: docs/teaching.md."
    ),
}


@dataclass
class Cell:
    kind: str  # "code" or "markdown"
    lines: list[str]
    tags: list[str] = field(default_factory=list)
    line_no: int = 0  # 1-based line of the cell header in the source (for error messages)


def parse_source(text: str, name: str = "<source>") -> list[Cell]:
    """Split a percent-format source into cells; text before the first ``# %%`` must be blank."""
    cells: list[Cell] = []
    for no, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            rest = m.group("rest")
            tm = _TAGS.search(rest)
            tags = [t.strip().strip("'\"") for t in tm.group("tags").split(",") if t.strip()] if tm else []
            bad = [t for t in tags if t not in KNOWN_TAGS]
            if bad:
                raise ValueError(f"{name}:{no}: unknown cell tag(s) {bad}; known: {list(KNOWN_TAGS)}")
            kind = "markdown" if "[markdown]" in rest else "code"
            cells.append(Cell(kind, [], tags, no))
        elif cells:
            cells[-1].lines.append(line)
        elif line.strip():
            raise ValueError(f"{name}:{no}: text before the first '# %%' cell marker")
    for c in cells:
        while c.lines and not c.lines[0].strip():
            c.lines.pop(0)
        while c.lines and not c.lines[-1].strip():
            c.lines.pop()
    return [c for c in cells if c.lines]


def _markdown(cell: Cell, name: str) -> str:
    out = []
    for i, line in enumerate(cell.lines):
        if line == "#" or line.startswith("# "):
            out.append(line[2:])
        else:
            raise ValueError(f"{name}:{cell.line_no + i + 1}: a markdown line must start with '# ' (got {line!r})")
    return "\n".join(out)


def _code(cell: Cell, version: str, name: str) -> str:
    """The cell's code for ``version``: solution blocks kept (markers dropped) or replaced by the stub."""
    out: list[str] = []
    inside = False
    for i, line in enumerate(cell.lines):
        stripped = line.strip()
        where = f"{name}:{cell.line_no + i + 1}"
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}: nested {BEGIN}")
            inside = True
            if version == "student":
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(indent + s for s in STUB)
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}: {END} without {BEGIN}")
            inside = False
        elif "SOLUTION" in stripped and stripped.startswith("###"):
            raise ValueError(f"{where}: malformed solution marker {stripped!r}")
        elif not inside or version == "instructor":
            out.append(line)
    if inside:
        raise ValueError(f"{name}:{cell.line_no}: {BEGIN} without {END}")
    return "\n".join(out)


def render(source: Path, version: str) -> str:
    """The notebook JSON (as written to disk) of ``version`` (student or instructor) of one source."""
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    name = source.stem
    cells = parse_source(source.read_text(encoding="utf-8"), source.name)
    if not any(BEGIN in line for c in cells for line in c.lines):
        raise ValueError(f"{source.name}: no {BEGIN} block: nothing for a student to write")
    nb_cells = [new_markdown_cell(BANNER[version].format(name=name))]
    for c in cells:
        if ("instructor" in c.tags and version != "instructor") or ("student" in c.tags and version != "student"):
            continue
        meta = {"tags": [t for t in c.tags if t not in VERSIONS]} if set(c.tags) - set(VERSIONS) else {}
        if c.kind == "markdown":
            nb_cells.append(new_markdown_cell(_markdown(c, source.name), metadata=meta))
        else:
            code = _code(c, version, source.name)
            ast.parse(code, filename=f"{source.name} ({version}, cell at line {c.line_no})")
            nb_cells.append(new_code_cell(code, metadata=meta))
    prefix = name.split("_", 1)[0]
    for i, c in enumerate(nb_cells):
        c["id"] = f"{prefix}-{i:02d}"  # deterministic ids: regenerating gives identical files
    nb = new_notebook(
        cells=nb_cells,
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "npo_lab": {"assignment": name, "version": version},
        },
    )
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def assignments() -> list[str]:
    """Names of every assignment (the stems of ``source/*.py``), sorted."""
    return sorted(p.stem for p in SOURCES.glob("a*.py"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="assignments to build (default: all of source/*.py)")
    ap.add_argument("--out", type=Path, default=HERE, help="folder that receives student/ and instructor/")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook differs")
    args = ap.parse_args(argv)
    names = args.names or assignments()
    unknown = sorted(set(names) - set(assignments()))
    if unknown:
        ap.error(f"unknown assignment(s) {unknown}; known: {assignments()}")
    stale = []
    for name in names:
        for version in VERSIONS:
            text = render(SOURCES / f"{name}.py", version)
            dest = args.out / version / f"{name}.ipynb"
            old = dest.read_text(encoding="utf-8") if dest.exists() else ""
            if args.check:
                if old != text:
                    stale.append(dest)
                    diff = difflib.unified_diff(old.splitlines(), text.splitlines(), str(dest), "new", lineterm="")
                    print("\n".join(list(diff)[:40]))
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if old != text:
                dest.write_text(text, encoding="utf-8", newline="\n")
                print(f"wrote {dest}")
    if stale:
        print(f"{len(stale)} notebook(s) differ from their sources; run: python notebooks/assignments/make.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the six tutorials in notebooks/ from their cell sources in scripts/notebook_cells/ (and back).

The committed .ipynb files are the artifact (outputs stripped); the cell sources are where they are edited and
reviewed as plain text. tests/test_notebooks.py checks that the two agree.

    .venv/bin/python scripts/make_notebooks.py          # write notebooks/NN_*.ipynb from the cell sources
    .venv/bin/python scripts/make_notebooks.py --check  # exit 1 if a committed notebook differs from its source
    .venv/bin/python scripts/make_notebooks.py --pull   # the other way: cell sources from the notebooks (after
                                                        # editing one in Jupyter, or `ruff format notebooks`);
                                                        # outputs are dropped, so run the first command after it

Each module scripts/notebook_cells/nbNN.py holds one notebook: ``FILENAME`` and ``CELLS``, a list of
``("md", text)`` and ``("code", source)`` pairs.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CELLS_DIR = Path(__file__).resolve().parent / "notebook_cells"
NOTEBOOKS_DIR = ROOT / "notebooks"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
INDENT = " " * 8


def _load(path: Path) -> tuple[str, list[tuple[str, str]]]:
    spec = importlib.util.spec_from_file_location(f"_nb_cells_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FILENAME, mod.CELLS


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook (nbformat 4) with the given cells, no outputs, deterministic cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    for i, (kind, text) in enumerate(cells):
        src = textwrap.dedent(text).strip("\n")
        if kind == "md":
            cell = nbformat.v4.new_markdown_cell(src)
        elif kind == "code":
            cell = nbformat.v4.new_code_cell(src)
        else:
            raise ValueError(f"cell {i}: kind must be 'md' or 'code', got {kind!r}")
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating gives byte-identical files
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def notebooks() -> dict[str, str]:
    """{file name: rendered notebook text} for every module in scripts/notebook_cells/."""
    out = {}
    for path in sorted(CELLS_DIR.glob("nb*.py")):
        name, cells = _load(path)
        out[name] = render(build(cells))
    return out


def pull(path: Path) -> str:
    """The cells module ``path`` rewritten with the cells of its notebook (header kept, outputs dropped)."""
    text = path.read_text()
    name = re.search(r'^FILENAME = "(.+)"$', text, re.M)
    if name is None:
        raise ValueError(f"{path}: no FILENAME line")
    nb = nbformat.read(NOTEBOOKS_DIR / name.group(1), as_version=4)
    parts = [text[: text.index("CELLS = [")], "CELLS = [\n"]
    for cell in nb.cells:
        if cell.cell_type not in ("markdown", "code"):
            raise ValueError(f"{name.group(1)}: {cell.cell_type} cells are not supported")
        if '"""' in cell.source:
            raise ValueError(f'{name.group(1)}: a cell contains """, which the cells module cannot hold')
        kind = "md" if cell.cell_type == "markdown" else "code"
        body = textwrap.indent(cell.source, INDENT)
        parts.append(f'    (\n        "{kind}",\n        r"""\n{body}\n{INDENT}""",\n    ),\n')
    parts.append("]\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only compare with the committed notebooks")
    mode.add_argument("--pull", action="store_true", help="rewrite the cell sources from the notebooks")
    args = p.parse_args(argv)
    if args.pull:
        for path in sorted(CELLS_DIR.glob("nb*.py")):
            path.write_text(pull(path))
            print(f"wrote scripts/notebook_cells/{path.name}")
        return 0
    stale = []
    for name, text in notebooks().items():
        path = NOTEBOOKS_DIR / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote notebooks/{name}")
    if stale:
        print("out of date (run scripts/make_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

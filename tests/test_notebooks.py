"""The tutorials in notebooks/: each executes headless; every committed notebook has no outputs.

Each tutorial runs in a fresh ``python3`` kernel (ipykernel starts it with this interpreter, so the venv's npo_lab is
the one imported) in a temporary working directory, with the Agg matplotlib backend and one thread per numeric
library. The notebooks carry their own ``assert`` cells for the claims their text makes, so executing them tests
those claims too. How long they take is a benchmark (``benchmarks/notebook_times.py``, docs/benchmarks.md), not a test:
hosts differ several-fold in speed, so the only time limit here is a hang guard.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TUTORIALS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
COMMITTED = sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
"""Every notebook under notebooks/ (Jupyter's autosave copies in .ipynb_checkpoints/ are git-ignored)."""
HANG_GUARD_S = 1800
"""Per-cell limit that only a hung kernel reaches: the slowest whole notebook takes under a minute on the project's
2-core machine (docs/benchmarks.md), so 30 minutes per cell is far beyond any host's speed."""


def test_the_seven_tutorials_exist():
    assert [p.name[:3] for p in TUTORIALS][:7] == ["01_", "02_", "03_", "04_", "05_", "06_", "07_"], TUTORIALS


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(NOTEBOOKS)))
def test_committed_notebook_has_no_outputs(path):
    """Outputs are stripped in git: no outputs and no execution counts in any notebook under notebooks/."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs (strip them before committing)"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


def test_tutorials_match_their_generator():
    """The tutorials are written by scripts/make_notebooks.py from scripts/notebook_cells/; they must agree."""
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    expected = gen.notebooks()
    assert sorted(expected) == [p.name for p in TUTORIALS]
    stale = [name for name, text in expected.items() if (NOTEBOOKS / name).read_text() != text]
    assert not stale, f"run scripts/make_notebooks.py: {stale} differ from their cell sources"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_executes(path, tmp_path, monkeypatch):
    # the kernel is a separate process: it inherits these (headless plots; CI has 2 cores, and the test process
    # waits while the kernel works, so one thread each for torch/OpenMP/MKL is both fast and fair)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # checkpoints and the tiny model's folder land here
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=HANG_GUARD_S,  # per cell: a hang guard, not a speed budget
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellTimeoutError as e:
        raise AssertionError(
            f"{path.name}: a cell ran for {HANG_GUARD_S} s, the hang guard (not a speed budget): the kernel is stuck"
        ) from e

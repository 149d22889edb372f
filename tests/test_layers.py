"""The package's layers import only downwards, and no module imports itself in a circle.

Every ``import`` statement of npo_lab, npo_lab.envs (folder envs/) and npo_lab.llm (folder llm/) is parsed, at
module level and inside functions alike, so a lazy import cannot hide a dependency or close a cycle. The layers,
lowest first (docs/algorithm.md, "How the code is laid out"):

    base         npo_lab.{batch, backend, config, registry, utils, metrics, checkpoint}, npo_lab.core, npo_lab.tasks
    train        npo_lab.train        (the state, one GRPO step, look-ahead and rollback, the loop)
    methods      npo_lab.methods      (GRPO, NPO, AutoNPO, LUFFY, ExGRPO, RLEP)
    backends     npo_lab.envs | npo_lab.llm   (never each other)
    experiments  npo_lab.experiments  (backend-neutral: no backend)
    cli          npo_lab.cli, npo_lab.__main__   (the composition root: names the backends)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"npo_lab": ROOT / "npo_lab", "npo_lab.envs": ROOT / "envs", "npo_lab.llm": ROOT / "llm"}

ALLOWED = {  # layer -> the layers its modules may import
    "base": {"base"},
    "train": {"base", "train"},
    "methods": {"base", "train", "methods"},
    "envs": {"base", "train", "methods", "envs"},
    "llm": {"base", "train", "methods", "llm"},
    "experiments": {"base", "train", "methods", "experiments"},
    "cli": {"base", "train", "methods", "envs", "llm", "experiments", "cli"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[:2] in (["npo_lab", "envs"], ["npo_lab", "llm"]):
        return parts[1]
    if len(parts) > 1 and parts[1] in ("train", "methods", "experiments", "cli"):
        return parts[1]
    if module == "npo_lab.__main__":
        return "cli"
    return "base"


def modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    found = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if name.startswith("npo_lab.") and name.split(".")[1] in ("envs", "llm") and folder == PACKAGES["npo_lab"]:
                continue  # not a real folder of npo_lab/
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported npo_lab module, line) for every import statement in ``path``, wherever it stands."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "npo_lab"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "npo_lab":
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            for a in node.names:  # `from npo_lab.x import y` imports the module npo_lab.x.y when it is one
                sub = f"{node.module}.{a.name}"
                out.append((sub if sub in known else node.module, node.lineno))
    return [(m, line) for m, line in out if m in known]


GRAPH = {name: imports_of(path, set(modules())) for name, path in modules().items()}


def test_every_module_is_seen():
    names = set(GRAPH)
    for expected in ("npo_lab.train.loop", "npo_lab.methods.npo", "npo_lab.envs.gym_backend", "npo_lab.llm.backend"):
        assert expected in names
    assert len(names) > 50


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_only_downwards(module):
    mine = layer_of(module)
    wrong = [
        f"line {line}: {dep} ({layer_of(dep)})" for dep, line in GRAPH[module] if layer_of(dep) not in ALLOWED[mine]
    ]
    assert not wrong, f"{module} ({mine}) imports a layer above it or beside it: {wrong}"


def find_cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Tarjan's strongly connected components: each component of more than one module (or a module that imports
    itself) is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(d == v for d, _ in graph[v]):
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    assert find_cycles(GRAPH) == [], "import cycles"


def test_the_checks_catch_a_violation(tmp_path):
    """Both checks fail on a made-up upward import inside a function, and on a made-up cycle."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from npo_lab.cli import main  # inside a function: still an import\n")
    deps = imports_of(bad, set(GRAPH))
    assert deps == [("npo_lab.cli", 2)] and layer_of("npo_lab.cli") not in ALLOWED["train"]
    circle = {**GRAPH, "npo_lab.train.step": [*GRAPH["npo_lab.train.step"], ("npo_lab.train.loop", 1)]}
    assert ["npo_lab.train.loop", "npo_lab.train.step"] in find_cycles(circle)


def test_every_package_is_installed():
    """pyproject lists every package of the tree explicitly (the package-dir mapping needs it): a folder missing from
    the list would be absent from a wheel, though an editable install would hide it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for pkg, folder in PACKAGES.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found.add(".".join([pkg, *rel]))
    assert found == listed, (sorted(found - listed), sorted(listed - found))


def _source(path: Path) -> str:
    """A file's Python source; for a notebook, its code cells (IPython's % and ! lines left out)."""
    if path.suffix != ".ipynb":
        return path.read_text()
    import json

    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n".join(line for cell in code for line in cell.splitlines() if not line.lstrip().startswith(("%", "!")))


@pytest.mark.parametrize("folder", ["benchmarks", "scripts", "notebooks"])
def test_every_npo_lab_name_the_scripts_import_exists(folder):
    """The benchmark scripts, the notebook sources and the teaching files import npo_lab names that exist (a module
    that moves must take its users along; nothing else runs these scripts in the suite)."""
    import importlib

    missing = []
    for path in sorted([*(ROOT / folder).rglob("*.py"), *(ROOT / folder).rglob("*.ipynb")]):
        for node in ast.walk(ast.parse(_source(path), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "npo_lab"):
                continue
            if node.module.startswith("npo_lab.llm"):
                pytest.importorskip("transformers")
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name) and f"{node.module}.{alias.name}" not in set(GRAPH):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing, missing

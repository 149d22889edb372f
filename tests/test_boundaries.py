"""The core imports neither gymnasium nor transformers; envs/ and llm/ never import each other."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE_MODULES = [
    "npo_lab",
    "npo_lab.batch",
    "npo_lab.backend",
    "npo_lab.config",
    "npo_lab.core.advantages",
    "npo_lab.core.losses",
    "npo_lab.core.kl",
    "npo_lab.core.guidance",
    "npo_lab.core.signal",
    "npo_lab.metrics",
    "npo_lab.checkpoint",
    "npo_lab.tasks.arithmetic",
    "npo_lab.train",
    "npo_lab.methods",
    "npo_lab.experiments.compare",
    "npo_lab.experiments.report",
    "npo_lab.experiments.qvs",
    "npo_lab.experiments.stats",
    "npo_lab.experiments.toy",
]


def loaded_after_import(modules):
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    return set(json.loads(out.stdout))


def heavy(mods):
    return {m for m in mods if m.split(".")[0] in ("gymnasium", "gym", "transformers")}


def test_core_imports_neither_gymnasium_nor_transformers():
    mods = loaded_after_import(CORE_MODULES)
    assert not heavy(mods), heavy(mods)
    assert not {m for m in mods if m.startswith(("npo_lab.envs", "npo_lab.llm"))}


def test_cli_module_stays_light():
    """Building --help needs only the config dataclasses: no torch, no backend."""
    mods = loaded_after_import(["npo_lab.cli"])
    assert not heavy(mods)
    assert (
        "torch" not in mods
        and "npo_lab.envs.arithmetic_backend" not in mods
        and "npo_lab.envs.gym_backend" not in mods
    )


@pytest.mark.llm
def test_llm_never_imports_envs_or_gymnasium():
    mods = loaded_after_import(
        [
            "npo_lab.llm.config",
            "npo_lab.llm.model",
            "npo_lab.llm.data",
            "npo_lab.llm.synthetic",
            "npo_lab.llm.rewards",
            "npo_lab.llm.dist",
            "npo_lab.llm.backend",
            "npo_lab.llm.plan",
            "npo_lab.llm.vllm_engine",
        ]
    )
    assert not {m for m in mods if m.startswith("npo_lab.envs") or m.split(".")[0] in ("gymnasium", "gym")}


def test_llm_config_is_standard_library_only():
    """The CLI builds --help from npo_lab.llm.config: it must not pull torch or transformers."""
    mods = loaded_after_import(["npo_lab.llm.config"])
    assert not heavy(mods) and "torch" not in mods


def test_envs_never_import_llm_or_transformers():
    mods = loaded_after_import(
        [
            "npo_lab.envs",
            "npo_lab.envs.arithmetic_backend",
            "npo_lab.envs.charlm",
            "npo_lab.envs.gym_envs",
            "npo_lab.envs.gym_backend",
        ]
    )
    assert not {m for m in mods if m.startswith("npo_lab.llm") or m.split(".")[0] == "transformers"}


@pytest.mark.parametrize(
    "folder,forbidden",
    [
        ("npo_lab", ("gymnasium", "transformers", "npo_lab.envs", "npo_lab.llm")),
        ("envs", ("transformers", "npo_lab.llm")),
        ("llm", ("gymnasium", "npo_lab.envs")),
    ],
)
def test_source_has_no_forbidden_imports(folder, forbidden):
    """A grep backstop for imports hidden inside functions (the subprocess test only sees module level).
    npo_lab/cli/ is the composition root and the one package allowed to name a backend."""
    for path in (ROOT / folder).rglob("*.py"):
        if folder == "npo_lab" and "cli" in path.relative_to(ROOT / folder).parts[:1]:
            continue
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                assert not any(f" {f}" in s or s.startswith(f"from {f}") for f in forbidden), f"{path}: {s}"
        assert ".cuda(" not in path.read_text(), f"{path} hard-codes CUDA"

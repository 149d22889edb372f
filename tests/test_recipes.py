"""Every shipped recipe loads into the command it is written for, with every value validated (a renamed field, a
value the config refuses, or a recipe for the wrong command fails here, not on a user's GPU)."""

import tomllib
from pathlib import Path

import pytest

from npo_lab.cli import load_config_file
from npo_lab.cli.compare import CompareCommand
from npo_lab.cli.train import TrainCommand

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def test_the_recipes_are_found():
    assert {p.name for p in RECIPES} >= {"qwen3vl_8b_paper.toml", "tiny_cpu.toml", "tiny_reason.toml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_a_recipe_loads_into_its_command(path):
    raw = tomllib.loads(path.read_text())
    command = CompareCommand if "methods" in raw else TrainCommand  # a comparison names its methods, a run one method
    cfg = load_config_file(command, str(path))
    assert cfg.backend == raw["backend"] and cfg.steps == raw["steps"]
    assert_holds(cfg, raw, "")


def assert_holds(obj, values: dict, prefix: str) -> None:
    """Every value written in the file is the value the loaded config holds ([llm.data] tables included)."""
    for key, value in values.items():
        held = getattr(obj, key)
        if isinstance(value, dict):
            assert_holds(held, value, f"{prefix}{key}.")
        else:
            assert held == value or (isinstance(held, tuple) and list(held) == value), f"{prefix}{key}: {held!r}"


def test_a_recipe_with_a_bad_value_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "qwen-vl"\nsteps = 4\n[grpo]\ngroup_size = 0\n')
    with pytest.raises(ValueError, match="grpo.group_size"):
        load_config_file(TrainCommand, str(bad))

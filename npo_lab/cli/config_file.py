"""Config files: a TOML or JSON file with the same names as the command's flags, nested sections for the groups
(``[task]``, ``[model]``, ``[grpo]``, ``[npo]``, ...), read into the command's dataclass with every key and type
checked; and back (``config.json`` of a run is such a file)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from nested ``data``; unknown keys are rejected with the nearest valid name."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or '<top>'} must be a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        full = f"{where}{k}"
        if k not in names:
            near = difflib.get_close_matches(k, sorted(names), n=1)
            hint = f"; did you mean '{where}{near[0]}'?" if near else ""
            raise ValueError(f"unknown config key {full!r}{hint} (valid keys here: {', '.join(sorted(names))})")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, value, f"{full}.")
        else:
            kwargs[k] = _typed(value, tp, full)
    return cls(**kwargs)


def _typed(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against the field type ``tp`` (int, float, bool, str, Literal, tuple[int, ...])."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"config key {name!r} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        if typing.get_args(tp)[0] is str:  # tuple[str, ...]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"config key {name!r} must be a list of strings, got {value!r}")
            return tuple(value)
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"config key {name!r} must be a list of integers, got {value!r}")
        return tuple(value)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if tp in ok and not ok[tp](value):
        raise ValueError(f"config key {name!r} must be of type {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


def load_config_file(cls: type, path: str, **overrides: Any) -> Any:
    """Read a TOML (.toml) or JSON (.json) config file into ``cls`` (top-level ``overrides`` replace its keys)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {path} must end in .toml or .json")
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"config file {path} could not be parsed: {e}") from e
    return from_dict(cls, {**data, **overrides})


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a JSON-able nested dict (the format ``--config`` reads back)."""
    d = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return list(x)
        return x

    return fix(d)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

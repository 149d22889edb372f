"""``npo-lab``: the command line, and the composition root (the only package that names a backend).

    npo-lab compare [--config FILE] [flags]   methods over seeds -> report.md, curves.png, results.json
    npo-lab train   [--config FILE] [flags]   one method, one seed -> metrics.csv, events, TensorBoard, checkpoints
    npo-lab qvs     [--config FILE] [flags]   Q, V, S of near-future, past and teacher sources -> qvs.png, qvs.json
    npo-lab benefit-map [--preset NAME] [--config FILE] [flags]
                                              regimes x methods x seeds: when the near future helps -> map.md, map.png

Every flag comes from a typed, documented config field (``--help`` lists them). ``--config`` reads a TOML or
JSON file with the same names (nested sections ``[task]``, ``[model]``, ``[grpo]``, ``[npo]``, ``[autonpo]``,
``[luffy]``, ``[exgrpo]``, ``[rlep]``); flags given on the command line override the file.

One module per command (:mod:`.compare`, :mod:`.train`, :mod:`.qvs`, :mod:`.benefit_map`); what they share is in
:mod:`.common`, the config-file reader in :mod:`.config_file`. Importing this package needs no torch (``--help``
stays fast): the commands import the training modules when they run.
"""

from __future__ import annotations

import difflib
import shlex
import signal
import sys
from collections.abc import Callable
from typing import Any

from npo_lab.cli.benefit_map import PRESETS, BenefitMapCommand, run_benefit_map
from npo_lab.cli.common import ExperimentConfig, backend_factory, check_backend, dry_run, run_label
from npo_lab.cli.compare import CompareCommand, run_compare
from npo_lab.cli.config_file import flatten, from_dict, load_config_file, to_dict
from npo_lab.cli.qvs import QVSCommand, run_qvs
from npo_lab.cli.train import RESUME_MAY_CHANGE, TrainCommand, check_resume_config, resume_target, run_train

COMMANDS: dict[str, type] = {
    "compare": CompareCommand,
    "train": TrainCommand,
    "qvs": QVSCommand,
    "benefit-map": BenefitMapCommand,
}
RUNNERS: dict[str, Callable[..., Any]] = {
    "compare": run_compare,
    "train": run_train,
    "qvs": run_qvs,
    "benefit-map": run_benefit_map,
}


def parse(command: str, argv: list[str]) -> Any:
    """Parse ``argv`` (after the sub-command) into the command's config, honouring ``--config FILE``."""
    import tyro  # lazy: only a parse needs it

    cls = COMMANDS[command]
    default = None
    resume = _flag_value(argv, "--resume") if command == "train" else None
    if resume and _flag_value(argv, "--config") is None:  # a resumed run's config is its own config.json
        run_dir, _ = resume_target(resume)
        default = load_config_file(cls, str(run_dir / "config.json"), resume=resume)
    rest: list[str] = []
    preset = _flag_value(argv, "--preset") if command == "benefit-map" else None
    if preset is not None:  # a named starting point; --config and flags override it
        if preset not in PRESETS:
            near = difflib.get_close_matches(preset, list(PRESETS), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"--preset: unknown preset {preset!r}{hint}; choose one of {list(PRESETS)}")
        default = from_dict(cls, {**PRESETS[preset], "preset": preset})
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--preset" and preset is not None and i + 1 < len(argv):
            i += 2
            continue
        if a.startswith("--preset=") and preset is not None:
            i += 1
            continue
        if a == "--config" and i + 1 < len(argv):
            default = load_config_file(cls, argv[i + 1])
            i += 2
            continue
        if a.startswith("--config="):
            default = load_config_file(cls, a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    kwargs: dict[str, Any] = {"prog": f"npo-lab {command}", "args": rest}
    if default is not None:
        kwargs["default"] = default
    cfg = tyro.cli(cls, **kwargs)
    if resume:
        check_resume_config(cfg)
    return cfg


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``argv`` (``--flag X`` or ``--flag=X``), or None."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


USAGE = __doc__ or ""


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        near = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        print(f"npo-lab: unknown command {command!r}{hint}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        cfg = parse(command, rest)
        check_backend(cfg)
    except (ValueError, TypeError) as e:  # config validation: stop before any work, naming the field
        print(f"npo-lab {command}: error: {e}", file=sys.stderr)
        return 2
    if cfg.dry_run:
        print(dry_run(cfg))
        return 0
    # a terminated run (SIGTERM) unwinds like Ctrl-C, so worker processes are stopped and files closed
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if command == "train":
            run_train(cfg)
        else:  # compare, qvs, benefit-map: their reports name the command that reproduces them
            RUNNERS[command](cfg, shlex.join(["npo-lab", command, *argv[1:]]))
    except KeyboardInterrupt:
        msg = "interrupted; the files written so far are kept and no worker is left running"
        print(f"npo-lab {command}: {msg}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # e.g. an unreadable --previous, a NaN loss
        print(f"npo-lab {command}: error: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "COMMANDS",
    "PRESETS",
    "BenefitMapCommand",
    "RESUME_MAY_CHANGE",
    "CompareCommand",
    "ExperimentConfig",
    "QVSCommand",
    "TrainCommand",
    "backend_factory",
    "check_backend",
    "check_resume_config",
    "dry_run",
    "flatten",
    "from_dict",
    "load_config_file",
    "main",
    "parse",
    "resume_target",
    "run_label",
    "to_dict",
]

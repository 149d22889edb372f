"""Exact resume: a run killed with SIGKILL anywhere (inside NPO's look-ahead, between checkpoints, in the middle
of writing one) and resumed each time ends with the weights, optimizer, RNGs, metrics and events of the same run
left alone."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli, run_guarded

from npo_lab.checkpoint import FolderHandle, latest_checkpoint, list_checkpoints, load_checkpoint

WORKER = Path(__file__).with_name("kill_worker.py")
TINY = [
    *("--task.digits", "2", "--task.n-train", "128", "--task.n-eval", "32"),
    *("--model.warm-steps", "30", "--model.d-model", "32", "--model.n-head", "2"),
    *("--grpo.batch-size", "16", "--grpo.group-size", "4", "--eval-every", "4"),
    *("--threads", "1", "--no-tensorboard", "--keep-checkpoints", "2"),
]
METHODS = {
    # a look-ahead of 2 steps every 4 steps: about a third of all steps are look-ahead steps
    "npo": ["--method", "npo", "--npo.interventions", "0", "--npo.every", "4", "--npo.delta", "2"],
    # retrospective AutoNPO warned at every chance (cooldown 6): rollbacks of 2 or 4 steps, snapshots every 2 steps;
    # a longer warm start (the later flag wins) so that pi_t solves some probed prompts and has answers to teach
    # (without them no rollback happens): rollbacks at steps 4 (to 0), 10 and 16 in 20 steps
    "autonpo": [
        *("--method", "autonpo", "--autonpo.candidates", "2", "4", "--autonpo.snapshot-every", "2"),
        *("--autonpo.cooldown", "6", "--autonpo.window", "3", "--autonpo.smoothing", "1.0"),
        *("--autonpo.stagnation-slope", "1.0", "--autonpo.entropy-slope", "1.0", "--autonpo.max-interventions", "0"),
        *("--autonpo.q-samples", "8", "--model.warm-steps", "200"),
    ],
    # the earlier reading: bootstrap triggers at every chance (cooldown 3), two candidates scored on the pool
    "autonpo-lookahead": [
        *("--method", "autonpo", "--autonpo.mode", "lookahead", "--autonpo.candidates", "1", "2"),
        *("--autonpo.cooldown", "3", "--autonpo.bootstrap-floor", "1.0", "--autonpo.bootstrap-until", "100"),
        *("--autonpo.max-interventions", "0", "--autonpo.q-samples", "2", "--autonpo.window", "3"),
    ],
}
TIMING = {"wall_s", "lookahead_s", "lookahead_seconds", "seconds", "created", "extra"}
"""Keys whose values are wall-clock times (or file positions of logs holding them): the only things allowed to
differ between an interrupted and an uninterrupted run."""


def train(args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000", "KILL_AT": kill or ""}
    return run_guarded([sys.executable, str(WORKER), "train", *args], capture_output=True, text=True, env=env)


def comparable(x, where: str = ""):
    """``x`` with timings dropped and tensors / checkpoint folders turned into comparable values."""
    if isinstance(x, FolderHandle):
        folder = Path(x["path"])
        return {"files": {p.name: p.read_bytes() for p in sorted(folder.iterdir())}, "rng": comparable(x.get("rng"))}
    if isinstance(x, dict) and "ring" in x:  # the snapshot ring's log marks are file sizes, which hold timings
        x = {**x, "ring": [[s, snap] for s, snap, _ in x["ring"]]}
    if isinstance(x, dict):
        return {k: comparable(v, f"{where}.{k}") for k, v in x.items() if k not in TIMING}
    if isinstance(x, list | tuple):
        return [comparable(v, where) for v in x]
    if torch.is_tensor(x):
        return (str(x.dtype), tuple(x.shape), comparable(x.flatten().tolist()))
    if isinstance(x, float) and x != x:
        return "nan"  # NaN != NaN; a NaN where the other run has one is the same
    return x


def metrics_rows(run: Path) -> list[tuple[str, str, str]]:
    with (run / "metrics.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    return [tuple(r) for r in rows if not (r[1].startswith("time/") or r[1].endswith("_s"))]


def events(run: Path) -> list[dict]:
    return [comparable(json.loads(line)) for line in (run / "events.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    """Final weights, optimizer, RNGs, source state, metrics, events and results of two run folders are equal."""
    ca, cb = latest_checkpoint(a / "checkpoints"), latest_checkpoint(b / "checkpoints")
    assert ca is not None and cb is not None and ca.name == cb.name
    da, db = load_checkpoint(ca), load_checkpoint(cb)
    for key in ("step", "policy", "optimizer", "rng", "sampler", "ref_policy", "loop"):
        assert comparable(da[key]) == comparable(db[key]), key
    assert metrics_rows(a) == metrics_rows(b)
    assert events(a) == events(b)
    ra, rb = (comparable(json.loads((r / "result.json").read_text())) for r in (a, b))
    assert ra == rb


def only_run(out: Path) -> Path:
    (run,) = list(out.iterdir())
    return run


@pytest.mark.parametrize("method", ["npo", "autonpo", "autonpo-lookahead"])
def test_sigkill_anywhere_then_resume_equals_the_uninterrupted_run(method, tmp_path):
    args = [*TINY, *METHODS[method], "--steps", "20", "--checkpoint-every", "3"]
    r = train([*args, "--out", str(tmp_path / "straight")])
    assert r.returncode == 0, r.stderr
    straight = only_run(tmp_path / "straight")
    extra = sum(json.loads((straight / "result.json").read_text())["intervention_costs"])
    assert extra >= 8  # look-ahead windows (or rolled-back segments) are frequent enough to be hit

    rng = random.Random(f"kills-{method}")
    # retrospective AutoNPO never looks ahead: its extra steps are the first pass of a segment it rolls back
    inside = "lookahead" if method != "autonpo" else "step"
    kills = [
        f"{inside}:{rng.randint(1, 2)}",  # inside a look-ahead window
        f"step:{rng.randint(2, 6)}",  # between two checkpoints: the steps since the last one are redone
        f"write:{rng.randint(1, 6)}",  # in the middle of a checkpoint file (state.pt, manifest or latest)
        f"{inside}:{rng.randint(1, 2)}",
        f"write:{rng.randint(1, 6)}",
        f"step:{rng.randint(1, 4)}",
    ]
    r = train([*args, "--out", str(tmp_path / "killed")], kill=kills[0])
    assert r.returncode == -9, (kills[0], r.returncode, r.stderr[-2000:])
    run = only_run(tmp_path / "killed")
    for kill in kills[1:]:
        r = train(["--resume", str(run)], kill=kill)
        assert r.returncode == -9, (kill, r.returncode, r.stderr[-2000:])
    r = train(["--resume", str(run)])
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout
    assert_same_run(straight, run)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert len(list_checkpoints(run / "checkpoints")) == 2  # keep_checkpoints

    # resuming a finished run changes nothing (no extra step, no extra evaluation)
    r = train(["--resume", str(run)])
    assert r.returncode == 0, r.stderr
    assert_same_run(straight, run)


def resume_in_process(tmp_path: Path, args: list[str], cut: int) -> tuple[Path, Path]:
    """Run ``args`` straight through; copy its folder, drop every checkpoint after step ``cut`` (as if the process
    had died just after writing it) and resume the copy. Returns both run folders."""
    from npo_lab.cli import main

    assert main(["train", *args, "--checkpoint-every", "1", "--keep-checkpoints", "0", "--out", str(tmp_path)]) == 0
    straight = only_run(tmp_path)
    copy = tmp_path.parent / (tmp_path.name + "-resumed")
    shutil.copytree(straight, copy)
    for p in list_checkpoints(copy / "checkpoints"):
        if int(p.name.split("_")[1]) > cut:
            shutil.rmtree(p)
    assert main(["train", "--resume", str(copy)]) == 0
    return straight, copy


@pytest.mark.parametrize(
    "method",
    [
        # the KL term (reference policy), a warm-up + cosine learning-rate schedule and several minibatches
        [
            *("--method", "grpo", "--grpo.kl-coef", "0.05", "--grpo.lr-schedule", "cosine"),
            *("--grpo.lr-warmup-steps", "3", "--grpo.minibatch-size", "8", "--grpo.epochs", "2"),
        ],
        ["--method", "luffy"],
        ["--method", "exgrpo", "--exgrpo.start-solve-rate", "0.0"],  # the replay pool is in use from the start
        ["--method", "rlep", "--rlep.source-steps", "4"],  # the pool of a previous run, restored (not re-decoded)
        # the weights copied at step 4 for the extrapolated intervention at step 6 are in the checkpoint of step 5
        ["--method", "npo:future=extrapolate:extrapolate_k=2:delta=3:interventions=0+6"],
    ],
    ids=["grpo-kl-cosine", "luffy", "exgrpo", "rlep", "npo-extrapolate"],
)
def test_every_method_resumes_exactly(method, tmp_path):
    straight, resumed = resume_in_process(tmp_path / "out", [*TINY, *method, "--steps", "10"], cut=5)
    assert_same_run(straight, resumed)


def test_gym_backend_resumes_exactly(tmp_path):
    args = [
        *("--backend", "gym", "--env", "npo_lab/ChainEasy-v0", "--grpo.batch-size", "16", "--grpo.group-size", "4"),
        *("--method", "npo", "--npo.interventions", "0", "4", "--npo.delta", "2", "--steps", "9", "--eval-every", "3"),
        *("--threads", "1", "--no-tensorboard"),
    ]
    straight, resumed = resume_in_process(tmp_path / "out", args, cut=4)
    assert_same_run(straight, resumed)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("train", *args)


def test_resume_refuses_what_it_cannot_honour(tmp_path):
    args = [*TINY, *METHODS["npo"], "--steps", "6", "--checkpoint-every", "1", "--keep-checkpoints", "0"]
    r = _cli(*args, "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    run = only_run(tmp_path / "out")
    # a setting that changes the trajectory
    r = _cli("--resume", str(run), "--grpo.lr", "0.1")
    assert r.returncode == 2 and "grpo.lr (0.0003 -> 0.1)" in r.stderr and "may change only" in r.stderr
    r = _cli("--resume", str(run), "--steps", "10")  # the schedule and NPO's windows depend on the length
    assert r.returncode == 2 and "steps (6 -> 10)" in r.stderr
    # not a run
    r = _cli("--resume", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "neither a run folder" in r.stderr
    # a damaged newest checkpoint: named, with the newest intact one to resume from instead
    state = run / "checkpoints" / "step_000006" / "state.pt"
    state.write_bytes(state.read_bytes()[:-1])
    r = _cli("--resume", str(run))
    assert r.returncode == 1, r.stderr
    assert f"{state} is truncated or altered" in r.stderr
    assert f"--resume {run / 'checkpoints' / 'step_000005'}" in r.stderr


def test_resume_from_an_older_checkpoint_sets_the_later_ones_aside(tmp_path):
    args = [*TINY, *METHODS["npo"], "--steps", "6"]
    straight, copy = resume_in_process(tmp_path / "out", args, cut=6)  # all checkpoints kept
    from npo_lab.cli import main

    assert main(["train", "--resume", str(copy / "checkpoints" / "step_000002")]) == 0
    aside = [p for p in (copy / "checkpoints").iterdir() if p.name.startswith("superseded-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir())[0] == "step_000003"
    assert_same_run(straight, copy)


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar TensorBoard shows for ``folder`` (purged events hidden), by tag and step; timings left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder))
    ea.Reload()
    tags = [t for t in ea.Tags()["scalars"] if not t.startswith("time/") and not t.endswith("_s")]
    return {t: {e.step: e.value for e in ea.Scalars(t)} for t in tags}


def test_tensorboard_of_a_resumed_run_shows_every_step_once(tmp_path):
    args = [a for a in TINY if a != "--no-tensorboard"] + [*METHODS["npo"], "--steps", "9"]
    straight, resumed = resume_in_process(tmp_path / "out", args, cut=5)
    a, b = tensorboard_scalars(straight), tensorboard_scalars(resumed)
    assert a == b and len(a["reward/on_policy_mean"]) == 9
    la, lb = tensorboard_scalars(straight / "lookahead"), tensorboard_scalars(resumed / "lookahead")
    assert la == lb and len(la["lookahead/reward/on_policy_mean"]) == 6  # interventions at 0, 4, 8; delta 2


def test_a_resumed_rlep_run_needs_no_previous_run(tmp_path):
    """rlep's pool is in its checkpoints: the checkpoint it was decoded from may be gone when the run resumes."""
    from npo_lab.cli import main

    assert main(["train", *TINY, "--method", "grpo", "--steps", "3", "--out", str(tmp_path / "prev")]) == 0
    prev = latest_checkpoint(only_run(tmp_path / "prev") / "checkpoints")
    args = [*TINY, "--method", "rlep", "--previous", str(prev), "--steps", "6", "--checkpoint-every", "1"]
    assert main(["train", *args, "--out", str(tmp_path / "out")]) == 0
    run = only_run(tmp_path / "out")
    shutil.rmtree(prev.parent.parent)  # the previous run is gone
    for p in list_checkpoints(run / "checkpoints")[1:]:
        shutil.rmtree(p)
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "result.json").read_text())["final_accuracy"] >= 0.0


def test_a_run_folder_in_use_is_not_resumed(tmp_path, capsys):
    from npo_lab.cli import main
    from npo_lab.cli.train import _lock_run_folder

    assert main(["train", *TINY, *METHODS["npo"], "--steps", "2", "--out", str(tmp_path)]) == 0
    run = only_run(tmp_path)
    held = _lock_run_folder(run)  # as a process still training in that folder holds it
    assert main(["train", "--resume", str(run)]) == 1
    assert f"run folder {run} is in use by another npo-lab process" in capsys.readouterr().err
    held.close()
    assert main(["train", "--resume", str(run)]) == 0
    # the run's config.json is its own config, reusable as --config: it does not say "resume"
    assert json.loads((run / "config.json").read_text())["resume"] == ""


def test_a_checkpoint_of_the_earlier_layout_resumes_exactly(tmp_path):
    """Checkpoints written before the methods moved to npo_lab.methods kept the intervention counters inside the
    method's state, under the loop key "source" (the same format string). Rewrite one into that layout; the run
    resumed from it equals the run left alone."""
    import torch

    from npo_lab.checkpoint import STATE_FILE, save_checkpoint
    from npo_lab.cli import main

    args = [*TINY, *METHODS["npo"], "--steps", "9", "--checkpoint-every", "1", "--keep-checkpoints", "0"]
    assert main(["train", *args, "--out", str(tmp_path / "straight")]) == 0
    straight = only_run(tmp_path / "straight")
    copy = tmp_path / "old-layout"
    shutil.copytree(straight, copy)
    for p in list_checkpoints(copy / "checkpoints"):
        if int(p.name.split("_")[1]) > 5:
            shutil.rmtree(p)
    ckpt = copy / "checkpoints" / "step_000005"
    doc = torch.load(ckpt / STATE_FILE, weights_only=True)
    loop = doc["loop"]
    assert loop["interventions"] == [0, 4]  # step 5 follows two interventions: their counters must survive
    old_source = {
        **loop.pop("method"),
        "interventions": loop.pop("interventions"),
        "intervention_costs": loop.pop("intervention_costs"),
        "lookahead_seconds": loop.pop("lookahead_s"),
    }
    doc["loop"] = {**loop, "source": old_source}
    shutil.rmtree(ckpt)
    save_checkpoint(copy / "checkpoints", 5, doc)
    assert main(["train", "--resume", str(copy)]) == 0
    assert_same_run(straight, copy)


def test_a_run_resumed_in_the_middle_of_a_replayed_segment_equals_the_run_left_alone(tmp_path):
    """Retrospective AutoNPO rolled back from t to s and was replaying [s, t) when the process died: the snapshot
    ring, the cache of pi_t's answers and the guided window come back with the checkpoint."""
    args = [*TINY, *METHODS["autonpo"], "--steps", "14"]
    from npo_lab.cli import main

    assert (
        main(["train", *args, "--checkpoint-every", "1", "--keep-checkpoints", "0", "--out", str(tmp_path / "a")]) == 0
    )
    straight = only_run(tmp_path / "a")
    ev = [json.loads(line) for line in (straight / "events.jsonl").read_text().splitlines()]
    rolled = [e for e in ev if e["kind"] == "intervention" and e["delta"] is not None and e["delta"] >= 4]
    assert rolled, [e["kind"] for e in ev]
    t, delta = rolled[0]["step"], rolled[0]["delta"]
    cut = t - delta + 2  # two steps into the replay of [t - delta, t)
    copy = tmp_path / "b"
    shutil.copytree(straight, copy)
    for p in list_checkpoints(copy / "checkpoints"):
        if int(p.name.split("_")[1]) > cut:
            shutil.rmtree(p)
    doc = load_checkpoint(latest_checkpoint(copy / "checkpoints"))
    loop = doc["loop"]
    assert doc["step"] == cut and loop["method"]["start"] <= cut < loop["method"]["until"] and loop["ring"]
    assert loop["method"]["cache"], "the replay is guided by a cache of pi_t's answers"
    assert main(["train", "--resume", str(copy)]) == 0
    assert_same_run(straight, copy)

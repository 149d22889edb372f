"""The command line: bad input stops before any work; compare and train write what they promise."""

import json
import os
import subprocess
import sys

import pytest
from helpers import HANG_GUARD_S, run_cli

TINY = [
    "--task.digits",
    "2",
    "--task.n-train",
    "128",
    "--task.n-eval",
    "32",
    "--model.warm-steps",
    "10",
    "--model.d-model",
    "32",
    "--model.n-head",
    "2",
    "--grpo.batch-size",
    "16",
    "--grpo.group-size",
    "4",
]
RETRO_LENIENT = [  # retrospective AutoNPO fires as soon as a window of two steps is full (these tests steer when)
    *("--autonpo.candidates", "2", "--autonpo.snapshot-every", "2", "--autonpo.window", "2"),
    *("--autonpo.smoothing", "1.0", "--autonpo.stagnation-slope", "1.0", "--autonpo.entropy-slope", "1.0"),
    *("--autonpo.max-interventions", "1", "--autonpo.q-samples", "4"),
]


def cli(*args, cwd=None):
    return run_cli(*args, cwd=cwd)


@pytest.mark.parametrize(
    "args,field",
    [
        (["--grpo.group-size", "1"], "grpo.group_size"),
        (["--grpo.batch-size", "30", "--grpo.group-size", "8"], "grpo.batch_size"),
        (["--npo.gate", "1.5"], "npo.gate"),
        (["--npo.gate", "-0.1"], "npo.gate"),
        (["--npo.delta", "0"], "npo.delta"),
        (["--npo.delta", "-3"], "npo.delta"),
        (["--methods", "grpo,ppo"], "methods"),
        (["--methods", "grpo,npo:delat=3"], "methods"),
        (["--methods", "grpo,npo:delta=0"], "npo.delta"),
        (["--task.name", "gsm8k"], "task.name"),
        (["--task.operation", "div"], "task.operation"),
        (["--methods", "grpo,luffy:delta=3"], "methods"),
        (["--autonpo.candidates", "0", "5"], "autonpo.candidates"),
        (["--autonpo.v-estimator", "kl"], "autonpo.v-estimator"),
        (["--luffy.gate", "2"], "luffy.gate"),
        (["--exgrpo.experience-ratio", "1"], "exgrpo.experience_ratio"),
        (["--rlep.replay-per-group", "0"], "rlep.replay_per_group"),
        (["--model.teacher-style", "latex"], "model.teacher_style"),
    ],
)
def test_bad_input_stops_before_any_work(tmp_path, args, field):
    out = tmp_path / "out"
    r = cli("compare", "--out", str(out), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    msg = (r.stderr + r.stdout).lower()
    # the error names the field (tyro reports choice errors with the flag spelling)
    assert field.replace("_", "-") in msg.replace("_", "-"), msg
    assert not out.exists()  # nothing was started


def test_unknown_config_key_suggests_the_nearest(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("seeds = 2\n[npo]\ndelat = 5\n")
    r = cli("compare", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "npo.delat" in r.stderr and "npo.delta" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "text,msg",
    [
        ('seeds = "4"\n', "'seeds' must be of type int"),
        ("[npo]\ninterventions = [0, 1.5]\n", "'npo.interventions' must be a list of integers"),
        ('[grpo]\nadvantage = "ppo"\n', "'grpo.advantage' must be one of"),
        ('[npo]\nguide_source = "online"\nguide_slots = 8\n', "npo.guide_slots must be < grpo.group_size=8"),
        ("[npo]\nguide_slots = 2\n", "npo.guide_slots must be 1 with npo.guide_source='cache'"),
        ("[task\ndigits = 3\n", "could not be parsed"),
    ],
)
def test_bad_config_file_values(tmp_path, text, msg):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    r = cli("compare", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_train_previous_is_checked_before_any_work(tmp_path):
    r = cli("train", "--method", "npo", "--previous", "x.pt", "--out", str(tmp_path / "o"))
    assert (
        r.returncode == 2 and "previous must be empty unless --method is rlep" in r.stderr
    )  # (tyro wraps the message in a box)
    r = cli("train", "--method", "rlep", "--previous", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "o").exists()


def test_gym_backend_errors_list_what_is_supported(tmp_path):
    r = cli("compare", "--backend", "gym", "--env", "npo_lab/Nope-v0", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown environment id 'npo_lab/Nope-v0'" in r.stderr
    assert "npo_lab/Chain-v0" in r.stderr and "npo_lab/KeyDoor-v0" in r.stderr
    r = cli("train", "--backend", "gym", "--env", "Pendulum-v1", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Pendulum-v1 has action space Box" in r.stderr
    assert not (tmp_path / "o").exists()


def test_compare_and_train_on_the_gym_backend(tmp_path):
    gym_args = ["--backend", "gym", "--env", "npo_lab/ChainEasy-v0", "--gym.hidden", "16", "--gym.n-train", "32"]
    gym_args += ["--grpo.batch-size", "16", "--grpo.group-size", "4", "--npo.delta", "2", "--npo.interventions", "0"]
    six = ["--gym.teacher-steps", "3", *RETRO_LENIENT]
    r = cli(  # all six methods (the default list) on the gym backend
        "compare",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--seeds",
        "2",
        "--workers",
        "1",
        "--bootstrap",
        "200",
        "--out",
        str(tmp_path / "cmp"),
        *gym_args,
        *six,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert list(doc["methods"]) == ["grpo", "npo", "autonpo", "luffy", "exgrpo", "rlep"]
    assert doc["methods"]["npo"]["lookahead_steps"] == 2 and doc["methods"]["autonpo"]["per_seed"][0]["interventions"]
    saved = json.loads((tmp_path / "cmp" / "config.json").read_text())
    assert saved["backend"] == "gym" and saved["env"] == "npo_lab/ChainEasy-v0"
    r = cli(
        "train",
        "--method",
        "grpo",
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--no-tensorboard",
        "--out",
        str(tmp_path / "tr"),
        *gym_args,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "tr").iterdir()
    assert run.name.startswith("npo_lab-ChainEasy-v0__grpo__0__") and (run / "metrics.csv").exists()


def test_unknown_command():
    r = cli("trian")
    assert r.returncode == 2 and "did you mean 'train'" in r.stderr


def test_help_is_generated_from_documented_fields():
    r = cli("compare", "--help")
    assert r.returncode == 0
    for flag in (
        "--methods",
        "--seeds",
        "--out",
        "--steps",
        "--task.digits",
        "--task.operation",
        "--grpo.group-size",
        "--npo.delta",
        "--npo.gate",
        "--npo.guide-loss",
    ):
        assert flag in r.stdout
    assert "[paper: 0.6" in r.stdout  # provenance of a default is part of its help


def test_compare_writes_report_curves_and_results(tmp_path):
    out = tmp_path / "cmp"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"npo": {"delta": 2, "interventions": [0, 3]}, "eval_every": 3}))
    r = cli(
        "compare",
        "--methods",
        "grpo,npo,npo:delta=1",
        "--config",
        str(cfg),
        "--steps",
        "6",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--workers",
        "2",
        "--bootstrap",
        "200",
        *TINY,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["methods"]) == {"grpo", "npo", "npo:delta=1"} and 0.0 <= doc["target_accuracy"] <= 1.0
    for res in doc["methods"].values():
        assert set(res["final_accuracy"]) == {"median", "ci95", "iqm", "iqm_ci95"}
        lo, hi = res["final_accuracy"]["ci95"]
        assert lo <= res["final_accuracy"]["median"] <= hi
        lo, hi = res["final_accuracy"]["iqm_ci95"]
        assert lo <= res["final_accuracy"]["iqm"] <= hi
        assert set(res["steps_to_target"]) == {"median", "ci95", "iqm", "iqm_ci95"}
        assert res["wall_s"] > 0 and len(res["per_seed"]) == 2
        assert [s for s, _ in res["per_seed"][0]["evals"]] == [0, 3, 6]
    assert doc["methods"]["grpo"]["lookahead_steps"] == 0
    assert doc["methods"]["npo"]["lookahead_steps"] == 4  # 2 interventions x delta 2
    assert doc["methods"]["npo"]["per_seed"][0]["interventions"] == [0, 3]
    assert doc["methods"]["npo:delta=1"]["lookahead_steps"] == 2  # the variant's own delta
    assert (out / "runs" / "npo_delta-1__seed0" / "metrics.csv").exists()
    report = (out / "report.md").read_text()
    assert "Sparse early success" in report and "Late plateau" in report
    assert set(doc["methods"]["grpo"]["regimes"]) == {
        "early_train_reward",
        "early_zero_std_groups",
        "gain_first_quarter",
        "gain_last_quarter",
    }
    assert "| grpo |" in report and "| npo |" in report
    assert "npo-lab compare --methods grpo,npo,npo:delta=1 --config" in report
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # config.json reproduces the run: it is accepted back by --config
    saved = json.loads((out / "config.json").read_text())
    assert saved["npo"]["delta"] == 2 and saved["steps"] == 6
    from npo_lab.cli import CompareCommand, load_config_file

    again = load_config_file(CompareCommand, str(out / "config.json"))
    assert again.npo.interventions == (0, 3) and again.task.digits == 2 and again.methods == "grpo,npo,npo:delta=1"
    assert (out / "runs" / "npo__seed1" / "metrics.csv").exists()


def test_compare_runs_all_six_methods(tmp_path):
    out = tmp_path / "six"
    r = cli(
        "compare",
        "--steps",
        "8",
        "--eval-every",
        "4",
        "--seeds",
        "2",
        "--workers",
        "1",
        "--bootstrap",
        "200",
        "--out",
        str(out),
        "--model.teacher-steps",
        "30",
        "--npo.delta",
        "2",
        "--npo.interventions",
        "0",
        "4",
        *RETRO_LENIENT,
        "--exgrpo.start-solve-rate",
        "0.0",
        "--rlep.decode-samples",
        "2",
        *TINY,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    methods = ["grpo", "npo", "autonpo", "luffy", "exgrpo", "rlep"]
    assert list(doc["methods"]) == methods  # the default method list, baseline first
    for m in methods:
        res = doc["methods"][m]
        assert len(res["per_seed"]) == 2 and 0.0 <= res["auc"]["median"] <= 1.0
        if m != "grpo":
            poi = res["prob_improvement"]["final_accuracy"]
            assert 0.0 <= poi["ci95"][0] <= poi["point"] <= poi["ci95"][1] <= 1.0
    assert doc["methods"]["grpo"]["prob_improvement"]["final_accuracy"]["point"] == 0.5  # vs itself
    auto = doc["methods"]["autonpo"]["per_seed"][0]
    # the warning fires at step 2, but the barely warm-started policy solves none of the probed prompts: nothing to
    # teach, so no rollback (the gym test below sees one through the CLI)
    assert auto["interventions"] == [] and auto["intervention_costs"] == []
    assert doc["methods"]["rlep"]["per_seed"][0]["prior_steps"] == 8
    events = (out / "runs" / "autonpo__seed0" / "events.log").read_text()
    assert "step 2 skipped (plateau): why pi_t has no verified answer" in events and "delta 2: Q 0.000" in events
    assert (
        json.loads((out / "runs" / "rlep__seed0" / "events.jsonl").read_text().splitlines()[0])["kind"] == "rlep_pool"
    )
    report = (out / "report.md").read_text()
    assert "IQM" in report and "P(improve)" in report and "| luffy |" in report
    assert "previous GRPO run of 8 steps" in report


def test_qvs_measures_every_source(tmp_path):
    out = tmp_path / "qvs"
    r = cli(
        "qvs",
        "--steps",
        "4",
        "--at",
        "0",
        "4",
        "--deltas",
        "-2",
        "1",
        "3",
        "--seeds",
        "2",
        "--workers",
        "1",
        "--probe",
        "24",
        "--k",
        "4",
        "--model.teacher-steps",
        "30",
        "--out",
        str(out),
        *TINY,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "qvs.json").read_text())
    assert set(doc["summary"]) == {"0", "4"}
    assert set(doc["summary"]["0"]) == {"+1", "+3", "teacher"}  # no past checkpoint at step 0
    assert set(doc["summary"]["4"]) == {"-2", "+1", "+3", "teacher"}
    for rec in doc["records"]:
        assert rec["q"] != rec["q"] or 0.0 <= rec["q"] <= 1.0
        if rec["v"] == rec["v"]:
            assert rec["v"] >= 1.0 and rec["v_log_ratio"] >= 1.0  # the floor is the on-policy cost
    assert (out / "qvs.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 4 | teacher |" in (out / "qvs.md").read_text()


def test_train_logs_csv_tensorboard_and_checkpoints(tmp_path):
    r = cli(
        "train",
        "--method",
        "npo",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
        "--npo.delta",
        "1",
        "--npo.interventions",
        "0",
        "--out",
        str(tmp_path),
        *TINY,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = list(tmp_path.iterdir())
    assert run.name.startswith("arith__npo__0__")
    csv = (run / "metrics.csv").read_text().splitlines()
    assert csv[0] == "step,name,value"
    names = {line.split(",")[1] for line in csv[1:]}
    assert {"eval/accuracy", "reward/on_policy_mean", "policy/entropy", "npo/intervention", "time/rollout"} <= names
    assert list(run.glob("events.out.tfevents.*"))
    from npo_lab.checkpoint import list_checkpoints, load_checkpoint

    ckpts = list_checkpoints(run / "checkpoints")
    assert [c.name for c in ckpts] == ["step_000002", "step_000004"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000004"
    doc = load_checkpoint(ckpts[-1])
    assert doc["step"] == 4 and "weights" in doc["policy"] and doc["loop"]["finished"]
    result = json.loads((run / "result.json").read_text())
    assert result["lookahead_steps"] == 1 and len(result["evals"]) == 3


def test_sigterm_stops_compare_workers(tmp_path):
    """A terminated comparison leaves no worker processes running (they would eat the CPU of later runs)."""
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "npo_lab",
            "compare",
            "--steps",
            "2000",
            "--seeds",
            "2",
            "--workers",
            "2",
            "--out",
            str(tmp_path / "o"),
            *TINY,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def children():
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def alive(pids):
        live = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            if state != "Z":  # a zombie has exited; only its parent's reaping is pending
                live.append(pid)
        return live

    kids: list[int] = []
    try:
        deadline = time.time() + HANG_GUARD_S  # a hang guard: the workers start in seconds
        while len(kids) < 3 and proc.poll() is None and time.time() < deadline:  # a manager and two workers
            time.sleep(0.5)
            kids = children()
        assert len(kids) >= 3, f"the comparison never started its workers (exit code {proc.poll()})"
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=HANG_GUARD_S) == 130
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"hang guard: the comparison did not stop within {HANG_GUARD_S} s of SIGTERM") from e
        deadline = time.time() + HANG_GUARD_S  # a hang guard: the resource tracker exits once its last client is gone
        while alive(kids) and time.time() < deadline:
            time.sleep(0.5)
        assert not alive(kids), f"orphaned workers: {alive(kids)}"
    finally:  # whatever happened, leave nothing running
        for pid in alive(kids + [proc.pid]):
            os.kill(pid, signal.SIGKILL)

"""FSDP2 on 2 CPU processes (torchrun, gloo): the NPO loop runs on a sharded tiny Qwen3-VL, every parameter
trains, and both ranks end with the same weights and the same metrics."""

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import run_guarded

pytestmark = pytest.mark.llm
pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
REWARD_MODULE = '''
def sparse_length(prompts, completions, **columns):
    """1 for about a third of the rows: most groups fall below the gate, so guide rows are needed."""
    return [float(len(c) % 3 == 0) for c in completions]
'''


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"],
    # the shipped accelerate config, with the process count overridden (accelerate runs torch.distributed.run)
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(HERE.parents[1] / "configs" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2",
                   "--main_process_port", "29518"],
}  # fmt: skip


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_fsdp2_npo_steps_on_two_cpu_processes(tmp_path, launcher):
    (tmp_path / "npo_test_rewards.py").write_text(REWARD_MODULE)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [*LAUNCHERS[launcher], str(HERE / "fsdp_worker.py"), str(tmp_path)]
    out = run_guarded(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["sharded_params"] > 0 and r0["sharded_params"] == r0["model_params"]  # every parameter is a DTensor
    assert r0["changed"] == r0["n_params"], r0  # every trainable parameter changed
    assert r0["checksum"] == r1["checksum"]  # one model, not two diverging copies
    assert r0["interventions"] == r1["interventions"] == [0] and r0["lookahead_steps"] == 1
    assert len(r0["rows"]) == len(r1["rows"]) > 0
    for a, b in zip(r0["rows"], r1["rows"]):
        for k in ("loss/total", "reward/on_policy_mean", "policy/grad_norm"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
                assert a[k] == a[k]  # finite, not NaN
    assert any(r.get("guide/rows", 0) > 0 for r in r0["rows"])

"""Learning claims checked by learning: GRPO on the default arithmetic task beats its warm start."""

import pytest
import torch
from npo_lab.envs.arithmetic_backend import ArithmeticBackend
from npo_lab.envs.config import TinyLMConfig

from npo_lab.config import AutoNPOConfig, GRPOConfig, MethodConfigs, NPOConfig, RunConfig
from npo_lab.methods import make_method
from npo_lab.tasks.arithmetic import ArithmeticConfig
from npo_lab.train import make_state, train
from npo_lab.utils import seed_everything


def run(method: str, steps: int, seed: int = 0, task: ArithmeticConfig | None = None, **npo_kw):
    seed_everything(seed)
    be = ArithmeticBackend(task or ArithmeticConfig(), TinyLMConfig(), seed=seed)
    g = GRPOConfig()
    st = make_state(be, g, seed)
    auto = AutoNPOConfig(
        candidates=(2,), snapshot_every=2, window=2, smoothing=1.0, stagnation_slope=1.0, entropy_slope=1.0
    )  # a warning as soon as two steps are observed: the run must roll back
    cfgs = MethodConfigs(npo=NPOConfig(**npo_kw), autonpo=auto)
    source = make_method(method, cfgs, steps, grpo=g, seed=seed)
    run_cfg = RunConfig(steps=steps, eval_every=20, final_evals=2)
    return train(st, source, run_cfg, g, be.evaluate, seed=seed), be


@pytest.mark.slow
def test_grpo_raises_eval_accuracy_above_the_warm_start():
    res, _ = run("grpo", 100)
    start = res.evals[0][1]
    assert 0.0 < start < 0.3, f"warm start should give low but non-zero accuracy, got {start}"
    assert res.final_accuracy >= start + 0.1, res.evals


@pytest.mark.slow
@pytest.mark.parametrize("method", ["npo", "autonpo"])
def test_training_is_deterministic_for_a_seed(method):
    task = ArithmeticConfig(digits=2, n_train=256, n_eval=64)
    a, be_a = run(method, 6, seed=3, task=task, delta=2, interventions=(0, 3))
    b, be_b = run(method, 6, seed=3, task=task, delta=2, interventions=(0, 3))
    assert a.interventions, "the run should have intervened at least once"

    def decisions(events):  # everything but the timings
        return [{k: v for k, v in e.items() if k != "seconds"} for e in events]

    assert a.evals == b.evals and a.interventions == b.interventions
    assert decisions(a.events) == decisions(b.events)
    assert all(torch.equal(x, y) for x, y in zip(be_a.parameters(), be_b.parameters()))

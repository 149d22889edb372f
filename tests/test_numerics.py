"""NaN or Inf in a loss, a gradient or a reward stops the run with the step and the metric named, and the last
checkpoint written before it is intact."""

from __future__ import annotations

import pytest
import torch

from npo_lab import methods
from npo_lab.backend import ScriptedBackend
from npo_lab.checkpoint import latest_checkpoint, load_checkpoint
from npo_lab.config import GRPOConfig, RunConfig
from npo_lab.train import NonFiniteError, make_state, save_training_checkpoint, train
from npo_lab.utils import seed_everything

GRPO = GRPOConfig(batch_size=16, group_size=4, lr=0.1)


class Faulty(ScriptedBackend):
    """A scripted policy that goes wrong at training step ``at``: NaN log-probs, an Inf gradient or a NaN reward."""

    def __init__(self, fault: str, at: int) -> None:
        super().__init__(n_prompts=8, seq_len=3, vocab=4, seed=0, init_bias=1.0)
        self.fault, self.at, self.step = fault, at, 0

    def rollout(self, prompt_ids, n, policy=None):
        b = super().rollout(prompt_ids, n, policy)
        if self.fault == "reward" and self.step == self.at:
            b = b.replace(rewards=b.rewards.index_fill(0, torch.tensor([5]), float("nan")))
        return b

    def logprobs(self, batch, policy=None):
        logp, ent = super().logprobs(batch, policy)
        if self.step == self.at and torch.is_grad_enabled():
            if self.fault == "loss":
                logp = logp * float("nan")
            if self.fault == "grad":
                logp.register_hook(lambda g: g * float("inf"))
        return logp, ent


@pytest.mark.parametrize(
    "fault,metric",
    [("loss", "loss/total is nan"), ("grad", "policy/grad_norm is"), ("reward", "reward of 1 on-policy")],
)
def test_a_non_finite_value_stops_the_run_and_keeps_the_last_checkpoint(fault, metric, tmp_path):
    seed_everything(0)
    be = Faulty(fault, at=3)
    state = make_state(be, GRPO, seed=0)
    saved = {}

    def save(st, loop):
        path = save_training_checkpoint(tmp_path, st, loop)
        saved[st.step] = be.table.detach().clone()
        be.step = st.step  # the backend learns which step comes next
        assert path.is_dir()

    with pytest.raises(NonFiniteError, match=f"step 3: {metric}"):
        train(
            state, methods.GRPO(), RunConfig(steps=6, checkpoint_every=1, eval_every=100), GRPO, save_checkpoint=save
        )
    last = latest_checkpoint(tmp_path)
    assert last.name == "step_000003"  # written before the failing step, untouched by it
    weights = load_checkpoint(last)["policy"]["weights"]["table"]
    assert torch.isfinite(weights).all() and torch.equal(weights, saved[3])
    if fault == "grad":  # the optimizer did not step on the Inf gradient
        assert torch.equal(be.table.detach(), saved[3])


def test_the_cli_names_the_step_the_metric_and_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from npo_lab.envs.arithmetic_backend import ArithmeticBackend

    from npo_lab.cli import main

    logprobs = ArithmeticBackend.logprobs
    calls = {"n": 0}

    def nan_after_a_while(self, batch, policy=None):
        logp, ent = logprobs(self, batch, policy)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 5:  # the fifth training forward: step 4
                logp = logp * float("nan")
        return logp, ent

    monkeypatch.setattr(ArithmeticBackend, "logprobs", nan_after_a_while)
    args = ["--task.digits", "2", "--task.n-train", "64", "--task.n-eval", "16", "--model.warm-steps", "0"]
    args += ["--model.d-model", "32", "--model.n-head", "2", "--grpo.batch-size", "8", "--grpo.group-size", "4"]
    rc = main(["train", "--method", "grpo", "--steps", "8", "--checkpoint-every", "2", "--no-tensorboard", *args,
               "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    (run,) = list(tmp_path.iterdir())
    assert "step 4: loss/total is nan (non-finite)" in err
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step_000004'}" in err

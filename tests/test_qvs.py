"""Q, V, S measured through the backend protocol: npo-lab qvs's measurement leaves the run unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from npo_lab.backend import ScriptedBackend
from npo_lab.config import GRPOConfig
from npo_lab.experiments.qvs import measure_along_run
from npo_lab.train import make_state
from npo_lab.train.probe import failed_prompts, measure_sources
from npo_lab.utils import seed_everything


def run(at, deltas=(-2, 1, 3), steps=6):
    seed_everything(0)
    be = ScriptedBackend(n_prompts=12, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=24, group_size=4, lr=0.3)
    state = make_state(be, grpo, 0)
    teacher = {
        "weights": {"table": torch.zeros_like(be.table).scatter_(2, be.answers.unsqueeze(-1), 9.0)},
        "rng": be.gen.get_state(),
    }
    recs = measure_along_run(state, grpo, steps, at, deltas, list(range(12)), k=4, teacher=teacher)
    return recs, be.table.detach().clone(), be.gen.get_state()


def test_measuring_does_not_change_the_run():
    _, w0, g0 = run(at=[])
    recs, w1, g1 = run(at=[0, 3, 6])
    _, w2, g2 = run(at=[6], deltas=(5,))
    assert recs and torch.equal(w0, w1) and torch.equal(w0, w2)
    assert torch.equal(g0, g1) and torch.equal(g0, g2)


def test_sources_at_each_step():
    recs, _, _ = run(at=[0, 3])
    at0 = {r["source"] for r in recs if r["step"] == 0}
    at3 = {r["source"] for r in recs if r["step"] == 3}
    assert at0 == {"+1", "+3", "teacher"}  # no past checkpoint exists at step 0
    assert at3 == {"-2", "+1", "+3", "teacher"}
    teacher = [r for r in recs if r["source"] == "teacher"]
    assert all(r["q"] == 1.0 for r in teacher if r["failed"])  # the sharp teacher solves every failed prompt


def test_measure_sources_on_the_present_policy():
    seed_everything(1)
    be = ScriptedBackend(n_prompts=10, seq_len=2, vocab=3, seed=1)
    failed, acc = failed_prompts(be, list(range(10)), k=6, gate=0.6)
    assert 0.0 <= acc <= 1.0 and failed
    never = torch.zeros_like(be.table).scatter_(2, be.answers.unsqueeze(-1), -50.0)  # never writes an answer
    out = measure_sources(be, failed, {"self": be.save(), "never": {"weights": {"table": never}}}, k=20)
    me = out["self"]
    assert me["q"] > 0
    # the source is pi_t itself: every weight is exactly 1, so V is the floor for every estimator
    assert me["v"] == 1.0 and me["v_log_ratio"] == 1.0 and me["v_chi2"] == 1.0 and me["s"] == me["q"]
    none = out["never"]
    assert none["q"] == 0.0 and none["s"] == 0.0 and math.isnan(none["v"])  # solves nothing: no signal
    assert math.isnan(measure_sources(be, [], {"x": be.save()})["x"]["q"])


def test_the_papers_v_hat_is_recorded_with_its_beta():
    """v_kl_exp = exp(beta * mean per-token k3 KL) of the source's correct rows under pi_t, with the given beta."""
    seed_everything(2)
    be = ScriptedBackend(n_prompts=6, seq_len=2, vocab=3, seed=2)
    src = be.table.detach().clone()
    src.scatter_(2, be.answers.unsqueeze(-1), 2.0)  # a sharper source: pi_t / pi_src < 1 on its correct tokens
    ck = {"weights": {"table": src}, "rng": be.gen.get_state()}
    out1 = measure_sources(be, list(range(6)), {"s": ck}, k=8, kl_beta=1.0)["s"]
    seed_everything(2)
    be2 = ScriptedBackend(n_prompts=6, seq_len=2, vocab=3, seed=2)
    out3 = measure_sources(be2, list(range(6)), {"s": ck}, k=8, kl_beta=3.0)["s"]
    # the same rows are drawn (same generator state in the checkpoint): beta only rescales the exponent
    assert out1["v_kl_exp"] > 1.0
    assert out3["v_kl_exp"] == pytest.approx(out1["v_kl_exp"] ** 3.0)
    assert out3["s_kl_exp"] == pytest.approx(out3["q"] / out3["v_kl_exp"])

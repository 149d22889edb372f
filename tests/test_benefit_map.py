"""``npo-lab benefit-map``: a 2 x 1 map end to end (files, schema), continued after a kill, the measured GRPO run
equal to the plain one, and the summary's statistics on hand-made cells."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import HANG_GUARD_S, run_cli

from npo_lab.backend import ScriptedBackend
from npo_lab.cli import main
from npo_lab.cli.benefit_map import BenefitMapCommand
from npo_lab.config import GRPOConfig, MethodConfigs, RunConfig
from npo_lab.experiments.benefit_map import (
    ProbedGRPO,
    ProbeSpec,
    Regime,
    paired,
    qvs_summary,
    spearman,
    speedup,
    summarize_map,
)
from npo_lab.methods import GRPO
from npo_lab.metrics import MemoryLogger
from npo_lab.train import make_state, train
from npo_lab.utils import seed_everything

TINY = [
    *("--row-knob", "task.min_digits", "--row-values", "0", "1", "--col-knob", ""),
    *("--methods", "grpo,npo:delta=1,npo:delta=2", "--npo.interventions", "0", "4", "--seeds", "2"),
    *("--steps", "8", "--eval-every", "4", "--qvs-at", "0", "4", "--qvs-deltas", "1", "2", "--qvs-probe", "8"),
    *("--qvs-k", "2", "--extrapolate-k", "2", "--bootstrap", "200", "--workers", "1"),
    *("--task.digits", "2", "--task.n-train", "64", "--task.n-eval", "16", "--model.d-model", "16"),
    *("--model.n-head", "2", "--model.warm-steps", "20", "--grpo.batch-size", "16", "--grpo.group-size", "4"),
]


def finals(out: Path) -> dict[str, tuple]:
    return {
        p.relative_to(out).as_posix(): (d["final_accuracy"], d["evals"], d["lookahead_steps"], d.get("qvs"))
        for p in sorted((out / "cells").glob("*/*.json"))
        for d in [json.loads(p.read_text())]
    }


@pytest.mark.slow
def test_a_two_by_one_map_end_to_end_and_continued_after_a_kill(tmp_path):
    straight = tmp_path / "straight"
    r = run_cli("benefit-map", *TINY, "--out", str(straight))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("map.md", "map.png", "qvs_map.png", "map.json", "config.json"):
        assert (straight / name).is_file(), name
    doc = json.loads((straight / "map.json").read_text())
    assert set(doc["regimes"]) == {"min_digits=0", "min_digits=1"}
    for e in doc["regimes"].values():
        assert set(e["methods"]) == {"grpo", "npo:delta=1", "npo:delta=2"}
        d2 = e["methods"]["npo:delta=2"]
        assert d2["n_seeds"] == 2 and len(d2["minus_control"]["ci95"]) == 2 and "speedup_with_extra" in d2["speedup"]
        assert "minus_control" not in e["methods"]["npo:delta=1"]  # the control is not compared with itself
        steps = e["qvs"]["by_step"]
        assert set(steps) == {"0", "4"} and {"+1", "+2", "x+1", "x+2"} <= set(steps["4"])
        assert "x+1" not in steps["0"]  # no direction exists at step 0
        assert set(e["qvs"]["delta_star"]) <= {"is_variance", "chi2", "log_ratio", "kl_exp"}
    assert len(finals(straight)) == 2 * 2 * 3
    assert "| min_digits=1 | npo:delta=2 |" in (straight / "map.md").read_text()

    # the same map, killed (SIGKILL: nothing can clean up) once its first cells exist, then continued
    killed = tmp_path / "killed"
    env = {**os.environ, "COLUMNS": "1000"}
    p = subprocess.Popen([sys.executable, "-m", "npo_lab", "benefit-map", *TINY, "--out", str(killed)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    t0 = time.monotonic()
    while len(list((killed / "cells").glob("*/*.json"))) < 2 and p.poll() is None:
        assert time.monotonic() - t0 < HANG_GUARD_S, "hang guard: no cell was written"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = {q: q.read_bytes() for q in (killed / "cells").glob("*/*.json")}
    assert 2 <= len(before) < 12 and not list((killed / "cells").glob("*/*.tmp"))
    r = run_cli("benefit-map", *TINY, "--workers", "2", "--out", str(killed))  # workers may change on resume
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(q.read_bytes() == b for q, b in before.items())  # what was done is not redone
    assert finals(killed) == finals(straight)  # and the continued map is the uninterrupted one

    # another configuration in the same folder is refused, naming what differs
    r = run_cli("benefit-map", *TINY, "--seeds", "3", "--out", str(killed))
    assert r.returncode == 1 and "seeds" in r.stderr and "another configuration" in r.stderr


def test_the_measured_grpo_run_is_the_plain_grpo_run():
    def run(method_of):
        seed_everything(0)
        be = ScriptedBackend(n_prompts=12, seq_len=2, vocab=4, seed=0)
        grpo = GRPOConfig(batch_size=24, group_size=4, lr=0.3)
        state = make_state(be, grpo, 0)
        method = method_of(grpo)
        res = train(state, method, RunConfig(steps=10, eval_every=2), grpo, logger=MemoryLogger())
        return res, be.table.detach().clone(), method

    plain, w0, _ = run(lambda g: GRPO())
    spec = ProbeSpec(at=(0, 4, 8), deltas=(1, 3), probe=12, k=4, extrapolate_k=2)
    probed, w1, m = run(lambda g: ProbedGRPO(spec, g, range(12)))
    assert torch.equal(w0, w1) and plain.evals == probed.evals and plain.train_reward == probed.train_reward
    kinds = {(r["step"], r["kind"]) for r in m.records}
    assert kinds >= {(0, "future"), (4, "future"), (4, "extrapolated"), (8, "extrapolated")}
    assert (0, "extrapolated") not in kinds


def cell(regime, method, seed, final, evals=None, extra=0, interventions=(), costs=()):
    return {
        "regime": regime, "method": method, "seed": seed, "final_accuracy": final, "lookahead_steps": extra,
        "evals": evals or [[0, 0.0], [10, final]], "interventions": list(interventions),
        "intervention_costs": list(costs),
    }  # fmt: skip


def test_paired_differences_and_the_speedup_counting_the_extra_steps_by_hand():
    base = {s: cell("r", "grpo", s, f) for s, f in enumerate([0.5, 0.4, 0.6])}
    npo = {s: cell("r", "npo", s, f) for s, f in enumerate([0.6, 0.4, 0.5])}
    p = paired(npo, base, 500)
    assert p["median"] == pytest.approx(0.0) and p["wins"] == [1, 1, 1] and not p["excludes_zero"]
    up = {s: cell("r", "npo", s, f + 0.1) for s, f in enumerate([0.5, 0.4, 0.6])}
    assert paired(up, base, 500)["excludes_zero"]  # every seed better by 0.1
    # baseline reaches 0.45 at step 20; the method at step 10, after 5 look-ahead steps at step 0: 20 / 15
    b = {0: cell("r", "grpo", 0, 0.5, [[0, 0.0], [10, 0.3], [20, 0.5]])}
    m = {0: cell("r", "npo", 0, 0.5, [[0, 0.0], [10, 0.5], [20, 0.5]], 5, [0], [5])}
    sp = speedup(m, b, 0.45)
    assert sp["baseline_steps"] == 20 and sp["steps"] == 10 and sp["steps_with_extra"] == 15
    assert sp["speedup_with_extra"] == pytest.approx(20 / 15)


def test_delta_star_and_whether_it_is_interior():
    recs = []
    for _seed in (0, 1):
        for d, s in ((1, 0.1), (5, 0.3), (20, 0.2)):  # S peaks at Delta = 5, inside the measured range
            recs.append({"step": 0, "source": f"+{d}", "kind": "future", "delta": d, "q": 0.5, "s_kl_exp": s})
        recs.append({"step": 50, "source": "+1", "kind": "future", "delta": 1, "q": 0.5, "s_kl_exp": 0.5})
        recs.append({"step": 50, "source": "+20", "kind": "future", "delta": 20, "q": 0.5, "s_kl_exp": 0.1})
    ds = qvs_summary(recs, 200)["delta_star"]["kl_exp"]
    assert ds["0"]["delta_star"] == 5 and ds["0"]["interior"]
    assert ds["50"]["delta_star"] == 1 and not ds["50"]["interior"]


def test_spearman_by_hand():
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_a_partial_map_summarises_what_is_there():
    cfgs = MethodConfigs()
    regimes = [Regime("a", {"grpo.lr": 1e-4}, 0, 0), Regime("b", {"grpo.lr": 3e-4}, 0, 1)]
    cells = [cell("a", "grpo", 0, 0.5), cell("a", "npo:delta=1", 0, 0.55), cell("a", "npo:delta=20", 0, 0.6)]
    doc = summarize_map(cells, regimes, ["grpo", "npo:delta=1", "npo:delta=20"], cfgs, control="npo:delta=1",
                        n_boot=200)  # fmt: skip
    a = doc["regimes"]["a"]["methods"]
    assert a["npo:delta=20"]["minus_control"]["median"] == pytest.approx(0.05)
    assert a["npo:delta=20"]["minus_grpo"]["median"] == pytest.approx(0.1)
    assert doc["regimes"]["b"]["methods"] == {}


def test_knobs_and_presets_are_checked_before_any_work(capsys):
    cfg = BenefitMapCommand()
    names = [r.name for r, _ in cfg.regimes()]
    assert len(names) == 9 and names[0] == "min_digits=0,lr=0.0001"
    ((_, c),) = [(r, c) for r, c in cfg.regimes() if r.name == "min_digits=1,lr=0.001"]
    assert c.task.min_digits == 1 and c.grpo.lr == 0.001 and c.task.digits == 3
    assert main(["benefit-map", "--preset", "quik", "--dry-run"]) == 2
    assert "did you mean 'quick'" in capsys.readouterr().err
    assert main(["benefit-map", "--preset", "quick", "--dry-run"]) == 0
    with pytest.raises(ValueError, match="row_knob must name a field of task"):
        BenefitMapCommand(row_knob="task.min_digit")

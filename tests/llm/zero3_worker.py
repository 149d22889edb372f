"""Run by tests/llm/test_zero3.py on 2 CPU processes (gloo): NPO on a DeepSpeed ZeRO-3 tiny Qwen3-VL.

``zero3_worker.py OUT STRATEGY DTYPE``: STRATEGY is the llm.strategy to ask for ('deepspeed' under torchrun, 'auto'
under accelerate launch with the shipped DeepSpeed config), DTYPE llm.dtype (bfloat16: DeepSpeed's bf16 mode, with
bf16 compute copies and float32 masters). Every rank writes what it saw to OUT/rank<r>.json;
rank 0 also keeps, for the single-process comparison, the first GRPO step's batch and the weights before and
after it (OUT/step1/)."""

import copy
import json
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from npo_lab.llm.backend import QwenVLBackend
from npo_lab.llm.vllm_engine import vllm_weights

from npo_lab.config import GRPOConfig, NPOConfig, RunConfig
from npo_lab.methods import NPO
from npo_lab.train import grpo_step, make_state, restore, snapshot, train
from npo_lab.utils import seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared helpers
from helpers import tiny_llm_config  # noqa: E402

REWARD = "npo_zero3_rewards:sparse_length"
"""The tiny settings of every llm test, 3 rows per micro-batch."""
# 2 rows per micro-batch: each rank accumulates 2 micro-batches of its 4 rows; clipping at 0.05 is active
GRPO = GRPOConfig(batch_size=8, group_size=4, lr=1e-2, micro_batch_size=2, max_grad_norm=0.05)


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def log(self, m, step):
        self.rows.append({k: float(v) for k, v in m.items()})

    def flush(self):
        pass


def full(be: QwenVLBackend) -> dict[str, torch.Tensor]:
    return be.zero.full_state(be._state_keys, everywhere=True)


def lp(be: QwenVLBackend, batch) -> torch.Tensor:
    with torch.no_grad():
        return be.logprobs(batch)[0]


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def main(out: str, strategy: str, dtype: str) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    be = QwenVLBackend(tiny_llm_config(REWARD, micro_batch=3, strategy=strategy, dtype=dtype), seed=0)
    assert be.world_size == 2 and be.zero is not None, (be.world_size, be.strategy)
    rank, keep = dist.get_rank(), Path(out) / "step1"
    partitioned = sum(1 for p in be.model.parameters() if hasattr(p, "ds_id"))
    n_model_params = sum(1 for _ in be.model.parameters())
    before = full(be)
    state = make_state(be, GRPO, seed=0)

    # one GRPO step on a fixed batch (kept for the single-process comparison in the test)
    batch = be.rollout(list(range(GRPO.prompts_per_step)), GRPO.group_size)
    start = be.save()
    if rank == 0:
        keep.mkdir(parents=True)
        torch.save(batch, keep / "batch.pt")
        start.persist(keep / "before")
    rollout, be.rollout = be.rollout, lambda *a, **k: batch
    step1 = grpo_step(state, GRPO)
    be.rollout = rollout
    after1 = be.save()
    if rank == 0:
        after1.persist(keep / "after")
        (keep / "metrics.json").write_text(json.dumps(step1))

    # exact rollback: snapshot, a step, restore -> the same weights (masters) and optimizer state
    snap_w, snap_lp = full(be), lp(be, batch)
    snap = snapshot(state)
    grpo_step(state, GRPO)
    moved = not equal(full(be), snap_w)
    restore(state, snap)
    rollback_exact = equal(full(be), snap_w) and torch.equal(lp(be, batch), snap_lp)
    opt_a, opt_b = state.optimizer.state_dict(), copy.deepcopy(snap["optimizer"])
    rollback_exact &= all(
        sorted(x) == sorted(y) and all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)
        for x, y in zip(opt_a["state"], opt_b["state"])
    )

    # save -> load round trip: a checkpoint of other weights loads back exactly (masters and compute copies)
    ck = be.save()
    ck_w = full(be)
    ck_lp = lp(be, batch)
    be.load(start)
    at_start = equal(full(be), before)
    be.load(ck)
    round_trip = at_start and equal(full(be), ck_w) and torch.equal(lp(be, batch), ck_lp)

    # the vLLM engine's weight stream gathers ZeRO-3 parameters one at a time
    vw = {k: v.clone() for k, v in vllm_weights(be.model)}
    vllm_same = all(torch.equal(vw[k], ck_w[k].to(vw[k].dtype)) for k in vw) and len(vw) > 0

    # NPO from step 1: look-ahead (snapshot, a plain step, checkpoint, rollback), then guided steps
    log = Rows()
    res = train(
        state,
        NPO(NPOConfig(delta=1, interventions=(1,), guide_samples=4), 3, GRPO),
        RunConfig(steps=3, eval_every=2),
        GRPO,
        logger=log,
    )
    after = full(be)

    # a NaN gradient: ZeRO-3 applies no update and the backend reports a non-finite norm (the trainer then stops)
    state.optimizer.zero_grad(set_to_none=True)
    logp, _ = be.logprobs(batch.select(torch.arange(2)))
    be.update_strategy.backward(logp.sum() * float("nan"))
    norm = be.update_strategy.step(state.optimizer, GRPO.max_grad_norm)
    nan_skipped = not math.isfinite(norm) and equal(full(be), after)

    doc = {
        "rank": rank,
        "ds_source": be.zero.source,
        "compute_dtype": str(next(be.model.parameters()).dtype),
        "partitioned": partitioned,
        "model_params": n_model_params,
        "n_params": len(after),
        "changed": sum(1 for k in after if not torch.equal(after[k], before[k])),
        "trainable": sum(1 for p in be.model.parameters() if p.requires_grad),
        "checksum": sum(float(v.double().sum()) for v in after.values()),
        "moved": moved,
        "rollback_exact": rollback_exact,
        "round_trip": round_trip,
        "vllm_same": vllm_same,
        "nan_skipped": nan_skipped,
        "step1": step1,
        "interventions": res.interventions,
        "lookahead_steps": res.lookahead_steps,
        "rows": log.rows,
    }
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(doc))
    del start, after1, ck
    be.close()
    dist.barrier()
    if rank == 0:
        shutil.rmtree(be.scratch, ignore_errors=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])

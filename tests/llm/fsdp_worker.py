"""Run by tests/llm/test_fsdp.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): NPO on an FSDP2-sharded tiny
Qwen3-VL. Each rank writes what it saw to <out>/rank<r>.json."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from npo_lab.llm.backend import QwenVLBackend
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from npo_lab.config import GRPOConfig, NPOConfig, RunConfig
from npo_lab.methods import NPO
from npo_lab.train import make_state, train
from npo_lab.utils import seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared helpers
from helpers import tiny_llm_config  # noqa: E402


def full_params(model):
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.float().clone() for k, v in sd.items()}


def main(out: str) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    cfg = tiny_llm_config("npo_test_rewards:sparse_length", micro_batch=3)
    be = QwenVLBackend(cfg, seed=0)
    assert be.world_size == 2, be.world_size
    be.model.reshard()  # the root keeps its parameters gathered after a forward until asked
    sharded = sum(1 for p in be.model.parameters() if hasattr(p, "full_tensor"))
    n_model_params = sum(1 for _ in be.model.parameters())
    before = full_params(be.model)
    grpo = GRPOConfig(batch_size=8, group_size=4, lr=1e-2, micro_batch_size=2)
    state = make_state(be, grpo, seed=0)
    rows = []

    class Rows:
        def log(self, m, step):
            rows.append({k: float(v) for k, v in m.items()})

        def flush(self):
            pass

    res = train(
        state,
        NPO(NPOConfig(delta=1, interventions=(0,), guide_samples=4), 2, grpo),
        RunConfig(steps=2, eval_every=2),
        grpo,
        logger=Rows(),
    )
    after = full_params(be.model)
    doc = {
        "rank": dist.get_rank(),
        "sharded_params": sharded,
        "model_params": n_model_params,
        "n_params": len(after),
        "changed": sum(1 for k in after if not torch.equal(after[k], before[k])),
        "checksum": sum(float(v.double().sum()) for v in after.values()),
        "interventions": res.interventions,
        "lookahead_steps": res.lookahead_steps,
        "rows": rows,
    }
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
        json.dump(doc, f)
    be.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

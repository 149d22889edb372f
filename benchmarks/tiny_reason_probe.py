"""What the tiny Qwen3-VL can learn to read: held-out accuracy per kind of the reason task along a supervised run.

    .venv/bin/python benchmarks/tiny_reason_probe.py --kinds color_add --steps 100 200 300 400 600 800

Trains the tiny model (``model="tiny"``, seed 0) with supervised steps on '\\boxed{answer}' completions of the
training rows (the loss of the backend's warm start: batch 16, Adam at ``--lr``, one continuous run) and evaluates
greedy held-out accuracy per kind at each of ``--steps``. It answers "which kinds, mixed how, can the tiny model
read at all, and after how many supervised steps", which decides the warm start of recipes/tiny_reason.toml. One
thread; docs/benchmarks.md section 10 reports the runs.
"""

from __future__ import annotations

import argparse
import random
import time


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default="color_add,larger_color,count_add,compare", help="llm.data.reason_kinds")
    p.add_argument("--steps", type=int, nargs="+", default=[200, 400, 800], help="evaluate after these steps")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (the warm start's default)")
    p.add_argument("--train", type=int, default=1024, help="training images")
    p.add_argument("--eval", type=int, default=128, help="held-out images")
    a = p.parse_args(argv)
    if min(a.steps) < 1 or min(a.train, a.eval) < 1:
        p.error("--steps, --train and --eval must be >= 1")

    import torch
    from npo_lab.llm.backend import QwenVLBackend
    from npo_lab.llm.config import DataConfig, LLMConfig

    torch.set_num_threads(1)
    data = DataConfig(
        synthetic_task="reason", reason_kinds=a.kinds, synthetic_train=a.train, synthetic_eval=a.eval, eval_rows=a.eval
    )
    be = QwenVLBackend(LLMConfig(model="tiny", tiny_warm_steps=0, max_new_tokens=8, data=data), seed=0)
    rng = random.Random(17)
    end = be.tokenizer.convert_tokens_to_ids("<|im_end|>")
    opt = torch.optim.Adam([q for q in be.model.parameters() if q.requires_grad], lr=a.lr)
    out: dict[int, dict[str, float]] = {}
    done, t0 = 0, time.perf_counter()
    for target in sorted(a.steps):
        while done < target:  # the warm start's supervised step (QwenVLBackend._warm_start), one continuous run
            rows = [be.train_set[rng.randrange(len(be.train_set))] for _ in range(16)]
            comps = [be.tokenizer.encode(f"\\boxed{{{ex.answer}}}", add_special_tokens=False) + [end] for ex in rows]
            logp, _ = be._forward_logprobs(be.model, rows, comps)  # (16, T)
            mask = torch.zeros_like(logp)
            for i, c in enumerate(comps):
                mask[i, : len(c)] = 1.0
            loss = -(logp * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
        with torch.no_grad():
            graded = be._sample(be.eval_set, None, greedy=True)
        acc: dict[str, list[float]] = {}
        for ex, r in zip(be.eval_set, graded):
            acc.setdefault(ex.columns["kind"], []).append(float((r["components"]["accuracy"] or 0.0) >= 1.0))
        out[done] = {k: sum(v) / len(v) for k, v in acc.items()}
        scores = " ".join(f"{k} {v:.2f}" for k, v in out[done].items())
        print(f"step {done}: loss {loss.item():.3f}; held-out accuracy {scores} ({time.perf_counter() - t0:.0f} s)")
    be.close()
    return out


if __name__ == "__main__":
    main()

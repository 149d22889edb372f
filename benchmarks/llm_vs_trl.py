"""Per-step wall time of npo_lab's Qwen3-VL backend vs TRL's GRPOTrainer, side by side in one process.

Run (from the repository root, one CPU thread per side, low priority):

    nice -n 10 .venv/bin/python benchmarks/llm_vs_trl.py --out runs/bench/llm_vs_trl.json
    nice -n 10 .venv/bin/python benchmarks/llm_vs_trl.py --batch 32 --group 8 --completion 32 \
        --out runs/bench/llm_vs_trl_b32.json

What is compared (identical on both sides):

* the same tiny random Qwen3-VL, written once with ``write_tiny_model`` to a temporary folder that both sides
  load (npo_lab: ``LLMConfig(model=<folder>)``; TRL: ``GRPOTrainer(model=<folder>)``), fp32 on CPU;
* the same prompts: the synthetic image tasks (``make_synthetic`` through ``DataConfig``), rendered as the same
  chat (system prompt + image + question); the script checks the rendered prompt text is identical;
* B rows per step (``--batch``) = B/G prompts x G completions (``--group``), all generated in one batch and
  trained in one forward/backward (npo_lab: ``llm.micro_batch = B``, ``grpo.micro_batch_size = 0``; TRL:
  ``per_device_train_batch_size = B``, ``steps_per_generation = 1``, ``gradient_accumulation_steps = 1``);
* one optimiser step per generation batch (TRL ``num_iterations = 1``; npo_lab ``epochs = 1``, one minibatch),
  ``beta = 0`` (no reference model), token-mean loss (TRL ``loss_type='dapo'``; npo_lab
  ``aggregation='token_mean'``), group-std advantages, clip 0.2, grad-norm clip 1.0, Adam(W) without weight
  decay at the same constant learning rate, no gradient checkpointing (TRL's default is on: switched off);
* sampling at temperature 1, top_p 1, top_k 0, ``--completion`` new tokens; with ``--force-full-length`` (the
  default) ``min_new_tokens`` is set on both sides, so every row is exactly that long (reported per side);
* the same reward function (:func:`reward_even`, 1 for an even number of characters), given to npo_lab as
  ``RewardConfig(accuracy_weight=0, custom='llm_vs_trl:reward_even')`` and to TRL as ``reward_funcs``;
* ``torch.set_num_threads(1)`` (and ``OMP_NUM_THREADS=1``) for the whole process.

How it is timed: TRL's ``trainer.train()`` drives the run; a ``TrainerCallback`` records, for every optimiser
step, the wall time from the moment control returned to TRL's loop after the previous step's callbacks to this
step's ``on_step_end`` ("loop" time: data loading and collation, generation, scoring, forward, backward,
clipping, optimiser and scheduler step, the previous step's log check). That is the per-step cost a TRL user
pays. ``on_step_begin`` -> ``on_step_end`` ("inner", everything but the data fetch) is recorded too. The same
callback then runs a block of npo_lab ``grpo_step`` calls, each timed with ``perf_counter`` around the call,
so the two sides alternate in blocks of ``--block`` steps (TRL, npo_lab, TRL, npo_lab, ...) and machine noise
hits both. Each side first runs ``--warmup`` untimed steps. TRL's logging is pushed past the run
(``logging_steps`` larger than the run) and npo_lab runs without a logger, so neither side pays for I/O.

Outputs: per-side median / mean / min / max step time, ratio npo_lab/TRL of the medians with a bootstrap 90%
interval (steps resampled within each side) and the median / min / max of the per-round ratios (a round's two
blocks run back to back, so that ratio is paired against slow drifts of the machine's load), mean completion
tokens per row, the phase breakdown of both sides (npo_lab: its ``time/*`` metrics, the pure ``generate`` time
and wrapped backend internals: ``_forward_logprobs`` with and without grad, ``_encode_prompts``,
``_prompt_text``, ``rewards.score``, ``model.generate``, with call counts; TRL:
wrapped ``_generate``, ``_generate_and_score_completions``, ``compute_loss``, ``accelerator.backward``,
``_clip_grad_norm``, and the optimiser step between ``on_pre_optimizer_step`` and ``on_optimizer_step``), and
with ``--profile`` a cProfile of one extra step of each side (written next to ``--out``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent


def _text(completion: Any) -> str:
    """A completion as text: npo_lab passes strings, TRL (conversational prompts) a list of messages."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, list):  # structured content blocks
        return "".join(part.get("text") or "" for part in content)
    return content


def reward_even(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 when the completion has an even number of characters: cheap, deterministic, mixed groups."""
    return [float(len(_text(c)) % 2 == 0) for c in completions]


def _stats(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "median_s": statistics.median(xs),
        "mean_s": statistics.fmean(xs),
        "min_s": min(xs),
        "max_s": max(xs),
        "stdev_s": statistics.stdev(xs) if len(xs) > 1 else 0.0,
    }


def _bootstrap_ratio(a: list[float], b: list[float], n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentiles of median(a*)/median(b*), each side resampled with replacement."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b))) for _ in range(n)
    )
    return ratios[int(0.05 * n)], ratios[int(0.95 * n) - 1]


def _top_functions(prof: Any, limit: int = 30) -> list[dict[str, Any]]:
    """The ``limit`` functions with the largest cumulative time of a cProfile run (file:line(function))."""
    import pstats

    st = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{file}:{line}({fn})", "calls": nc, "tottime_s": tt, "cumtime_s": ct})
    rows.sort(key=lambda r: -r["cumtime_s"])
    return rows[:limit]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16, help="rows (completions) per step, B = prompts x G")
    p.add_argument("--group", type=int, default=4, help="G, completions per prompt")
    p.add_argument("--completion", type=int, default=16, help="max new tokens per completion")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side before timing")
    p.add_argument("--block", type=int, default=2, help="steps per side per round (sides alternate by blocks)")
    p.add_argument("--prompts", type=int, default=0, help="prompt set size; 0 = enough for one epoch of the run")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument(
        "--force-full-length",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="min_new_tokens = --completion on both sides (every completion has the same length)",
    )
    p.add_argument(
        "--npo-micro-batch",
        type=int,
        default=0,
        help="npo_lab llm.micro_batch (generation and no-grad forward chunk); 0 = B (TRL generates all B at once)",
    )
    p.add_argument("--profile", action="store_true", help="cProfile one extra step of each side after timing")
    p.add_argument("--out", type=str, default="", help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.batch % a.group:
        p.error(f"--batch {a.batch} must be divisible by --group {a.group}")
    if a.steps % a.block:
        p.error(f"--steps {a.steps} must be a multiple of --block {a.block}")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))  # so that 'llm_vs_trl:reward_even' imports for npo_lab's RewardSet

    import transformers
    import trl
    from datasets import Dataset
    from npo_lab.llm.backend import QwenVLBackend
    from npo_lab.llm.config import DataConfig, LLMConfig, RewardConfig
    from npo_lab.llm.data import build_messages
    from npo_lab.llm.example import IMAGE_MARKER
    from npo_lab.llm.model import load_processor, write_tiny_model
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer
    from trl.data_utils import prepare_multimodal_messages

    from npo_lab.config import GRPOConfig
    from npo_lab.train import grpo_step, make_state
    from npo_lab.utils import seed_everything

    hf_logging.set_verbosity_error()
    B, G, L = args.batch, args.group, args.completion
    n_steps_total = args.warmup + args.steps
    prompts_per_step = B // G
    n_prompts = args.prompts or n_steps_total * prompts_per_step + prompts_per_step  # no epoch boundary inside
    tmp = Path(tempfile.mkdtemp(prefix="llm_vs_trl_"))
    folder = write_tiny_model(tmp / "tiny", seed=args.seed)
    system_prompt = DataConfig().system_prompt
    load_start = os.getloadavg()

    # ---- npo_lab --------------------------------------------------------------------------------------
    seed_everything(args.seed)
    cfg = LLMConfig(
        model=str(folder),
        dtype="float32",
        device="cpu",
        attn_implementation="sdpa",
        max_new_tokens=L,
        temperature=1.0,
        top_p=1.0,
        micro_batch=args.npo_micro_batch or B,
        data=DataConfig(
            synthetic_train=n_prompts,
            synthetic_eval=4,  # the backend requires a held-out split; evaluate() is never called here
            eval_rows=4,
            image_size=args.image_size,
            system_prompt=system_prompt,
        ),
        reward=RewardConfig(accuracy_weight=0.0, custom="llm_vs_trl:reward_even"),
    )
    backend = QwenVLBackend(cfg, seed=args.seed)
    if args.force_full_length:
        backend.model.generation_config.min_new_tokens = L  # merged into every generate() call of the backend
    grpo = GRPOConfig(
        batch_size=B,
        group_size=G,
        minibatch_size=0,
        micro_batch_size=0,
        epochs=1,
        lr=args.lr,
        max_grad_norm=1.0,
        advantage="grpo",
        aggregation="token_mean",
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        kl_coef=0.0,
        entropy_coef=0.0,
    )
    state = make_state(backend, grpo, seed=args.seed)

    # ---- TRL: the same prompts and images ------------------------------------------------------------------
    examples = backend.train_set
    assert all(len(ex.images) == 1 and ex.question.startswith(IMAGE_MARKER) for ex in examples)
    trl_prompts = [
        [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": ex.question.replace(IMAGE_MARKER, "")},  # TRL puts the image first
        ]
        for ex in examples
    ]
    processor = load_processor(str(folder), local_files_only=True)
    for ex, pr in zip(examples[:4], trl_prompts[:4]):  # TRL's rendering of a row == npo_lab's
        trl_text = processor.apply_chat_template(
            prepare_multimodal_messages(pr, images=list(ex.images)), tokenize=False, add_generation_prompt=True
        )
        npo_text = backend._prompt_text(ex)
        assert trl_text == npo_text, (trl_text, npo_text)
        assert build_messages(ex, system_prompt)[1]["content"][0] == {"type": "image"}
    dataset = Dataset.from_dict({"prompt": trl_prompts, "image": [ex.images[0] for ex in examples]})

    trl_cfg = TRLConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=B,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=G,
        num_iterations=1,
        max_completion_length=L,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=0.2,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        max_steps=n_steps_total + int(args.profile),
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        logging_steps=10**6,
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        seed=args.seed,
        generation_kwargs={"min_new_tokens": L} if args.force_full_length else None,
    )
    trainer = GRPOTrainer(
        model=str(folder),
        reward_funcs=[reward_even],
        args=trl_cfg,
        train_dataset=dataset,
        processing_class=processor,
    )
    trl_model = trainer.model
    assert all(p.dtype == torch.float32 for p in trl_model.parameters())
    assert all(p.dtype == torch.float32 for p in backend.model.parameters())
    n_params = sum(p.numel() for p in trl_model.parameters())
    assert n_params == sum(p.numel() for p in backend.model.parameters())

    # TRL phase timers: wrap the instance's methods (attribute lookup finds the instance attribute first)
    trl_phase: dict[str, float] = {}

    def wrap(obj: Any, name: str, key: str) -> None:
        fn = getattr(obj, name)

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                trl_phase[key] = trl_phase.get(key, 0.0) + time.perf_counter() - t0

        setattr(obj, name, timed)

    wrap(trainer, "_generate_and_score_completions", "rollout_and_score")
    wrap(trainer, "_generate", "generate")  # tokenise prompts + model.generate
    wrap(trainer, "compute_loss", "loss_forward")
    wrap(trainer.accelerator, "backward", "backward")
    wrap(trainer, "_clip_grad_norm", "clip_grad_norm")

    # npo_lab sub-phase timers, the same way (internal calls go through the instance attributes too)
    npo_phase: dict[str, float] = {}

    def wrap_npo(obj: Any, name: str, key_of: Any) -> None:
        fn = getattr(obj, name)

        def timed(*a: Any, **kw: Any) -> Any:
            key = key_of()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                npo_phase[key] = npo_phase.get(key, 0.0) + time.perf_counter() - t0
                npo_phase["calls/" + key] = npo_phase.get("calls/" + key, 0.0) + 1

        setattr(obj, name, timed)

    # behaviour forward = the no-grad pass inside rollout; train forward = the differentiable pass of the update
    wrap_npo(backend, "_forward_logprobs", lambda: "train_forward" if torch.is_grad_enabled() else "no_grad_forward")
    wrap_npo(backend, "_batch_inputs", lambda: "batch_inputs")
    wrap_npo(backend, "_prompt_text", lambda: "prompt_text")
    wrap_npo(backend.rewards, "score", lambda: "reward_score")
    wrap_npo(backend.model, "generate", lambda: "model_generate")

    # ---- the interleaved schedule, driven by TRL's loop -------------------------------------------------
    rec: dict[str, Any] = {
        "trl_loop": [],
        "trl_inner": [],
        "trl_tokens": [],
        "trl_phases": [],
        "npo": [],
        "npo_tokens": [],
        "npo_metrics": [],
        "rounds": [],
    }
    profiles: dict[str, Any] = {}

    def npo_steps(k: int, record: bool) -> list[float]:
        out = []
        for _ in range(k):
            gen0 = backend.stats["generate_s"]
            npo_phase.clear()
            t0 = time.perf_counter()
            m = grpo_step(state, grpo)
            dt = time.perf_counter() - t0
            if record:
                m["time/generate"] = backend.stats["generate_s"] - gen0
                m.update({f"time/{k2}" if not k2.startswith("calls/") else k2: v for k2, v in npo_phase.items()})
                rec["npo"].append(dt)
                rec["npo_tokens"].append(m["charts/completion_tokens"])
                rec["npo_metrics"].append({k2: v for k2, v in m.items() if k2.startswith(("time/", "calls/"))})
                out.append(dt)
        return out

    class Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.resume = time.perf_counter()
            self.begin = self.resume
            self.round_trl: list[float] = []
            self.prof: Any = None
            self.opt0 = 0.0

        def on_train_begin(self, args_: Any, st: Any, control: Any, **kw: Any) -> None:
            self.resume = time.perf_counter()

        def on_pre_optimizer_step(self, args_: Any, st: Any, control: Any, **kw: Any) -> None:
            self.opt0 = time.perf_counter()

        def on_optimizer_step(self, args_: Any, st: Any, control: Any, **kw: Any) -> None:
            trl_phase["optimizer_step"] = time.perf_counter() - self.opt0

        def on_step_begin(self, args_: Any, st: Any, control: Any, **kw: Any) -> None:
            trl_phase.clear()
            if args.profile and st.global_step == n_steps_total:  # the extra, profiled TRL step
                import cProfile

                self.prof = cProfile.Profile()
                self.prof.enable()
            self.begin = time.perf_counter()

        def on_step_end(self, args_: Any, st: Any, control: Any, **kw: Any) -> None:
            end = time.perf_counter()
            step = st.global_step  # 1-based: steps done
            if self.prof is not None:
                self.prof.disable()
                profiles["trl"] = self.prof
                self.prof = None
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
                npo_steps(1, record=False)
                prof.disable()
                profiles["npo_lab"] = prof
                self.resume = time.perf_counter()
                return
            if step > args.warmup:
                loop, inner = end - self.resume, end - self.begin
                rec["trl_loop"].append(loop)
                rec["trl_inner"].append(inner)
                rec["trl_tokens"].append(trainer._metrics["train"]["completions/mean_length"][-1])
                rec["trl_phases"].append(dict(trl_phase))
                self.round_trl.append(loop)
            if step == args.warmup:
                npo_steps(args.warmup, record=False)
            elif step > args.warmup and (step - args.warmup) % args.block == 0:
                npo_block = npo_steps(args.block, record=True)
                rec["rounds"].append({"trl_s": self.round_trl, "npo_lab_s": npo_block})
                print(
                    f"round {len(rec['rounds'])}: TRL {statistics.fmean(self.round_trl):.3f} s/step, "
                    f"npo_lab {statistics.fmean(npo_block):.3f} s/step",
                    flush=True,
                )
                self.round_trl = []
            self.resume = time.perf_counter()

    trainer.add_callback(Interleave())
    t_run = time.perf_counter()
    trainer.train()
    run_s = time.perf_counter() - t_run
    backend.close()
    load_end = os.getloadavg()

    # ---- results ----------------------------------------------------------------------------------------
    trl_s, npo_s = rec["trl_loop"], rec["npo"]
    assert len(trl_s) == len(npo_s) == args.steps, (len(trl_s), len(npo_s))
    ratio = statistics.median(npo_s) / statistics.median(trl_s)
    lo, hi = _bootstrap_ratio(npo_s, trl_s, seed=args.seed)
    round_ratios = [statistics.fmean(r["npo_lab_s"]) / statistics.fmean(r["trl_s"]) for r in rec["rounds"]]
    npo_phases = {
        k: statistics.fmean(m.get(k, 0.0) for m in rec["npo_metrics"])
        for k in sorted({k for m in rec["npo_metrics"] for k in m})
    }
    trl_phases = {
        k: statistics.fmean(p.get(k, 0.0) for p in rec["trl_phases"])
        for k in sorted({k for p in rec["trl_phases"] for k in p})
    }
    result: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "settings": {
            "batch_rows": B,
            "group_size": G,
            "prompts_per_step": prompts_per_step,
            "max_completion_tokens": L,
            "force_full_length": args.force_full_length,
            "timed_steps_per_side": args.steps,
            "warmup_steps_per_side": args.warmup,
            "block": args.block,
            "prompts": n_prompts,
            "lr": args.lr,
            "npo_lab_llm_micro_batch": cfg.micro_batch,
            "model_parameters": n_params,
            "image_size": args.image_size,
        },
        "trl": {
            **_stats(trl_s),
            "inner": _stats(rec["trl_inner"]),
            "mean_completion_tokens": statistics.fmean(rec["trl_tokens"]),
            "phases_mean_s": trl_phases,
        },
        "npo_lab": {
            **_stats(npo_s),
            "mean_completion_tokens": statistics.fmean(rec["npo_tokens"]),
            "phases_mean_s": npo_phases,
        },
        "ratio_npo_lab_over_trl": {
            "median": ratio,
            "mean": statistics.fmean(npo_s) / statistics.fmean(trl_s),
            "bootstrap_90": [lo, hi],
            "per_round_median": statistics.median(round_ratios),
            "per_round_min": min(round_ratios),
            "per_round_max": max(round_ratios),
            "inner_median": statistics.median(npo_s) / statistics.median(rec["trl_inner"]),
        },
        "rounds": rec["rounds"],
        "machine": {
            "cpu_count": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "run_wall_s": run_s,
    }
    if profiles:
        result["profile_top"] = {side: _top_functions(p) for side, p in profiles.items()}

    print()
    print(f"B={B} G={G} completion={L} steps={args.steps} (+{args.warmup} warm-up) per side, 1 thread")
    for side in ("trl", "npo_lab"):
        r = result[side]
        print(
            f"{side:8s} median {r['median_s']:.3f} s  mean {r['mean_s']:.3f} s  min {r['min_s']:.3f}  "
            f"max {r['max_s']:.3f}  tokens/row {r['mean_completion_tokens']:.2f}"
        )
    rr = result["ratio_npo_lab_over_trl"]
    print(
        f"ratio npo_lab/TRL (median) {rr['median']:.3f}  bootstrap90 [{lo:.3f}, {hi:.3f}]  "
        f"rounds median {rr['per_round_median']:.3f} [{rr['per_round_min']:.3f}, {rr['per_round_max']:.3f}]  "
        f"(vs TRL inner {rr['inner_median']:.3f})"
    )
    print("npo_lab phases:", {k: round(v, 4) for k, v in npo_phases.items()})
    print("TRL phases:    ", {k: round(v, 4) for k, v in trl_phases.items()})
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        for side, prof in profiles.items():
            prof.dump_stats(str(out.with_suffix(f".{side}.prof")))
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""One NPO step of a Qwen3-VL-2B-shaped model on one GPU, beside TRL's GRPOTrainer and the vLLM engine.

Ready to run on one GPU (bf16; about 5-8 minutes on an H200 is the estimate, unmeasured). It aims at a 10-minute
budget: ``--budget-s`` skips the TRL and vLLM parts when too little of it is left; the model build and npo_lab's
part are not bounded:

    python benchmarks/gpu_npo_step.py --out runs/bench/gpu_npo_step.json

and tested on CPU at a tiny shape (tests/llm/test_gpu_npo_step.py runs this; about half a minute):

    python benchmarks/gpu_npo_step.py --shape tiny --device cpu --batch 8 --group 4 --completion 4 --steps 1

What it builds: a randomly initialised Qwen3-VL with the layer sizes of Qwen/Qwen3-VL-2B-Instruct (``SHAPES``; 2.13 B
parameters, 0.41 B of them in the vision tower; tied embeddings), written with ``save_pretrained`` to a temporary
folder next to the tiny model's locally trained tokenizer and a Qwen2-VL image processor (patch 16, merge 2). Nothing
is downloaded. The vocabulary has Qwen's 151,936 rows, so the embeddings, the lm_head and every log-softmax are
full size; the tokenizer knows only the first few hundred ids (decoding skips the others), which is why completions
are forced to their full length (``min_new_tokens``) and scored by a reward that reads only their length.

What it measures, each phase after the previous one has released its memory:

1. **npo_lab, GRPO**: ``--steps`` plain ``grpo_step`` calls after one warm-up (median step time and its phases,
   generation tokens/s = generated tokens / time inside ``generate``, peak GPU memory).
2. **npo_lab, NPO**: step 0 of an NPO run with an intervention at step 0 (``make_method("npo")``): the look-ahead
   (a ``save_pretrained`` snapshot, ``--delta`` plain steps, the near-future checkpoint written, the rollback read
   back) and the first guided step (the checkpoint loaded as the guide model, guide rows sampled for failing
   groups, the update). Reported: the intervention's wall time, the look-ahead part, the guided step, peak memory.
3. **TRL** (when ``trl`` is installed): ``GRPOTrainer`` on the same model folder and prompts at equal settings
   (B rows = B/G prompts x G generated at once, one optimiser step per generation batch accumulated over the same
   micro-batches of ``--micro-batch`` rows, beta 0, token-mean loss (``dapo``), clip 0.2,
   grad-norm 1, the same learning rate, temperature 1, top_p 1, top_k 0, forced full-length completions, float32
   master weights with bf16 autocast, no gradient checkpointing): median step time, peak memory, generation tokens/s.
4. **vLLM** (when ``vllm`` is installed and the device is a GPU): npo_lab's GRPO steps with ``llm.engine = "vllm"``.

A part whose package is missing is skipped and says so in the output; so is a part that would not fit in what is
left of ``--budget-s``. Results go to stdout as a table and, with ``--out``, to a JSON file.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen/Qwen3-VL-2B-Instruct's config.json (text and vision sizes; vocabulary 151,936, tied embeddings)
    "2b": {
        "text": dict(
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=262144,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),
        "vision": dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=2048,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17],
        ),
        "vocab_size": 151936,
        "tie": True,
    },
}
"""The GPU check's model shape; ``--shape tiny`` (the CPU test of this script) is npo_lab.llm.model.tiny_config."""


# ---- npo_lab's training entry points: the one place this script names npo_lab's internal modules ----------------
def npo_lab_api() -> dict[str, Any]:
    """make_state / grpo_step / train / make_method and the configs, from wherever npo_lab keeps them."""
    from npo_lab.config import GRPOConfig, MethodConfigs, NPOConfig, RunConfig
    from npo_lab.methods import make_method
    from npo_lab.metrics import MemoryLogger
    from npo_lab.train import grpo_step, make_state, train

    return dict(
        GRPOConfig=GRPOConfig,
        MethodConfigs=MethodConfigs,
        NPOConfig=NPOConfig,
        RunConfig=RunConfig,
        MemoryLogger=MemoryLogger,
        make_method=make_method,
        grpo_step=grpo_step,
        make_state=make_state,
        train=train,
    )


def reward_length(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 for a completion with an even number of characters: cheap, deterministic, mixed groups (so the gate
    finds failing groups and the guide finds rows that pass), the same function on both sides."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]  # TRL passes conversational completions as messages
        if isinstance(text, list):
            text = "".join(part.get("text") or "" for part in text)
        out.append(float(len(text) % 2 == 0))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted([*SHAPES, "tiny"]), default="2b")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="", help="default: bfloat16 on a GPU")
    p.add_argument("--batch", type=int, default=64, help="rows per step, B = prompts x G")
    p.add_argument("--group", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--completion", type=int, default=256, help="new tokens per completion (forced)")
    p.add_argument("--image-size", type=int, default=448, help="square images; 448 px = 196 image tokens at 2b")
    p.add_argument("--micro-batch", type=int, default=8, help="rows per forward/backward (gradient accumulation)")
    p.add_argument("--steps", type=int, default=4, help="timed GRPO steps per side (after one warm-up step)")
    p.add_argument("--delta", type=int, default=2, help="NPO look-ahead steps")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=540.0, help="skip a part that would not finish within this")
    p.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True, help="run TRL when installed")
    p.add_argument("--vllm", action=argparse.BooleanOptionalAction, default=True, help="run vLLM when installed")
    p.add_argument("--scratch", default="", help="folder for the model and checkpoints (default: a temporary one)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    a = p.parse_args(argv)
    if min(a.batch, a.group, a.micro_batch, a.image_size) < 1:
        p.error("--batch, --group, --micro-batch and --image-size must be >= 1")
    if a.batch % a.group or a.batch % a.micro_batch:
        p.error(f"--batch {a.batch} must be divisible by --group {a.group} and --micro-batch {a.micro_batch}")
    if min(a.steps, a.delta, a.completion) < 1:
        p.error("--steps, --delta and --completion must be >= 1")
    return a


# ---- the model folder -------------------------------------------------------------------------------------------
def model_config(shape: str, tokenizer: Any) -> Any:
    """The ``Qwen3VLConfig`` of ``shape`` with the special-token ids of ``tokenizer``."""
    from npo_lab.llm.model import SPECIAL_TOKENS, tiny_config
    from transformers import Qwen3VLConfig

    if shape == "tiny":  # the tiny model of the CPU tests, with tied embeddings like the 2B model
        return tiny_config(tokenizer, tie=True)
    spec = SHAPES[shape]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(spec["text"], vocab_size=spec["vocab_size"] or len(tokenizer))
    text.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=ids["<|im_end|>"])
    return Qwen3VLConfig(
        text_config=text,
        vision_config=spec["vision"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec["tie"],
    )


def write_model(shape: str, folder: Path, device: Any, seed: int, image_size: int) -> dict[str, Any]:
    """A random Qwen3-VL of ``shape``, its tokenizer and processor in ``folder`` (bf16 weights on disk)."""
    import torch
    from npo_lab.llm.model import CHAT_TEMPLATE, Qwen3VLImageOnlyProcessor, build_tiny_tokenizer
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.utils import is_torchvision_available

    tokenizer = build_tiny_tokenizer()
    config = model_config(shape, tokenizer)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):  # initialised where it will run: seconds for 2 B parameters on a GPU
            model = Qwen3VLForConditionalGeneration(config)
    model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    del model
    pixels = image_size * image_size
    sizes = dict(patch_size=16, merge_size=2, temporal_patch_size=2)
    image_kw = dict(
        size={"shortest_edge": min(pixels, 32 * 32), "longest_edge": pixels},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        **sizes,
    )
    if is_torchvision_available():  # GPU machines: the stock processor, which AutoProcessor and vLLM load back
        from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

        processor = Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(**image_kw),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(**sizes),
            chat_template=CHAT_TEMPLATE,
        )
    else:  # the CPU build of torch: npo_lab.llm.model's image-only processor (docs/llm.md, "Install")
        processor = Qwen3VLImageOnlyProcessor(
            image_processor=Qwen2VLImageProcessorPil(**image_kw), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
        )
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"parameters": n_params, "vision_parameters": n_vision, "write_s": time.perf_counter() - t0}


# ---- measurement helpers ------------------------------------------------------------------------------------------
class Memory:
    """Peak memory of a phase: CUDA's peak allocated bytes (reset at the start), or None on CPU."""

    def __init__(self, device: Any) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        import torch

        if not self.cuda:
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def llm_config(args: argparse.Namespace, folder: Path, n_prompts: int, engine: str = "hf") -> Any:
    from npo_lab.llm.config import DataConfig, LLMConfig, RewardConfig

    return LLMConfig(
        model=str(folder),
        dtype=args.dtype,
        device=args.device,
        max_new_tokens=args.completion,
        max_prompt_tokens=4096,
        temperature=1.0,
        top_p=1.0,
        micro_batch=args.batch,  # generation and no-grad passes over all B rows at once, as TRL generates
        engine=engine,
        scratch_dir=str(folder.parent),
        data=DataConfig(
            synthetic_task="reason",
            synthetic_train=n_prompts,
            synthetic_eval=4,  # the backend needs a held-out split; evaluate() is never called here
            eval_rows=4,
            image_size=args.image_size,
        ),
        reward=RewardConfig(accuracy_weight=0.0, custom="gpu_npo_step:reward_length"),
    )


def grpo_config(api: dict[str, Any], args: argparse.Namespace) -> Any:
    return api["GRPOConfig"](
        batch_size=args.batch,
        group_size=args.group,
        minibatch_size=0,
        micro_batch_size=args.micro_batch,
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


def make_backend(args: argparse.Namespace, folder: Path, n_prompts: int, engine: str = "hf") -> Any:
    from npo_lab.llm.backend import QwenVLBackend

    backend = QwenVLBackend(llm_config(args, folder, n_prompts, engine), seed=args.seed)
    backend.model.generation_config.min_new_tokens = args.completion  # every completion has the full length
    if backend.engine is not None:  # vLLM: the same forced length through its sampling parameters
        backend.engine._sampling_params = functools.partial(
            backend.engine._sampling_params, min_tokens=args.completion
        )
    return backend


def run_npo_lab(args: argparse.Namespace, folder: Path, device: Any, engine: str = "hf") -> dict[str, Any]:
    """Plain GRPO steps, then step 0 of an NPO run (look-ahead, rollback, guided step)."""
    api = npo_lab_api()
    mem = Memory(device)
    n_prompts = (args.steps + args.delta + 4) * args.batch // args.group
    grpo = grpo_config(api, args)
    out: dict[str, Any] = {"engine": engine}
    mem.start()
    t0 = time.perf_counter()
    backend = make_backend(args, folder, n_prompts, engine)
    out["load_s"] = time.perf_counter() - t0
    state = api["make_state"](backend, grpo, args.seed)
    api["grpo_step"](state, grpo)  # warm-up: kernels, allocator, caches
    steps, phases = [], []
    gen_tok0, gen_s0 = backend.stats["generated_tokens"], backend.stats["generate_s"]
    for _ in range(args.steps):
        _sync(device)
        t = time.perf_counter()
        m = api["grpo_step"](state, grpo)
        _sync(device)
        steps.append(time.perf_counter() - t)
        phases.append({k: v for k, v in m.items() if k.startswith("time/")})
    gen_tok = backend.stats["generated_tokens"] - gen_tok0
    gen_s = backend.stats["generate_s"] - gen_s0
    out["grpo"] = {
        "step_s": steps,
        "median_step_s": _median(steps),
        "phases_mean_s": {k: statistics.fmean(p.get(k, 0.0) for p in phases) for k in sorted(phases[0])},
        "generated_tokens": gen_tok,
        "generate_s": gen_s,
        "generation_tokens_per_s": gen_tok / gen_s if gen_s > 0 else None,
        "peak_gib": mem.peak_gib(),
    }
    if engine == "hf":
        mem.start()
        npo = api["NPOConfig"](delta=args.delta, interventions=(0,))
        source = api["make_method"]("npo", api["MethodConfigs"](npo=npo), 1, grpo=grpo)
        log = api["MemoryLogger"]()
        run = api["RunConfig"](steps=1, eval_every=1)
        state = api["make_state"](backend, grpo, args.seed)  # step 0: the intervention's step
        t = time.perf_counter()
        api["train"](state, source, run, grpo, lambda: {"eval/accuracy": 0.0}, seed=args.seed, logger=log)
        _sync(device)
        total = time.perf_counter() - t
        step = next(m for _, m in log.rows if "npo/lookahead_s" in m)
        out["npo"] = {
            "intervention_s": total,
            "lookahead_s": step["npo/lookahead_s"],
            "guided_step_s": step["time/step"],
            "delta": args.delta,
            "guide_rows": step.get("guide/rows", 0.0),
            "gated_frac": step.get("guide/gated_frac", 0.0),
            "phases_s": {k: v for k, v in step.items() if k.startswith("time/")},
            "peak_gib": mem.peak_gib(),
        }
    backend.close()
    del state, backend
    mem.start()
    return out


def run_trl(args: argparse.Namespace, folder: Path, device: Any) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same folder and prompts at equal settings (module docstring)."""
    import torch
    import trl
    from datasets import Dataset
    from npo_lab.llm.example import IMAGE_MARKER
    from npo_lab.llm.model import load_processor
    from npo_lab.llm.synthetic import make_synthetic
    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    mem = Memory(device)
    mem.start()
    n_steps = args.steps + 1
    n_prompts = (n_steps + 1) * args.batch // args.group
    examples = make_synthetic("reason", n_prompts, args.seed, args.image_size)
    from npo_lab.llm.config import DataConfig

    system = DataConfig().system_prompt
    prompts = [
        [{"role": "system", "content": system}, {"role": "user", "content": ex.question.replace(IMAGE_MARKER, "")}]
        for ex in examples
    ]
    dataset = Dataset.from_dict({"prompt": prompts, "image": [ex.images[0] for ex in examples]})
    cuda = device.type == "cuda"
    bf16 = (args.dtype or ("bfloat16" if cuda else "float32")) == "bfloat16"
    trl_cfg = TRLConfig(
        output_dir=str(folder.parent / "trl"),
        per_device_train_batch_size=args.micro_batch,  # npo_lab's micro-batches: the same accumulation
        gradient_accumulation_steps=args.batch // args.micro_batch,
        steps_per_generation=args.batch // args.micro_batch,  # one generation batch of B rows per optimiser step
        num_generations=args.group,
        num_iterations=1,
        max_completion_length=args.completion,
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
        max_steps=n_steps,
        gradient_checkpointing=False,
        use_cpu=not cuda,
        bf16=bf16,  # autocast over float32 master weights, as npo_lab
        fp16=False,
        model_init_kwargs={"dtype": torch.float32},
        report_to="none",
        logging_steps=10**6,
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        seed=args.seed,
        generation_kwargs={"min_new_tokens": args.completion},
    )
    t0 = time.perf_counter()
    trainer = GRPOTrainer(
        model=str(folder),
        reward_funcs=[reward_length],
        args=trl_cfg,
        train_dataset=dataset,
        processing_class=load_processor(str(folder), local_files_only=True),
    )
    load_s = time.perf_counter() - t0
    gen: dict[str, float] = {"s": 0.0}
    generate = trainer._generate  # timed like npo_lab's generate: prompt encoding + model.generate

    def timed_generate(*a: Any, **kw: Any) -> Any:
        _sync(device)
        t = time.perf_counter()
        try:
            return generate(*a, **kw)
        finally:
            _sync(device)
            gen["s"] += time.perf_counter() - t

    trainer._generate = timed_generate
    rec: dict[str, list[float]] = {"step_s": [], "gen_s": [], "lengths": []}
    metrics = trainer._metrics  # TRL's per-step metric lists (cleared whenever it logs)

    class Timer(TrainerCallback):
        def on_step_begin(self, a_: Any, st: Any, c: Any, **kw: Any) -> None:
            _sync(device)
            self.t, self.g = time.perf_counter(), gen["s"]

        def on_step_end(self, a_: Any, st: Any, c: Any, **kw: Any) -> None:
            _sync(device)
            if st.global_step > 1:  # the first step is the warm-up
                rec["step_s"].append(time.perf_counter() - self.t)
                rec["gen_s"].append(gen["s"] - self.g)
                rec["lengths"].append(metrics["train"]["completions/mean_length"][-1])

    trainer.add_callback(Timer())
    trainer.train()
    lengths = rec["lengths"]
    tokens = sum(lengths) * args.batch
    out = {
        "version": trl.__version__,
        "load_s": load_s,
        "step_s": rec["step_s"],
        "median_step_s": _median(rec["step_s"]),
        "mean_completion_tokens": statistics.fmean(lengths) if lengths else None,
        "generation_tokens_per_s": tokens / sum(rec["gen_s"]) if sum(rec["gen_s"]) > 0 else None,
        "peak_gib": mem.peak_gib(),
    }
    del trainer
    mem.start()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    t_start = time.perf_counter()
    sys.path.insert(0, str(HERE))  # so that 'gpu_npo_step:reward_length' imports for npo_lab's RewardSet
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --shape tiny for the CPU check")
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    root = Path(args.scratch or tempfile.mkdtemp(prefix="gpu_npo_step_"))
    folder = root / f"qwen3vl-{args.shape}-random"
    result: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]) if argv is None else "gpu_npo_step.main(" + repr(argv) + ")",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "scratch")},
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "skipped": {},
    }
    result["model"] = write_model(args.shape, folder, device, args.seed, args.image_size)
    print(f"model: {_count(result['model']['parameters'])} parameters, written in {result['model']['write_s']:.0f} s")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    t = time.perf_counter()
    result["npo_lab"] = run_npo_lab(args, folder, device)
    part_s = time.perf_counter() - t
    result["npo_lab"]["part_s"] = part_s
    import transformers

    result["machine"]["transformers"] = transformers.__version__
    if not args.trl:
        result["skipped"]["trl"] = "--no-trl"
    elif importlib.util.find_spec("trl") is None:
        result["skipped"]["trl"] = "trl is not installed (pip install -e '.[llm,bench]')"
    elif left() < part_s:
        result["skipped"]["trl"] = f"not enough of --budget-s left ({left():.0f} s; npo_lab took {part_s:.0f} s)"
    else:
        result["trl"] = run_trl(args, folder, device)
    if not args.vllm:
        result["skipped"]["vllm"] = "--no-vllm"
    elif importlib.util.find_spec("vllm") is None:
        result["skipped"]["vllm"] = "vllm is not installed (its own environment: pip install -e '.[vllm]')"
    elif device.type != "cuda":
        result["skipped"]["vllm"] = "vLLM needs a GPU"
    elif left() < part_s:
        result["skipped"]["vllm"] = f"not enough of --budget-s left ({left():.0f} s)"
    else:
        result["vllm"] = run_npo_lab(args, folder, device, engine="vllm")
    result["wall_s"] = time.perf_counter() - t_start
    print(report(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def report(r: dict[str, Any]) -> str:
    """The results as a markdown table (the format of docs/benchmarks.md)."""

    def f(x: float | None, unit: str = "", digits: int = 2) -> str:
        return "—" if x is None else f"{x:.{digits}f}{unit}"

    s = r["settings"]
    lines = [
        f"{_count(r['model']['parameters'])} parameters ({s['shape']}), {s['dtype']}, {r['machine']['device']}; "
        f"B {s['batch']} = {s['batch'] // s['group']} prompts x G {s['group']}, {s['completion']} tokens per "
        f"completion, micro-batch {s['micro_batch']}, {s['image_size']} px images",
        "",
        "| run | median step | generation tokens/s | peak memory |",
        "|---|---|---|---|",
    ]
    nl = r["npo_lab"]
    g = nl["grpo"]
    lines.append(f"| npo_lab GRPO step | {f(g['median_step_s'], ' s')} | {f(g['generation_tokens_per_s'], '', 0)} | "
                 f"{f(g['peak_gib'], ' GiB')} |")  # fmt: skip
    if "npo" in nl:
        n = nl["npo"]
        lines.append(
            f"| npo_lab NPO intervention (look-ahead {n['delta']} steps {f(n['lookahead_s'], ' s')} + guided step "
            f"{f(n['guided_step_s'], ' s')}) | {f(n['intervention_s'], ' s')} | | {f(n['peak_gib'], ' GiB')} |"
        )
    if "trl" in r:
        t = r["trl"]
        lines.append(f"| TRL {t['version']} GRPOTrainer step | {f(t['median_step_s'], ' s')} | "
                     f"{f(t['generation_tokens_per_s'], '', 0)} | {f(t['peak_gib'], ' GiB')} |")  # fmt: skip
    if "vllm" in r:
        v = r["vllm"]["grpo"]
        lines.append(f"| npo_lab GRPO step, vLLM engine | {f(v['median_step_s'], ' s')} | "
                     f"{f(v['generation_tokens_per_s'], '', 0)} | {f(v['peak_gib'], ' GiB')} |")  # fmt: skip
    for part, why in r["skipped"].items():
        lines.append(f"| {part}: skipped | {why} | | |")
    lines.append(f"\nwall time {r['wall_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Cells of notebooks/06_qwen3vl_backend.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "06_qwen3vl_backend.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 6. The Qwen3-VL backend: a tiny model on synthetic image tasks, and the real 8B run

        **CPU recipe.** Builds a tiny random Qwen3-VL offline (a config, a locally trained tokenizer, about 250k
        parameters, warm-started for 150 supervised steps to answer in `\boxed{}`), shows the synthetic image task,
        decodes one rollout batch graded by math-verify, runs 6 NPO steps (look-ahead with disk checkpoints, exact
        rollback, guide rows), then reads the paper's 8B recipe and prints its batch and memory plan. Nothing is
        downloaded. Expected runtime on 2 CPU cores: about **15 s** (measured: 14-17 s for the whole notebook, up to
        twice that on a busy machine). Expected result: the rollback restores bit-identical log-probs; 9 guide rows
        from π_{t+Δ} are merged into failing groups over the guided steps; the 8B plan on 32 GPUs estimates 54 GiB (66
        GiB on 8 GPUs) per GPU.

        **What this notebook does not show: learning.** The tiny model cannot read these images: trained
        *supervised* on the answers for 600 steps it stays at chance on held-out rows (docs/benchmarks.md §8), so
        its RL curves are noise. On CPU this backend checks the path end to end; learning claims belong to the
        arithmetic and gymnasium backends (notebooks 1-5) and to real models on GPUs.

        The same NPO core drives a vision-language model through transformers (docs/llm.md): one row is a
        completion of an (image + question) prompt, its reward is verified with math-verify, and a **prompt id is a
        dataset row**, a group is G completions of it.
        """,
    ),
    (
        "code",
        r"""
        import warnings

        warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook check, from transformers
        """,
    ),
    (
        "code",
        r"""
        import matplotlib.pyplot as plt
        import torch
        from npo_lab.llm.backend import QwenVLBackend
        from npo_lab.llm.config import DataConfig, LLMConfig

        from npo_lab.utils import seed_everything

        torch.set_num_threads(1)  # the tiny model runs fastest on one thread (and CI has 2 cores)
        SEED = 0
        seed_everything(SEED)
        cfg = LLMConfig(
            model="tiny",  # built locally from a config; a hub id or a folder goes through the same loading path
            max_new_tokens=12,
            data=DataConfig(synthetic_task="mixed", synthetic_train=64, synthetic_eval=32, eval_rows=32),
        )
        backend = QwenVLBackend(cfg, seed=SEED)
        print(f"model folder: {backend.name}")
        print(f"parameters: {backend.counts}; warm-start loss {backend.warm_start_loss:.3f}")
        print(f"{backend.num_prompts} training rows, {len(backend.eval_set)} held-out rows")
        print(f"processor: {type(backend.processor).__name__}")
        """,
    ),
    (
        "md",
        r"""
        ## 6.1 The synthetic image task

        `llm.data.dataset = "synthetic"` draws verifiable image tasks with PIL, offline and deterministic
        (`npo_lab.llm.synthetic`): *count* (how many shapes?), *digits* (add the digits), *mixed* (both, alternating),
        and *color* (the number of one large shape's colour). The answer is graded by math-verify on the last
        `\boxed{}` of the completion.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.llm.synthetic import make_synthetic

        examples = backend.train_set[:4] + make_synthetic("color", 2, seed=0)
        fig, axes = plt.subplots(1, len(examples), figsize=(2.6 * len(examples), 3.2))
        for ax, ex in zip(axes, examples):
            ax.imshow(ex.images[0])
            ax.set_title(f"{ex.columns['task']}: answer {ex.answer}", fontsize=9)
            ax.set_xlabel(f"{ex.images[0].size[0]} x {ex.images[0].size[1]} px", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("synthetic training rows (count, digits; and two of the color task)")
        fig.tight_layout()
        plt.show()
        for ex in examples[:2]:
            print(repr(ex.question))
        """,
    ),
    (
        "md",
        r"""
        ## 6.2 One rollout batch

        The prompt is the model's chat template with the system prompt `llm.data.system_prompt`, the image and the
        question. `rollout(prompt_ids, G)` samples G completions per row with `generate` (temperature
        `llm.temperature`, at most `llm.max_new_tokens` tokens) and scores them. Rows sampled from the current
        weights leave `behavior_logprobs` NaN: they equal the ratio anchor the trainer computes in the update's own
        forward pass anyway (no extra pass, as TRL with `num_iterations = 1`).
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.llm.data import build_messages

        messages = build_messages(backend.train_set[0], cfg.data.system_prompt)
        print(backend.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        batch = backend.rollout([0, 1], 4)
        for text, r, g in zip(backend.decode_batch(batch), batch.rewards.tolist(), batch.group_ids.tolist()):
            print(f"row {g} (answer {backend.train_set[g].answer:>2}): {text!r:32} reward {r:.0f}")
        tokens = batch.mask.bool()  # (B, T): completion tokens, padding after each row's end
        print(
            "mask (B, T):",
            tuple(batch.mask.shape),
            "; behaviour log-probs NaN on every token:",
            bool(batch.behavior_logprobs[tokens].isnan().all()),
        )
        assert batch.behavior_logprobs[tokens].isnan().all()
        """,
    ),
    (
        "md",
        r"""
        ## 6.3 A few NPO steps: look-ahead, rollback, guide rows

        The trainer and NPO driver are the ones of notebooks 1-4. What differs is the cost of `save` and `load`: a
        checkpoint here is a `save_pretrained` folder on disk (safetensors), which a guide model loads directly for
        generation, and `load` reads it back into the training model in place. First the rollback, by hand: the
        log-probs of a fixed batch are bit-identical before the look-ahead and after it.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.config import GRPOConfig, MethodConfigs, NPOConfig, RunConfig
        from npo_lab.train import grpo_step, lookahead, make_state

        grpo = GRPOConfig(batch_size=32, group_size=8, lr=1e-3)  # 4 prompts x G = 8 (recipes/tiny_cpu.toml)
        npo = NPOConfig(delta=2, interventions=(0,))
        state = make_state(backend, grpo, seed=SEED)
        with torch.no_grad():
            before, _ = backend.logprobs(batch)
        res = lookahead(state, npo.delta, lambda: grpo_step(state, grpo))
        with torch.no_grad():
            after, _ = backend.logprobs(batch)
            ahead, _ = backend.logprobs(batch, policy=res.checkpoint)
        print(f"looked ahead {res.steps} steps in {res.seconds:.1f} s; pi_t+{npo.delta} is the checkpoint folder:")
        print(sorted(p.name for p in res.checkpoint.path.iterdir()))
        gap = ((ahead - after).abs() * batch.mask).sum() / batch.mask.sum()
        print(f"mean |log pi_t+Δ - log pi_t| on the batch's tokens: {gap:.4f}")
        assert torch.equal(before, after), "the rollback must restore the weights exactly"
        assert not torch.equal(after, ahead)  # the near future is another policy
        """,
    ),
    (
        "md",
        r"""
        Now the loop with the NPO source (`make_method("npo", ...)` → `NPO`): an intervention at step 0
        (Δ = 2 here, to keep it quick), then guided steps. The metrics show the mechanics: `npo/intervention` and
        `npo/lookahead_s` at step 1, then on each guided step the groups below the gate (`guide/gated_frac`), the
        guide rows merged (`guide/rows`) and their rewards (`reward/accuracy/guide`).
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.methods import make_method
        from npo_lab.metrics import MemoryLogger
        from npo_lab.train import train

        STEPS = 6
        seed_everything(SEED)
        state = make_state(backend, grpo, seed=SEED)
        source = make_method("npo", MethodConfigs(npo=npo), STEPS, grpo=grpo)
        log = MemoryLogger()
        result = train(state, source, RunConfig(steps=STEPS, eval_every=STEPS), grpo, seed=SEED, logger=log)
        steps = [(s, m) for s, m in log.rows if "reward/on_policy_mean" in m]
        keys = [
            "reward/on_policy_mean",
            "guide/gated_frac",
            "guide/found_frac",
            "guide/rows",
            "reward/accuracy/guide",
            "loss/policy",
            "npo/lookahead_s",
        ]
        print("step " + " ".join(f"{k.split('/', 1)[1]:>16}" for k in keys))
        for s, m in steps:
            print(f"{s:4d} " + " ".join(f"{m[k]:16.3f}" if k in m else f"{'-':>16}" for k in keys))
        guide_rows = sum(m.get("guide/rows", 0.0) for _, m in steps)
        print(f"evals: {result.evals}; look-ahead steps: {result.lookahead_steps}; guide rows merged: {guide_rows:.0f}")
        assert result.interventions == [0] and result.lookahead_steps == npo.delta
        assert guide_rows > 0  # failing groups did receive verified-correct rows of pi_t+Δ
        """,
    ),
    (
        "md",
        r"""
        ## 6.4 From the tiny model to the paper's 8B run: a config change

        `recipes/qwen3vl_8b_paper.toml` is the paper's setting (Qwen3-VL-8B-Instruct, GRPO, gate 0.6, one guide
        slot, 4096 prompt + 4096 response tokens); every other value is marked `[assumption]` in the file. It is
        read by the same loader as `npo-lab train --config`; the differences from what this notebook ran:
        """,
    ),
    (
        "code",
        r"""
        from pathlib import Path

        import npo_lab
        from npo_lab.cli import TrainCommand, load_config_file


        def find_recipe(name):
            "The recipes/ folder of this checkout (the notebook may run from another working directory)."
            here = [Path.cwd(), *Path.cwd().parents, Path(npo_lab.__file__).resolve().parents[1]]
            return next(p / "recipes" / name for p in here if (p / "recipes" / name).is_file())


        paper = load_config_file(TrainCommand, str(find_recipe("qwen3vl_8b_paper.toml")))
        rows = [
            ("llm.model", cfg.model, paper.llm.model),
            ("llm.dtype", cfg.dtype, paper.llm.dtype),
            ("llm.gradient_checkpointing", cfg.gradient_checkpointing, paper.llm.gradient_checkpointing),
            ("llm.max_prompt_tokens", cfg.max_prompt_tokens, paper.llm.max_prompt_tokens),
            ("llm.max_new_tokens", cfg.max_new_tokens, paper.llm.max_new_tokens),
            ("llm.data.dataset", cfg.data.dataset, paper.llm.data.dataset),
            ("grpo.batch_size", grpo.batch_size, paper.grpo.batch_size),
            ("grpo.minibatch_size", grpo.minibatch_size, paper.grpo.minibatch_size),
            ("grpo.micro_batch_size", grpo.micro_batch_size, paper.grpo.micro_batch_size),
            ("grpo.lr", grpo.lr, paper.grpo.lr),
            ("npo.delta", npo.delta, paper.npo.delta),
            ("npo.interventions", npo.interventions, paper.npo.interventions),
            ("steps", STEPS, paper.steps),
        ]
        print(f"{'field':28s} {'this notebook':>28s} {'qwen3vl_8b_paper.toml':>28s}")
        for name, here, there in rows:
            print(f"{name:28s} {str(here):>28s} {str(there):>28s}")
        assert paper.llm.model == "Qwen/Qwen3-VL-8B-Instruct" and paper.npo.gate == 0.6 and paper.npo.guide_slots == 1
        """,
    ),
    (
        "md",
        r"""
        The launch is `accelerate launch --config_file configs/accelerate/fsdp2.yaml -m npo_lab train --config
        recipes/qwen3vl_8b_paper.toml` (FSDP2 over every GPU). Before renting GPUs, `--dry-run` prints the batch
        arithmetic and a per-GPU memory estimate without loading any weights (`npo_lab.llm.plan.plan`; the formulas
        are in its docstring). The paper trained on 32 H200s; here the plan for 8 and for 32 GPUs:
        """,
    ),
    (
        "code",
        r"""
        from IPython.display import Markdown, display
        from npo_lab.llm.plan import plan

        reports = {w: plan(paper.llm, paper.grpo, paper.method, world_size=w) for w in (8, 32)}
        display(Markdown(reports[32]))


        def memory_rows(report):
            "The (component, GiB) rows of a plan's memory table."
            out = {}
            for line in report.splitlines():
                cells = [c.strip(" *") for c in line.strip().strip("|").split("|")]
                if len(cells) == 2 and cells[1].endswith("GiB") and cells[0] != "total":
                    out[cells[0]] = float(cells[1].split()[0])
            return out


        mem = {w: memory_rows(r) for w, r in reports.items()}
        totals = {w: sum(m.values()) for w, m in mem.items()}
        print({w: f"{t:.1f} GiB" for w, t in totals.items()})
        assert totals[8] > totals[32]  # sharding the weights, gradients and Adam moments over more GPUs
        """,
    ),
    (
        "code",
        r"""
        names = list(mem[32])
        fig, ax = plt.subplots(figsize=(9, 4))
        y = range(len(names))
        ax.barh([i + 0.2 for i in y], [mem[8][n] for n in names], height=0.4, label=f"8 GPUs (total {totals[8]:.0f} GiB)")
        ax.barh([i - 0.2 for i in y], [mem[32][n] for n in names], height=0.4, label=f"32 GPUs (total {totals[32]:.0f} GiB)")
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlabel("estimated GiB per GPU")
        ax.set_title("Qwen3-VL-8B NPO recipe: per-GPU memory estimate (llm/plan.py)")
        ax.grid(alpha=0.3, axis="x")
        ax.legend()
        fig.tight_layout()
        plt.show()
        backend.close()  # stops the math-verify worker process
        """,
    ),
    (
        "md",
        r"""
        **Reading the figure.** The sharded parts (weights, gradients, Adam moments) shrink with more GPUs; what
        does not shrink is per-GPU work: the unsharded bf16 guide model π_{t+Δ} (16 GiB: NPO's price in memory),
        the KV cache of 16 generation rows of 8192 tokens, and the float32 log-probs over the 150k vocabulary. On
        disk, each look-ahead checkpoint holds the float32 master weights (32 GiB; docs/llm.md).

        **Try.** `npo-lab train --backend qwen-vl --method npo --steps 40` and `npo-lab compare --config
        recipes/tiny_cpu.toml` (about 70 s, GRPO and NPO at chance, as said); the *color* task, the one the tiny
        model can see (`DataConfig(synthetic_task="color")`, `LLMConfig(tiny_warm_steps=80)`): GRPO at lr 3e-4 with
        8 prompts × G = 8 for 60 steps moved held-out accuracy 0.44 → 0.55, 0.14 → 0.28 and 0.45 → 0.64 on seeds
        0-2 here, and not at all at lr 1e-4 (a minute per seed: a small signal, not a clean demonstration);
        `recipes/qwen3vl_2b_lora.toml` for one GPU.
        """,
    ),
]

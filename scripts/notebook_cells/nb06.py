"""Cells of notebooks/06_qwen3vl_backend.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "06_qwen3vl_backend.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 6. The Qwen3-VL backend: a tiny model learns a drawn image task on CPU, and the real 8B run

        **CPU recipe.** Builds a tiny random Qwen3-VL offline (a config, a locally trained tokenizer, about 250k
        parameters), shows the synthetic `reason` task family (read the image, then one small step of reasoning),
        warm-starts the model with 300 supervised steps on one kind of it, *color_add* ("the number of the shape's
        colour plus m"), decodes one rollout batch graded by math-verify, then trains **100 GRPO steps** through the
        real backend (processor, chat template, math-verify rewards) and shows held-out accuracy rise. Then NPO's
        look-ahead with disk checkpoints and exact rollback, a few guided steps, and the paper's 8B recipe with its
        batch and memory plan. Nothing is downloaded. Expected runtime on 2 CPU cores: about **90 s** (88 s measured,
        with other work running on the machine). Expected result: held-out accuracy 0.34 → 0.47 over the 100 GRPO
        steps (128 held-out images, greedy decoding; chance is about 0.2); the rollback restores
        bit-identical log-probs; guide rows from π_{t+Δ} are merged into failing groups; the 8B plan on 32 GPUs
        estimates 54 GiB (66 GiB on 8 GPUs) per GPU.

        **How far this goes.** One seed and 100 steps here; docs/benchmarks.md section 10 has GRPO, NPO and AutoNPO
        over 5 seeds (200 steps each) and the kinds the tiny model does *not* learn within a CPU budget (mixing the
        kinds, comparing two digits). `tests/llm/test_qwen_learning.py` runs this same GRPO run in CI, and checks that
        flipping the advantage's sign or shifting the completion's log-probs by one token breaks it.

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
            tiny_warm_steps=300,  # supervised steps on '\boxed{answer}' completions: a low, non-zero start
            max_new_tokens=8,
            micro_batch=64,
            data=DataConfig(
                synthetic_task="reason",
                reason_kinds="color_add",
                synthetic_train=1024,
                synthetic_eval=128,
                eval_rows=128,
            ),
        )
        backend = QwenVLBackend(cfg, seed=SEED)
        start = backend.save()  # the warm-started weights (a save_pretrained folder), to start GRPO from below
        print(f"model folder: {backend.name}")
        print(f"parameters: {backend.counts}; warm-start loss {backend.warm_start_loss:.3f}")
        print(f"{backend.num_prompts} training rows, {len(backend.eval_set)} held-out rows")
        print(f"processor: {type(backend.processor).__name__}")
        """,
    ),
    (
        "md",
        r"""
        ## 6.1 The synthetic image tasks

        `llm.data.dataset = "synthetic"` draws verifiable image tasks with PIL, offline and deterministic
        (`npo_lab.llm.synthetic`). The `reason` task asks for one small step of reasoning on top of reading the
        image, in several phrasings, with a whole-number answer: *color_add* (the shape's colour number plus m),
        *larger_color* (the colour number of the larger of two shapes), *count_add* (how many shapes, plus m) and
        *compare* (the larger of two digits); `llm.data.reason_kinds` picks the kinds and `reason_max_addend` the
        range of m. A 64-pixel image is 4 image tokens for the tiny model (one per quadrant), so every fact a question
        needs fills whole quadrants. The answer is graded by math-verify on the last `\boxed{}` of the completion
        (`\boxed{5}`, `\boxed{5.0}` and `\boxed{4+1}` all count for 5; any other number does not).
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.llm.synthetic import make_synthetic

        examples = make_synthetic("reason", 8, seed=1)
        fig, axes = plt.subplots(2, 4, figsize=(11, 6))
        for ax, ex in zip(axes.flat, examples):
            ax.imshow(ex.images[0])
            ax.set_title(f"{ex.columns['kind']}: answer {ex.answer}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("the reason task: one example of each kind per row")
        fig.tight_layout()
        plt.show()
        for ex in examples[:4]:
            print(f"{ex.columns['kind']:>12}: {ex.question!r}")
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
            print(f"row {g} (answer {backend.train_set[g].answer:>2}): {text!r:24} reward {r:.0f}")
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
        ## 6.3 GRPO learns

        Plain GRPO from the warm-started weights: 8 prompts × G = 8 rows per step, Adam at 1e-3, one update per
        batch, 100 steps; held-out accuracy (greedy, on 128 images the model never trains on) before and after, the
        training reward at every step. The trainer is the one of notebooks 1-5; only the backend differs. This is
        the run `tests/llm/test_qwen_learning.py` makes in CI (same seed, same settings: evaluations draw from the
        sampling generator, so it evaluates at the same steps), where flipping the advantage's sign or scoring each
        completion token with the next position's logits drives accuracy down instead.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.config import GRPOConfig, RunConfig
        from npo_lab.methods import GRPO
        from npo_lab.metrics import MemoryLogger
        from npo_lab.train import make_state, train

        grpo = GRPOConfig(batch_size=64, group_size=8, lr=1e-3)
        backend.load(start)  # back to the warm start (weights and sampling RNG), whatever the cells above sampled
        seed_everything(SEED)
        log = MemoryLogger()
        result = train(
            make_state(backend, grpo, seed=SEED), GRPO(), RunConfig(steps=100, eval_every=100), grpo, seed=SEED, logger=log
        )
        steps, acc = zip(*result.evals)
        print("held-out accuracy:", {s: round(a, 3) for s, a in result.evals}, f"({result.wall_s:.0f} s)")

        s_r, r = log.series("reward/on_policy_mean")
        window = 10
        fig, ax = plt.subplots(figsize=(8, 3.8))
        ax.plot(s_r, r, color="C0", alpha=0.3, lw=0.8, label="training reward (on-policy rows)")
        ax.plot(
            s_r[window - 1 :],
            [sum(r[i - window + 1 : i + 1]) / window for i in range(window - 1, len(r))],
            color="C0",
            label=f"its {window}-step mean",
        )
        ax.plot(steps, acc, "o--", color="C1", ms=8, label="held-out accuracy (greedy)")
        ax.set_xlabel("GRPO step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        ax.set_title("the tiny Qwen3-VL on color_add: GRPO from a supervised warm start")
        fig.tight_layout()
        plt.show()
        assert 0.15 <= acc[0] <= 0.5  # a low, non-zero start
        assert acc[-1] - acc[0] >= 0.08  # GRPO raised held-out accuracy (0.34 -> 0.47 on the CI-class machine)
        """,
    ),
    (
        "md",
        r"""
        ## 6.4 NPO's look-ahead and rollback on disk

        What differs from the CPU simulations is the cost of `save` and `load`: a checkpoint here is a
        `save_pretrained` folder on disk (safetensors), which a guide model loads directly for generation, and `load`
        reads it back into the training model in place. First the rollback, by hand: the log-probs of a fixed batch
        are bit-identical before the look-ahead and after it.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.config import MethodConfigs, NPOConfig
        from npo_lab.train import grpo_step, lookahead

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
        Now the loop with the NPO method (`make_method("npo", ...)` → `NPO`): an intervention at step 0
        (Δ = 2 here, to keep it quick), then guided steps. The metrics show the mechanics: `npo/intervention` and
        `npo/lookahead_s` at step 1, then on each guided step the groups below the gate (`guide/gated_frac`), the
        guide rows merged (`guide/rows`) and their rewards (`reward/accuracy/guide`). Whether NPO's guide rows make
        the tiny model learn faster than GRPO is the question of docs/benchmarks.md section 10, not of six steps.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.methods import make_method

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
        ## 6.5 From the tiny model to the paper's 8B run: a config change

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

        **Try.** `npo-lab compare --config recipes/tiny_reason.toml` (GRPO, NPO and AutoNPO on this task, 5 seeds,
        about an hour on 2 cores: docs/benchmarks.md section 10); `--llm.data.reason-kinds color_add,count_add` to see how
        much slower the tiny model learns two kinds at once; `npo-lab compare --config recipes/tiny_cpu.toml` for
        the mechanics on the count and digit tasks, which the tiny model cannot read (it stays at chance);
        `recipes/qwen3vl_2b_lora.toml` for one GPU.
        """,
    ),
]

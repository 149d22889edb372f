"""Cells of notebooks/01_grpo_from_scratch.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "01_grpo_from_scratch.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 1. GRPO from scratch

        **CPU recipe.** Runs the pieces of one GRPO step on hand-made tensors (group advantages, the clipped loss, why
        a group of identical rewards teaches nothing), then 200 steps of GRPO on the built-in arithmetic task (3-digit
        addition, a 0.1 M-parameter character transformer). Expected runtime on 2 CPU cores: about **15 s** (measured:
        14 s for the whole notebook, up to twice that on a busy machine). Expected result for seed 0: the warm-started
        policy solves 0.086 of the held-out problems, 0.734 after 200 GRPO steps; over the first 20 steps 72% of the
        groups have identical rewards and give no gradient.

        Everything here calls `npo_lab`: the math is in `npo_lab/core/` (pure functions), the loop in
        `npo_lab/train/step.py`; the equations are in `docs/algorithm.md` §1, each tied to a `--grpo.*` config field.
        """,
    ),
    (
        "code",
        r"""
        import matplotlib.pyplot as plt
        import torch

        from npo_lab.config import GRPOConfig
        from npo_lab.core.advantages import group_advantages, grpo_advantages_loop
        from npo_lab.core.losses import policy_loss
        from npo_lab.utils import seed_everything

        torch.set_num_threads(1)  # these models are tiny: one thread is fastest (and CI has 2 cores)
        seed_everything(0)
        """,
    ),
    (
        "md",
        r"""
        ## 1.1 Group-relative advantages

        For each prompt x the policy samples a *group* of G = `grpo.group_size` completions and a verifier scores
        each: r_i ∈ {0, 1}. GRPO needs no value network: the baseline of a row is the mean reward of its own group
        (`grpo.advantage = "grpo"`, Shao et al. 2024),

            A_i = (r_i − mean_g r) / (std_g r + ε).

        Rows that share a `group_ids` value form a group. Below: four prompts, G = 4. Prompt 0 was solved once,
        prompt 1 twice, prompt 2 never, prompt 3 always.
        """,
    ),
    (
        "code",
        r"""
        G = 4
        rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])  # (B,) = 4 prompts x G
        group_ids = torch.arange(4).repeat_interleave(G)  # (B,): 0 0 0 0 1 1 1 1 ...
        adv, metrics = group_advantages(rewards, group_ids, "grpo")
        print("advantages, one row per group:")
        print(adv.view(4, G))
        print(metrics)

        # the library's vectorised estimator equals the plain-loop reference implementation
        loop = torch.tensor(grpo_advantages_loop(rewards.tolist(), group_ids.tolist()))
        assert torch.allclose(adv, loop, atol=1e-5)
        """,
    ),
    (
        "md",
        r"""
        A correct row in a mostly failing group gets a large positive advantage (+1.5): the rarer the success, the
        stronger the push towards it. **Groups 2 and 3 have identical rewards, so every advantage in them is exactly
        zero**: whatever the policy did there, the update ignores it. `reward/frac_zero_std` (docs/metrics.md) logs
        the fraction of such silent groups; here it is 2 of 4.
        """,
    ),
    (
        "code",
        r"""
        assert (adv.view(4, G)[2:] == 0).all(), "all-wrong and all-right groups must have zero advantage"
        assert metrics["reward/frac_zero_std"] == 0.5

        # Dr. GRPO (grpo.advantage = "dr_grpo") drops the division by the std: same signs, other scale
        adv_dr, _ = group_advantages(rewards, group_ids, "dr_grpo")
        print(adv_dr.view(4, G))
        assert (adv_dr.view(4, G)[2:] == 0).all()
        """,
    ),
    (
        "md",
        r"""
        ## 1.2 The clipped surrogate

        Per token t of row i, with the ratio ρ = π_θ(y_t) / π_old(y_t) (docs/algorithm.md §1):

            ℓ = −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A),     ε_low = grpo.clip_eps_low, ε_high = grpo.clip_eps_high

        `npo_lab.core.losses.policy_loss(logprobs, old_logprobs, advantages, mask)` returns the aggregated loss and a
        metrics dict. Below, one token with ρ swept from 0.5 to 1.5: the loss and its gradient with respect to
        log π_θ, for A = +1 and A = −1. Where the clip is active, the gradient is exactly zero: a row that has
        already moved far enough in the direction its advantage asks for stops pulling.
        """,
    ),
    (
        "code",
        r"""
        grpo = GRPOConfig()  # clip_eps_low = clip_eps_high = 0.2 (PPO's values)
        ratios = torch.linspace(0.5, 1.5, 201)
        curves = {}
        for a in (1.0, -1.0):
            losses, grads = [], []
            for r in ratios:
                logp = torch.log(r).reshape(1, 1).clone().requires_grad_(True)  # (B, T) = (1, 1), old log-prob 0
                loss, m = policy_loss(
                    logp,
                    torch.zeros(1, 1),
                    torch.tensor([a]),
                    torch.ones(1, 1),
                    clip_eps_low=grpo.clip_eps_low,
                    clip_eps_high=grpo.clip_eps_high,
                )
                loss.backward()
                losses.append(loss.item())
                grads.append(logp.grad.item())
            curves[a] = (torch.tensor(losses), torch.tensor(grads))

        lo, hi = 1 - grpo.clip_eps_low, 1 + grpo.clip_eps_high
        g_pos, g_neg = curves[1.0][1], curves[-1.0][1]
        assert (g_pos[ratios > hi + 1e-6] == 0).all() and (g_pos[ratios < hi - 1e-6] != 0).all()
        assert (g_neg[ratios < lo - 1e-6] == 0).all() and (g_neg[ratios > lo + 1e-6] != 0).all()

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for a, style in ((1.0, "-"), (-1.0, "--")):
            axes[0].plot(ratios, curves[a][0], style, label=f"A = {a:+.0f}")
            axes[1].plot(ratios, curves[a][1], style, label=f"A = {a:+.0f}")
        for ax, title in zip(axes, ("per-token loss ℓ", "gradient dℓ / d log π_θ")):
            ax.axvspan(lo, hi, color="gray", alpha=0.15, label="unclipped range [1 − ε, 1 + ε]")
            ax.set_xlabel("ratio ρ = π_θ / π_old")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_ylabel("loss")
        axes[1].set_ylabel("gradient")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        With `grpo.epochs = 1` and one minibatch per batch (the defaults) the update happens before the policy has
        moved, so ρ = 1 exactly and the clip never binds: the gradient is then −A ∇log π_θ(y_t), averaged over
        tokens (`grpo.aggregation = "token_mean"`). The clip matters with several epochs or minibatches.

        ## 1.3 Identical rewards ⇒ zero advantage ⇒ zero gradient

        Now the whole batch of section 1.1 through the loss, with 3 tokens per row and random log-probs (ρ ≠ 1). The
        gradient on every token of the two silent groups is exactly zero.
        """,
    ),
    (
        "code",
        r"""
        T = 3
        old = torch.log_softmax(torch.randn(16, T, 5), -1)[..., 0]  # (B, T) log-probs of the sampled tokens
        logp = (old + 0.1 * torch.randn(16, T)).requires_grad_(True)  # (B, T): the policy has moved a little
        loss, m = policy_loss(logp, old, adv, torch.ones(16, T))
        loss.backward()
        grad_per_group = logp.grad.abs().view(4, G * T).sum(-1)  # (groups,)
        print("|gradient| summed over each group's tokens:", grad_per_group.tolist())
        assert (grad_per_group[2:] == 0).all() and (grad_per_group[:2] > 0).all()
        """,
    ),
    (
        "md",
        r"""
        This is the problem NPO addresses. Early in RLVR training most groups are all wrong (*sparse early
        success*); late in training the remaining hard prompts stay all wrong while the rest are all right (a
        *plateau*). Either way, most of each batch is silent. One verified-correct row in an all-wrong group turns
        it into a group with signal: notebook 3 shows NPO doing exactly that.

        ## 1.4 A real GRPO run: the arithmetic task

        The built-in task (docs/algorithm.md §6, `task.*` fields): prompts like `047+385=`, the answer written
        least-significant digit first, optionally after a scratchpad, ending with `$`; the verifier reads only the
        digits after the last `:`. The policy (`model.*` fields) is a 2-layer character transformer, warm-started
        by 300 supervised steps so that RL starts with low but non-zero success. `ArithmeticBackend` implements the
        backend protocol: `rollout(prompt_ids, n)` samples n completions per prompt and scores them.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.envs.arithmetic_backend import ArithmeticBackend
        from npo_lab.envs.config import TinyLMConfig

        from npo_lab.tasks.arithmetic import ArithmeticConfig, extract_answer

        SEED = 0
        seed_everything(SEED)
        backend = ArithmeticBackend(ArithmeticConfig(digits=3), TinyLMConfig(), seed=SEED)  # includes the warm start
        acc0 = backend.evaluate()["eval/accuracy"]
        print(f"{backend.num_prompts} training prompts; held-out greedy accuracy after the warm start: {acc0:.3f}")

        batch = backend.rollout([0, 1, 2], n=4)  # three prompts, 4 rows each (training uses G = 8)
        for text, r, g in zip(backend.decode_batch(batch), batch.rewards.tolist(), batch.group_ids.tolist()):
            p = backend.train_set[g]
            got = extract_answer(text)
            print(f"prompt {g}: {p.prompt}{text:<14} graded answer {got!s:>5} (true {p.answer})  reward {r:.0f}")
        print("mask (B, T):", tuple(batch.mask.shape), " rewards (B,):", tuple(batch.rewards.shape))
        """,
    ),
    (
        "md",
        r"""
        `npo_lab.train.grpo_step(state, grpo)` is one visible iteration: draw P = `grpo.batch_size / grpo.group_size`
        prompts (16 × 8 = 128 rows by default) → rollout → old log-probs → advantages → clipped loss → Adam step
        (lr `grpo.lr` = 3e-4, gradient-norm clip `grpo.max_grad_norm` = 1). It returns the step's metrics
        (docs/metrics.md). `make_state` builds the optimizer and the data cursor. The loop below is the whole of
        plain GRPO training; `npo_lab.train.train` is the same loop with evaluation, logging and the methods' look-ahead.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.train import grpo_step, make_state

        STEPS, EVAL_EVERY = 200, 10
        state = make_state(backend, grpo, seed=SEED)
        evals, history = [(0, acc0)], []
        for step in range(1, STEPS + 1):
            m = grpo_step(state, grpo)
            history.append(m)
            if step % EVAL_EVERY == 0:
                evals.append((step, backend.evaluate()["eval/accuracy"]))

        silent_early = sum(h["reward/frac_zero_std"] for h in history[:20]) / 20
        print(f"eval accuracy: step 0 {evals[0][1]:.3f} -> step {STEPS} {evals[-1][1]:.3f}")
        print(f"silent groups (identical rewards) over the first 20 steps: {silent_early:.2f}")
        print("metrics of the last step:", {k: round(v, 4) for k, v in m.items() if not k.startswith("time/")})
        assert all(0.0 <= h["reward/frac_zero_std"] <= 1.0 for h in history)
        assert all(h["policy/ratio_mean"] == 1.0 for h in history)  # one epoch, one minibatch: rho = 1 exactly
        """,
    ),
    (
        "code",
        r"""
        steps = list(range(1, STEPS + 1))
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        ax = axes[0]
        ax.plot(*zip(*evals), "o-", label="eval accuracy (greedy, held-out)")
        ax.plot(steps, [h["reward/on_policy_mean"] for h in history], alpha=0.5, label="training reward (sampled)")
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy")
        ax.set_title("GRPO on 3-digit addition (seed 0)")
        ax.legend()
        ax.grid(alpha=0.3)
        ax = axes[1]
        ax.plot(steps, [h["reward/frac_zero_std"] for h in history], color="C3", label="groups with identical rewards")
        ax.set_xlabel("training step")
        ax.set_ylabel("fraction of the 16 groups")
        ax.set_ylim(0, 1)
        ax.set_title("silent groups: zero advantage, zero gradient")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        **Reading the figure.** Left: the greedy held-out accuracy climbs from the warm start; the sampled training
        reward (temperature 1) lags behind it. Right: early on, most groups are all wrong and silent; as the
        policy improves, silent groups become rarer (in a longer run they come back as more and more prompts are
        always solved: all-right groups are silent too).

        **Scale up.** `STEPS = 400` is the benchmark length (docs/benchmarks.md: GRPO ends at 0.83 median over 10
        seeds, with two seeds stalling at 0.22); try `SEED = 3` for a stalled run, `grpo.advantage="dr_grpo"`,
        `grpo.epochs=2` with `grpo.minibatch_size=64` to see the clip bind (`policy/clipfrac`), or `grpo.lr=1e-3`
        (it collapses). From the command line: `npo-lab train --method grpo --seed 0 --steps 400`.
        """,
    ),
]

"""Cells of notebooks/05_gym_backend.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "05_gym_backend.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 5. The gymnasium backend

        **CPU recipe.** What a prompt and a group are when the policy acts in an environment (KeyDoor: a reset seed
        places the key and the door; a group is G episodes from it), then GRPO vs NPO on the combination lock
        `npo_lab/Chain-v0` (1/256 random success), 10 seeds × 60 steps each. Expected runtime on 2 CPU cores: about
        **15 s** (measured: 15 s for the whole notebook, up to twice that on a busy machine). Expected result: both
        methods open the lock on every seed; NPO reaches greedy success 1 in fewer training steps (median 10 vs 15),
        but with its 20 look-ahead steps counted it is slower (30 steps with them counted, against GRPO's 15), as in
        docs/benchmarks.md §6.

        The same NPO core, unchanged (docs/gym.md): a GRPO **prompt is a reset seed**, a **group is G episodes**
        started from `env.reset(seed=prompt_id)`, an episode is one row of the `RolloutBatch` (its steps are the
        row's tokens, `mask` 1 where the policy acted), and its **reward is 1.0 on success**, 0.0 otherwise. Nothing
        in `npo_lab/core` knows about environments.
        """,
    ),
    (
        "code",
        r"""
        import gymnasium as gym
        import matplotlib.pyplot as plt
        import torch
        from npo_lab.envs import gym_envs  # importing it registers the npo_lab/... ids
        from npo_lab.envs.config import GymConfig
        from npo_lab.envs.gym_backend import GymBackend

        from npo_lab.utils import seed_everything

        torch.set_num_threads(1)  # these models are tiny: one thread is fastest (and CI has 2 cores)
        seed_everything(0)
        for env_id, spec in gym_envs.ENV_IDS.items():
            print(f"{env_id:28s} max_episode_steps = {spec['max_episode_steps']}")
        """,
    ),
    (
        "md",
        r"""
        ## 5.1 A prompt is a reset seed

        `npo_lab/KeyDoor-v0`: a 5 × 5 grid; walk onto the key, then onto the door, within 25 steps. The reset seed
        places the agent, the key and the door, so each seed is a different "problem", and resetting with the same
        seed gives the same problem (gymnasium's seeded reset; the environment tests check it for every id).
        """,
    ),
    (
        "code",
        r"""
        env = gym.make("npo_lab/KeyDoor-v0")
        obs_a, _ = env.reset(seed=7)
        obs_b, _ = env.reset(seed=7)
        obs_c, _ = env.reset(seed=8)
        print("observation space:", env.observation_space.shape, " actions:", env.action_space)
        assert (obs_a == obs_b).all() and not (obs_a == obs_c).all()  # same seed, same problem
        env.close()
        """,
    ),
    (
        "md",
        r"""
        `GymBackend(env_id, GymConfig(...), seed)` implements the backend protocol with a small MLP policy
        (`gym.policy`, `gym.hidden`). `rollout([seed], G)` plays G episodes from that reset seed, all in one batch;
        with `gym.vector = True` (the default) they step through gymnasium's `SyncVectorEnv`, with `False` one by one:
        the same episodes, bit for bit (checked below), and faster for environments this small (docs/benchmarks.md
        §6). Below, one batch of the untrained policy (16 reset seeds × 8 episodes), and three of its groups drawn:
        every path of a group starts at the same cell; success (reward 1) needs the key first.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.core.guidance import group_accuracy

        kd = GymBackend("npo_lab/KeyDoor-v0", GymConfig(vector=False), seed=0)
        kd_vec = GymBackend("npo_lab/KeyDoor-v0", GymConfig(vector=True), seed=0)
        G = 8
        batch = kd.rollout(range(16), G)  # 16 prompts (reset seeds 0..15) x G episodes: one GRPO batch
        batch_vec = kd_vec.rollout(range(16), G)
        assert torch.equal(batch.rewards, batch_vec.rewards) and torch.equal(batch.mask, batch_vec.mask)
        assert all(torch.equal(a["actions"], b["actions"]) for a, b in zip(batch.extras, batch_vec.extras))
        acc = group_accuracy(batch.rewards, batch.group_ids)
        print("B =", batch.size, "rows; mask (B, T) =", tuple(batch.mask.shape))
        print("group accuracy per reset seed:", {s: round(a, 3) for s, a in acc.items()})
        silent = sum(a in (0.0, 1.0) for a in acc.values())
        print(f"{silent} of {len(acc)} groups are silent (all episodes fail or all succeed)")
        # show the two groups with the most successes and one silent group
        ranked = sorted(acc, key=lambda s: -acc[s])
        SEEDS = ranked[:2] + [s for s in ranked if acc[s] == 0][:1]

        n = 25  # 5 x 5 cells: the first 25 features are the agent's one-hot position
        fig, axes = plt.subplots(1, len(SEEDS), figsize=(4 * len(SEEDS), 4))
        for ax, s in zip(axes, SEEDS):
            rows = (batch.group_ids == s).nonzero().flatten().tolist()
            first = batch.extras[rows[0]]["obs"][0]
            agent, key, door = (divmod(int(first[j * n : (j + 1) * n].argmax()), 5) for j in range(3))  # (row, col)
            for i in rows:
                cells = batch.extras[i]["obs"][:, :n].argmax(-1).tolist()
                ys, xs = zip(*(divmod(c, 5) for c in cells))
                jitter = 0.06 * (i % G - G / 2)
                ok = batch.rewards[i] > 0
                ax.plot(
                    [x + jitter for x in xs],
                    [y + jitter for y in ys],
                    "-" if ok else ":",
                    lw=1.5 if ok else 0.8,
                    color="C2" if ok else "gray",
                )
            ax.plot(agent[1], agent[0], "o", ms=14, color="C0", label="start")
            ax.plot(key[1], key[0], "*", ms=18, color="gold", mec="k", label="key")
            ax.plot(door[1], door[0], "s", ms=14, color="C5", label="door")
            ax.set_xlim(-0.5, 4.5)
            ax.set_ylim(4.5, -0.5)
            ax.set_xticks(range(5))
            ax.set_yticks(range(5))
            ax.set_xlabel("column")
            ax.set_ylabel("row")
            ax.grid(alpha=0.4)
            ax.set_title(f"reset seed {s}: {int(batch.rewards[rows].sum())} of {G} succeed (green)")
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle("one GRPO group = G episodes from one reset seed (untrained policy)")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        ## 5.2 GRPO vs NPO on the combination lock

        `npo_lab/Chain-v0`: enter 8 binary digits in the one right order; a wrong digit jams the lock. A random policy
        opens it once in 256 episodes: success is sparse, as early in RLVR. (The lock has no slip, so here every
        reset seed is the same problem.) With 16 seeds × 8 episodes per step, a first success arrives within a few
        steps and GRPO amplifies it; NPO's look-ahead at step 0 finds it sooner and injects it into the failing
        groups. Settings as in docs/benchmarks.md §6: Adam `grpo.lr = 3e-3`, NPO's defaults (Δ = 20, gate 0.6, one
        slot), intervening once at step 0. Both methods start from the same initial weights per seed.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.config import GRPOConfig, MethodConfigs, NPOConfig, RunConfig
        from npo_lab.experiments.report import lookahead_before
        from npo_lab.methods import make_method
        from npo_lab.train import make_state, train

        N_SEEDS, STEPS = 10, 60
        grpo = GRPOConfig(lr=3e-3)
        npo = NPOConfig(interventions=(0,))
        run = RunConfig(steps=STEPS, eval_every=5)
        results = {"grpo": [], "npo": []}
        for seed in range(N_SEEDS):
            backend = GymBackend("npo_lab/Chain-v0", GymConfig(vector=False), seed=seed)
            start = backend.save()
            for method in results:
                backend.load(start)
                seed_everything(seed)
                state = make_state(backend, grpo, seed=seed)
                algo = make_method(method, MethodConfigs(npo=npo), STEPS, grpo=grpo)
                results[method].append(train(state, algo, run, grpo, seed=seed))


        def first_solved(r, threshold=1.0):
            "First evaluated step with greedy success >= threshold (None: never)."
            return next((s for s, a in r.evals if a >= threshold), None)


        for method, runs in results.items():
            firsts = [first_solved(r) for r in runs]
            with_la = [
                None
                if f is None
                else f + lookahead_before({"interventions": r.interventions, "intervention_costs": r.intervention_costs}, f)
                for f, r in zip(firsts, runs)
            ]
            print(f"{method}: first step with success 1 per seed {firsts}; with look-ahead steps counted {with_la}")
        assert all(r.lookahead_steps == npo.delta for r in results["npo"])  # one intervention, Δ steps
        assert all(r.lookahead_steps == 0 for r in results["grpo"])
        """,
    ),
    (
        "code",
        r"""
        import statistics

        fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
        for i, (method, runs) in enumerate(results.items()):
            steps = [s for s, _ in runs[0].evals]
            curves = [[a for _, a in r.evals] for r in runs]
            mean = [statistics.mean(c[j] for c in curves) for j in range(len(steps))]
            la = runs[0]
            compute = [
                s + lookahead_before({"interventions": la.interventions, "intervention_costs": la.intervention_costs}, s)
                for s in steps
            ]
            for c in curves:
                axes[0].plot(steps, c, color=f"C{i}", alpha=0.2, lw=0.8)
            axes[0].plot(steps, mean, "o-", ms=3, color=f"C{i}", label=f"{method} (mean of {len(runs)} seeds)")
            axes[1].plot(compute, mean, "o-", ms=3, color=f"C{i}", label=method)
        axes[0].set_xlabel("training step")
        axes[1].set_xlabel("training steps + look-ahead steps (compute)")
        axes[0].set_ylabel("greedy success (fraction of seeds that open the lock)")
        axes[0].set_title("success vs training steps (faint: single seeds)")
        axes[1].set_title(f"success vs compute: NPO's {npo.delta} look-ahead steps counted")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("npo_lab/Chain-v0: GRPO vs NPO (Δ = 20, one intervention at step 0)")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        **Reading the figure.** On this task NPO opens the lock in fewer *training* steps, but the 20 look-ahead
        steps it spent to get there are training steps too: on the compute axis it arrives later. The sparse success
        here is sparse per episode, not per batch (128 episodes per step contain a success with probability
        1 − (255/256)^128 ≈ 0.39), so plain GRPO does not stay stuck long. KeyDoor is the one task of the five with a
        plateau (both near 0.45 greedy success after 150 steps; NPO +0.029 over 10 seeds, CI including 0).

        **Try.** `npo-lab compare --backend gym --env npo_lab/KeyDoor-v0 --methods grpo,npo --steps 150 --grpo.lr 3e-3`
        (about 3 minutes for 4 seeds), the GRU policy (`GymConfig(policy="gru")`), a longer lock through the Python
        API (`gym.register` a `ChainEnv(length=12)`), or your own environment wrapped in
        `npo_lab.envs.gym_envs.VerifiableSuccess` (docs/gym.md).
        """,
    ),
]

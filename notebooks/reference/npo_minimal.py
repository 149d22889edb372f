"""GRPO + NPO on verifiable arithmetic, in one file you can read top to bottom (CleanRL style).

    python notebooks/reference/npo_minimal.py                  # 200 steps + 2 look-aheads of 20: about a minute
    python notebooks/reference/npo_minimal.py --no-npo --steps 100 --seed 2   # plain GRPO, another seed

A tiny character-level transformer learns 3-digit addition ("047+385=" -> "234$", answer written least-significant
digit first) from a verifier's 0/1 reward. What to expect (CPU, torch 2.13; 55-70 s on 2 cores shared with other
work, up to twice that when busier): the warm start leaves a greedy eval accuracy of 0.06-0.07. Final accuracy after
200 steps (one evaluation of one run each: anecdotes, not a benchmark): seed 1 (the default) GRPO 0.875, NPO 0.883;
seed 2 GRPO 0.414, NPO 0.531; seed 0 GRPO 0.055, NPO 0.105 (both stalled). NPO's cache holds a verified answer for
28-59% of the segment's prompts at step 0 and 35-87% at step 100.
The algorithm, in the order of the code:
  1. group advantages: G completions per prompt, A = (r - mean_group) / (std_group + 1e-6)      (GRPO)
  2. clipped surrogate loss, averaged over completion tokens; the ratio of an on-policy row is taken to the
     policy before the update, that of a guide row to the policy that sampled it, pi_{t+Delta}     (PPO, NPO)
  3. NPO at an intervention step t (arXiv 2604.20733, as docs/algorithm.md reads the paper): save everything,
     train Delta plain steps ahead, recording the prompts they draw; pi_{t+Delta} answers each of those prompts
     guide_samples times and ONE verified-correct answer per prompt is cached; roll back exactly (weights,
     optimizer, RNGs, data cursor), so the replay of [t, t + Delta) draws the same prompts; in each replayed step,
     every group whose accuracy p-hat is at most 0.6 gets its last slot replaced by the cached answer.
The library (npo_lab) is the same algorithm split into pure functions, a backend protocol and a trainer;
tests/test_reference_parity.py checks on fixed batches that this file computes the same advantages, loss (guide
rows included), gate, cache, merge, log-probs and full guided update step (same weights, same batch, same Adam
step) as npo_lab. Batch fields carry npo_lab's names (npo_lab/batch.py): group_ids, behavior_logprobs, is_guide...

Dependencies: torch and the standard library, plus npo_lab.tasks.arithmetic (standard library only) for the
problems, the correct completions of the warm start, and the verifier.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import inspect
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from npo_lab.tasks.arithmetic import ArithmeticConfig, format_completion, make_problem, make_splits, score


@dataclass
class Args:
    seed: int = 1
    """seed of the initial weights, the warm start, the prompt draws and the sampling"""
    steps: int = 200
    """training steps (the look-ahead steps come on top)"""
    digits: int = 3
    """digits of each operand"""
    n_train: int = 4096
    """training problems"""
    n_eval: int = 256
    """held-out problems, scored by greedy decoding"""
    d_model: int = 64
    """width of the transformer"""
    n_layer: int = 2
    """transformer blocks"""
    n_head: int = 4
    """attention heads"""
    temperature: float = 1.0
    """sampling temperature, also applied to the log-probs the loss trains"""
    warm_steps: int = 300
    """supervised warm-start steps, so that RL starts from a low but non-zero success rate"""
    warm_lr: float = 3e-3
    """learning rate of the warm start"""
    batch_size: int = 128
    """rows per step: prompts x group_size"""
    group_size: int = 8
    """G, completions sampled per prompt (one group)"""
    lr: float = 3e-4
    """Adam learning rate of the RL steps"""
    clip_eps: float = 0.2
    """PPO clip range [1 - eps, 1 + eps]"""
    max_grad_norm: float = 1.0
    """global gradient-norm clip (0: none)"""
    npo: bool = True
    """NPO's interventions; --no-npo trains plain GRPO"""
    interventions: list[int] = field(default_factory=lambda: [0, 100])
    """steps t at which NPO looks ahead: 0 is the paper's early bootstrap, a later one its plateau breakthrough"""
    delta: int = 20
    """Delta: steps trained ahead; the replayed segment [t, t + Delta) is the guided window"""
    gate: float = 0.6
    """a group is guided when its on-policy accuracy p-hat is at most this (the paper's 0.6)"""
    guide_samples: int = 8
    """answers pi_{t+Delta} samples per prompt of the segment, to find one verified-correct answer to cache"""
    guide_loss: str = "behavior_clipped"
    """guide rows' ratio: behavior_clipped, to pi_{t+Delta} (the paper); on_policy, to the policy before the update"""
    eval_every: int = 20
    """steps between evaluations"""


# ---- the task: characters in, characters out -----------------------------------------------------------------
VOCAB = "0123456789+*%=:$."  # '$' ends a completion, '.' pads after it (the same vocabulary as npo_lab.envs)
STOI = {c: i for i, c in enumerate(VOCAB)}
PAD, END = STOI["."], STOI["$"]


def encode(s: str) -> list[int]:
    return [STOI[c] for c in s]


def decode(ids: list[int]) -> str:
    text = "".join(VOCAB[i] for i in ids)
    return text[: text.index("$") + 1] if "$" in text else text


# ---- the policy: a tiny GPT (same layout as npo_lab.envs.charlm.TinyCharLM, without the KV cache) ------------
class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(d, -1)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)  # (B, H, t, d/H)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharLM(nn.Module):
    def __init__(self, max_len: int, d: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(len(VOCAB), d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, len(VOCAB), bias=False)
        for name, p in self.named_parameters():  # GPT-2 init; residual projections scaled by depth
            if "ln" in name:  # LayerNorms keep weight 1, bias 0
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                std = 0.02 / (2 * n_layer) ** 0.5 if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, t) -> (B, t, V)
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def completion_logits(model: CharLM, prompts: torch.Tensor, comps: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (B, T, V) of each completion token given the prompt and the tokens before it."""
    x = torch.cat([prompts, comps[:, :-1]], 1)  # (B, P + T - 1)
    logits = model(x)[:, prompts.shape[1] - 1 :] / temperature  # position P - 1 + j predicts comps[:, j]
    return logits.index_fill(-1, torch.tensor([PAD]), float("-inf"))  # padding is not an action


def token_logprobs(model: CharLM, prompts: torch.Tensor, comps: torch.Tensor, mask: torch.Tensor, temperature: float):
    """(B, T) log pi(token) of the completion tokens, 0 on padding; differentiable."""
    logp_all = F.log_softmax(completion_logits(model, prompts, comps, temperature), -1)  # (B, T, V)
    safe = torch.where(mask.bool(), comps, torch.zeros_like(comps))  # padding would gather -inf
    return logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask


@torch.no_grad()
def sample(model: CharLM, prompts: torch.Tensor, max_new: int, temperature: float, greedy: bool = False):
    """Completions (B, T) padded with PAD after '$', their mask (B, T) and sampling log-probs (B, T)."""
    seq, done = prompts, torch.zeros(prompts.shape[0], dtype=torch.bool)
    toks, masks, lps = [], [], []
    for _ in range(max_new):  # recomputes the whole prefix each time: simple, and cheap at ~17 tokens
        logits = model(seq)[:, -1] / temperature  # (B, V)
        logp_all = F.log_softmax(logits.index_fill(-1, torch.tensor([PAD]), float("-inf")), -1)
        tok = logp_all.argmax(-1) if greedy else torch.multinomial(logp_all.exp(), 1).squeeze(-1)  # (B,)
        lps.append(torch.where(done, 0.0, logp_all.gather(-1, tok.unsqueeze(-1)).squeeze(-1)))
        tok = torch.where(done, PAD, tok)  # finished rows emit padding
        toks.append(tok)
        masks.append((~done).float())
        done = done | (tok == END)
        if done.all():
            break
        seq = torch.cat([seq, tok.unsqueeze(1)], 1)
    return torch.stack(toks, 1), torch.stack(masks, 1), torch.stack(lps, 1)


# ---- ALGO LOGIC: advantages, loss, gate, cache, merge ---------------------------------------------------------
def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g r) / (std_g r + eps), std unbiased (0 for a group of one). (B,) float32."""
    _, inv = torch.unique(group_ids, return_inverse=True)  # (B,) dense group index
    r, zeros = rewards.double(), torch.zeros(int(inv.max()) + 1, dtype=torch.float64)
    count = zeros.clone().index_add_(0, inv, torch.ones_like(r))
    mean = zeros.clone().index_add_(0, inv, r) / count
    var = zeros.clone().index_add_(0, inv, (r - mean[inv]) ** 2) / (count - 1).clamp(min=1.0)
    return ((r - mean[inv]) / (var.sqrt()[inv] + eps)).float()


def policy_loss(logprobs, old_logprobs, advantages, mask, is_guide=None, behavior_logprobs=None,
                clip_low: float = 0.2, clip_high: float = 0.2) -> torch.Tensor:  # fmt: skip
    """Clipped surrogate, token mean over the mask. The ratio's anchor is ``old_logprobs``, except on the rows
    ``is_guide`` marks (given with their ``behavior_logprobs``): there it is the policy that sampled the row,
    pi_{t+Delta} (npo_lab's guide_loss="behavior_clipped", the paper's objective)."""
    anchor = old_logprobs
    if is_guide is not None:
        anchor = torch.where(is_guide.unsqueeze(-1), behavior_logprobs, old_logprobs)  # (B, T)
    ratio = torch.exp((logprobs - anchor).clamp(-20.0, 20.0))  # (B, T); verl's clamp keeps exp finite
    a = advantages.unsqueeze(-1)  # (B, 1)
    loss_mat = -torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a)
    return (loss_mat * mask).sum() / mask.sum().clamp(min=1.0)


def gated_prompts(batch: dict, gate: float) -> list[int]:
    """Prompts whose group accuracy p-hat (reward > 0.5) is at most the gate, in order of appearance."""
    acc: dict[int, list[float]] = {}
    for p, r in zip(batch["group_ids"].tolist(), batch["rewards"].tolist()):
        acc.setdefault(p, []).append(float(r > 0.5))
    return [p for p, a in acc.items() if sum(a) / len(a) <= gate]


def cat_rows(parts: list[dict]) -> dict:
    """The rows of every part, in order; the token dimension right-padded to the longest."""
    t = max(x["completions"].shape[1] for x in parts)
    pad = {"completions": PAD, "mask": 0.0, "behavior_logprobs": 0.0}  # per-token fields
    return {k: torch.cat([F.pad(x[k], (0, t - x[k].shape[1]), value=pad[k]) if k in pad else x[k] for x in parts])
            for k in parts[0]}  # fmt: skip


def trim(rows: dict) -> dict:
    """Drop the padding columns no row uses."""
    t = int(rows["mask"].sum(-1).max())
    return {k: v[:, :t] if v.dim() == 2 else v for k, v in rows.items()}


def verified_rows(rows: dict) -> dict[int, dict]:
    """The first verified-correct row of each prompt (sampling order): what the guide cache keeps. A prompt
    without a correct row is left out: a wrong guide row is never used."""
    kept: dict[int, dict] = {}
    for i, (p, r) in enumerate(zip(rows["group_ids"].tolist(), rows["rewards"].tolist())):
        if r > 0.5 and p not in kept:
            kept[p] = trim({k: v[i : i + 1] for k, v in rows.items()})
    return kept


def merge_guides(batch: dict, guides: dict, gated: list[int]) -> dict:
    """Replace the last row of each gated group by the first verified-correct guide row for its prompt;
    a group without a correct guide row stays on-policy. B is unchanged."""
    n = len(batch["group_ids"])
    both = cat_rows([batch, dict(guides, is_guide=torch.ones(len(guides["group_ids"]), dtype=torch.bool))])
    index = list(range(n))
    for p in gated:
        rows = [i for i, q in enumerate(batch["group_ids"].tolist()) if q == p]
        correct = [n + j for j, (q, r) in enumerate(zip(guides["group_ids"].tolist(), guides["rewards"].tolist()))
                   if q == p and r > 0.5]  # fmt: skip
        if correct:
            index[rows[-1]] = correct[0]
    return trim({k: v[index] for k, v in both.items()})  # unused longer guide rows must not widen the batch


# ---- one GRPO step ------------------------------------------------------------------------------------------
@dataclass
class Data:
    prompts: torch.Tensor  # (n_train, P) token ids
    answers: list[int]
    eval_prompts: torch.Tensor
    eval_answers: list[int]
    max_new: int
    cursor: torch.Generator  # draws the prompts of each step: its own RNG, so sampling does not move it


def rollout(model: CharLM, pids: list[int], n: int, data: Data, args: Args) -> dict:
    group_ids = torch.tensor(pids).repeat_interleave(n)  # (B,) prompt id = group id
    comps, mask, logp = sample(model, data.prompts[group_ids], data.max_new, args.temperature)
    rewards = torch.tensor([score(decode(c), data.answers[p]) for c, p in zip(comps.tolist(), group_ids.tolist())])
    return dict(group_ids=group_ids, completions=comps, mask=mask, behavior_logprobs=logp, rewards=rewards,
                is_guide=torch.zeros(len(group_ids), dtype=torch.bool))  # fmt: skip


def update(model: CharLM, opt: torch.optim.Optimizer, batch: dict, data: Data, args: Args) -> dict:
    """One optimiser step on the whole batch (one epoch, one minibatch: the ratio anchor of on-policy rows is the
    update's own forward, so their rho = 1; a guide row's rho = pi_theta / pi_{t+Delta} is not, and is clipped)."""
    adv = group_advantages(batch["rewards"], batch["group_ids"])  # (B,), over mixed groups: guides get large A
    prompts = data.prompts[batch["group_ids"]]  # (B, P)
    logp = token_logprobs(model, prompts, batch["completions"], batch["mask"], args.temperature)
    is_guide = {"behavior_clipped": batch["is_guide"], "on_policy": None}[args.guide_loss]  # whose ratio is special
    loss = policy_loss(logp, logp.detach(), adv, batch["mask"], is_guide, batch["behavior_logprobs"],
                       args.clip_eps, args.clip_eps)  # fmt: skip
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
    opt.step()
    return {"loss": loss.item(), "grad_norm": grad_norm.item()}


def grpo_step(model: CharLM, opt, data: Data, args: Args, cache: dict[int, dict] | None = None) -> dict:
    pids = torch.randperm(len(data.answers), generator=data.cursor)[: args.batch_size // args.group_size].tolist()
    batch = rollout(model, pids, args.group_size, data, args)
    stats = {"prompts": pids, "reward": batch["rewards"].mean().item(), "gated": 0.0, "injected": 0.0}
    if cache is not None:  # NPO: a failing group gets the cached verified answer of pi_{t+Delta} in its last slot
        gated = gated_prompts(batch, args.gate)
        hits = [p for p in gated if p in cache]
        if hits:
            batch = merge_guides(batch, cat_rows([cache[p] for p in hits]), gated)
        stats.update(gated=len(gated) / len(pids), injected=batch["is_guide"].sum().item() / len(pids))
    return stats | update(model, opt, batch, data, args)


# ---- NPO: look ahead, cache the near future's answers, roll back exactly ----------------------------------------
def snapshot(model: CharLM, opt: torch.optim.Optimizer, data: Data) -> dict:
    return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
            "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
            "cursor": data.cursor.get_state()}  # fmt: skip


def restore(model: CharLM, opt: torch.optim.Optimizer, data: Data, snap: dict) -> None:
    model.load_state_dict(snap["model"])
    opt.load_state_dict(copy.deepcopy(snap["opt"]))
    torch.set_rng_state(snap["torch_rng"])  # the sampling
    random.setstate(snap["py_rng"])
    data.cursor.set_state(snap["cursor"])  # the prompts the next steps draw


def fill_cache(model: CharLM, pids: list[int], data: Data, args: Args, chunk: int = 64) -> dict[int, dict]:
    """guide_samples answers of ``model`` per prompt; one verified-correct row per solvable prompt is kept."""
    cache: dict[int, dict] = {}
    for start in range(0, len(pids), chunk):  # chunks bound the memory of one sampling call
        cache |= verified_rows(rollout(model, pids[start : start + chunk], args.guide_samples, data, args))
    return cache


def lookahead(model: CharLM, opt, data: Data, args: Args) -> tuple[dict[int, dict], list[list[int]]]:
    """NPO at step t: train Delta plain steps ahead, recording the prompts each draws (the segment); the model is
    then pi_{t+Delta}: it fills the guide cache for the segment's prompts; roll back to step t bit for bit."""
    snap = snapshot(model, opt, data)
    segment = [grpo_step(model, opt, data, args)["prompts"] for _ in range(args.delta)]  # plain GRPO, no guides
    cache = fill_cache(model, sorted({p for step in segment for p in step}), data, args)
    restore(model, opt, data, snap)  # the replay of [t, t + Delta) draws the segment's prompts again
    return cache, segment


# ---- warm start, evaluation, main loop ------------------------------------------------------------------------
def warm_start(model: CharLM, task: ArithmeticConfig, train, evals, args: Args, p_len: int) -> float:
    """Supervised steps on easy (2-digit) problems and a few full ones, in three completion styles."""
    rng, eval_pairs, easy = random.Random(args.seed), {(p.a, p.b) for p in evals}, 10 ** min(2, task.digits)
    opt, loss = torch.optim.Adam(model.parameters(), args.warm_lr), torch.tensor(float("nan"))
    for _ in range(args.warm_steps):
        probs = []
        while len(probs) < 64:
            a, b = rng.randrange(easy), rng.randrange(easy)
            if rng.random() < 0.1:
                probs.append(train[rng.randrange(len(train))])
            elif (a, b) not in eval_pairs:
                probs.append(make_problem(a, b, task))
        seqs = [
            encode(p.prompt + format_completion(p, task, rng.choice(["bare", "padded", "scratch"]))) for p in probs
        ]
        x = torch.full((len(seqs), max(map(len, seqs))), PAD)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = torch.tensor(s)
        target = x[:, 1:].masked_fill(x[:, 1:] == PAD, -100)
        target[:, : p_len - 1] = -100  # loss on completion tokens only
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), target.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def evaluate(model: CharLM, data: Data, args: Args) -> float:
    comp, _, _ = sample(model, data.eval_prompts, data.max_new, args.temperature, greedy=True)
    return sum(score(decode(c), a) for c, a in zip(comp.tolist(), data.eval_answers)) / len(data.eval_answers)


def main(args: Args) -> list[tuple[int, float]]:
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    task = ArithmeticConfig(digits=args.digits, n_train=args.n_train, n_eval=args.n_eval)
    train, evals = make_splits(task)
    ids = [torch.tensor([encode(p.prompt) for p in split]) for split in (train, evals)]  # (N, P) each
    cursor = torch.Generator().manual_seed(args.seed)
    data = Data(ids[0], [p.answer for p in train], ids[1], [p.answer for p in evals], task.max_completion_len, cursor)
    p_len = data.prompts.shape[1]
    model = CharLM(p_len + data.max_new, args.d_model, args.n_layer, args.n_head)
    t0 = time.time()
    print(f"warm start: loss {warm_start(model, task, train, evals, args, p_len):.3f} ({time.time() - t0:.0f} s)")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = sorted(s for s in args.interventions if s < args.steps) if args.npo else []
    cache, segment, curve = {}, [], []
    for step in range(args.steps):
        if step in schedule:
            cache, segment = lookahead(model, opt, data, args)
            n = len({p for s in segment for p in s})
            print(f"step {step}: looked ahead {args.delta} steps, cached a verified answer of pi_t+{args.delta} for "
                  f"{len(cache)} of the segment's {n} prompts, rolled back")  # fmt: skip
        if step % args.eval_every == 0:
            curve.append((step, evaluate(model, data, args)))
        s = grpo_step(model, opt, data, args, cache if segment else None)  # guided while the segment lasts
        if segment:
            assert s["prompts"] == segment.pop(0), "the replay draws what the look-ahead drew"
        if step % args.eval_every == 0:
            print(f"step {step:4d}  eval acc {curve[-1][1]:.3f}  reward {s['reward']:.3f}  gated {s['gated']:.2f}  "
                  f"injected {s['injected']:.2f}  loss {s['loss']:+.4f}  ({time.time() - t0:.0f} s)")  # fmt: skip
    curve.append((args.steps, evaluate(model, data, args)))
    print(f"final eval accuracy {curve[-1][1]:.3f} after {args.steps} steps "
          f"(+ {len(schedule) * args.delta} look-ahead steps, {time.time() - t0:.0f} s)")  # fmt: skip
    return curve


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string right below it), for --help: one source of documentation."""
    body = ast.parse(inspect.getsource(cls)).body[0].body  # type: ignore[attr-defined]
    docs = zip(body, body[1:])  # (field, the statement after it)
    return {a.target.id: b.value.value for a, b in docs if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr)}


def parse_args(argv: list[str] | None = None) -> Args:
    ap = argparse.ArgumentParser(description="GRPO + NPO on arithmetic, in one file")
    docs = field_docs(Args)
    for f in dataclasses.fields(Args):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        flag, kw = f"--{f.name.replace('_', '-')}", {"default": default, "help": docs[f.name]}
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, list):
            ap.add_argument(flag, type=int, nargs="*", **kw)
        else:
            ap.add_argument(flag, type=type(default), **kw)
    return Args(**vars(ap.parse_args(argv)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(parse_args())

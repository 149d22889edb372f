"""GRPO + NPO on verifiable arithmetic, in one file you can read top to bottom (CleanRL style).

    python notebooks/reference/npo_minimal.py                  # 200 steps + 2 look-aheads of 20: about a minute
    python notebooks/reference/npo_minimal.py --no-npo --steps 100 --seed 2   # plain GRPO, another seed

A tiny character-level transformer learns 3-digit addition ("047+385=" -> "234$", answer written
least-significant digit first) from a verifier's 0/1 reward. What to expect (CPU, torch 2.13): the warm start
leaves a greedy eval accuracy of about 0.07; with seed 1 (the default) NPO reaches about 0.84 after 200 steps;
seed 2 reaches about 0.55 and seed 0 stalls near 0.15, the plateau of some GRPO runs that README.md describes.
The algorithm, in the order of the code:
  1. group advantages: G completions per prompt, A = (r - mean_group) / (std_group + 1e-6)      (GRPO)
  2. clipped surrogate loss, averaged over completion tokens                                (PPO, DAPO)
  3. NPO at an intervention step t: save everything, train Delta plain steps ahead, keep pi_{t+Delta}, roll
     back exactly (weights, optimizer, RNG); then, while guiding, every group whose accuracy is below 0.6
     gets its last slot replaced by a verified-correct completion sampled from pi_{t+Delta}.   (arXiv 2604.20733)
The library (npo_lab) is the same algorithm split into pure functions, a backend protocol and a trainer;
tests/test_reference_parity.py checks on fixed batches that this file computes the same advantages, loss,
gate, merge, log-probs and full update step (same weights, same batch, same Adam step) as npo_lab.

Dependencies: torch and the standard library, plus npo_lab.tasks.arithmetic (standard library only) for the
problems, the correct completions of the warm start, and the verifier.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
    steps: int = 200  # training steps (look-ahead steps are extra)
    digits: int = 3  # operand digits
    n_train: int = 4096  # training problems
    n_eval: int = 256  # held-out problems (greedy accuracy)
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    temperature: float = 1.0  # sampling and training log-probs alike
    warm_steps: int = 300  # supervised warm start, so RL starts with low but non-zero success
    warm_lr: float = 3e-3
    batch_size: int = 128  # rows per step = prompts x group_size
    group_size: int = 8  # G
    lr: float = 3e-4
    clip_eps: float = 0.2
    max_grad_norm: float = 1.0
    npo: bool = True  # False: plain GRPO
    interventions: list[int] = field(default_factory=lambda: [0, 100])  # steps at which NPO looks ahead
    delta: int = 20  # look-ahead distance
    gate: float = 0.6  # a group below this accuracy gets a guide row (the paper's 0.6)
    guide_samples: int = 8  # samples of pi_{t+Delta} per gated prompt, to find a correct one
    eval_every: int = 20


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


# ---- ALGO LOGIC: advantages, loss, gate, merge ----------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (r_i - mean_g r) / (std_g r + eps), std unbiased (0 for a group of one). (B,) float32."""
    _, inv = torch.unique(group_ids, return_inverse=True)  # (B,) dense group index
    r, zeros = rewards.double(), torch.zeros(int(inv.max()) + 1, dtype=torch.float64)
    count = zeros.clone().index_add_(0, inv, torch.ones_like(r))
    mean = zeros.clone().index_add_(0, inv, r) / count
    var = zeros.clone().index_add_(0, inv, (r - mean[inv]) ** 2) / (count - 1).clamp(min=1.0)
    return ((r - mean[inv]) / (var.sqrt()[inv] + eps)).float()


def policy_loss(logp, old_logp, adv, mask, clip_low: float = 0.2, clip_high: float = 0.2) -> torch.Tensor:
    """Clipped surrogate, token mean over the mask. Guide rows are treated like on-policy rows (npo_lab's default)."""
    ratio = torch.exp(logp - old_logp)  # (B, T)
    a = adv.unsqueeze(-1)  # (B, 1)
    loss_mat = -torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a)
    return (loss_mat * mask).sum() / mask.sum().clamp(min=1.0)


def gated_prompts(batch: dict, gate: float) -> list[int]:
    """Prompts whose group accuracy (reward > 0.5) is strictly below the gate, in order of appearance."""
    acc: dict[int, list[float]] = {}
    for p, r in zip(batch["pid"].tolist(), batch["reward"].tolist()):
        acc.setdefault(p, []).append(float(r > 0.5))
    return [p for p, a in acc.items() if sum(a) / len(a) < gate]


def cat_rows(a: dict, b: dict) -> dict:
    t = max(a["comp"].shape[1], b["comp"].shape[1])
    pad = {"comp": PAD, "mask": 0.0, "logp": 0.0}  # right-pad the token dimension
    return {k: torch.cat([F.pad(x[k], (0, t - x[k].shape[1]), value=pad[k]) if k in pad else x[k] for x in (a, b)])
            for k in a}  # fmt: skip


def merge_guides(batch: dict, guides: dict, gated: list[int]) -> dict:
    """Replace the last row of each gated group by the first verified-correct guide row for its prompt;
    a group without a correct guide row stays on-policy. B is unchanged."""
    n = len(batch["pid"])
    both = cat_rows(batch, dict(guides, guide=torch.ones(len(guides["pid"]), dtype=torch.bool)))
    index = list(range(n))
    for p in gated:
        rows = [i for i, q in enumerate(batch["pid"].tolist()) if q == p]
        correct = [n + j for j, (q, r) in enumerate(zip(guides["pid"].tolist(), guides["reward"].tolist()))
                   if q == p and r > 0.5]  # fmt: skip
        if correct:
            index[rows[-1]] = correct[0]
    merged = {k: v[index] for k, v in both.items()}
    t = int(merged["mask"].sum(-1).max())  # drop padding columns the unused guide rows brought
    return {k: v[:, :t] if v.dim() == 2 else v for k, v in merged.items()}


# ---- one GRPO step ------------------------------------------------------------------------------------------
@dataclass
class Data:
    prompts: torch.Tensor  # (n_train, P) token ids
    answers: list[int]
    eval_prompts: torch.Tensor
    eval_answers: list[int]
    max_new: int


def rollout(model: CharLM, pids: list[int], n: int, data: Data, args: Args) -> dict:
    pid = torch.tensor(pids).repeat_interleave(n)  # (B,) prompt id = group id
    comp, mask, logp = sample(model, data.prompts[pid], data.max_new, args.temperature)
    reward = torch.tensor([score(decode(c), data.answers[p]) for c, p in zip(comp.tolist(), pid.tolist())])
    return dict(pid=pid, comp=comp, mask=mask, logp=logp, reward=reward, guide=torch.zeros(len(pid), dtype=torch.bool))


def update(model: CharLM, opt: torch.optim.Optimizer, batch: dict, data: Data, args: Args) -> dict:
    """One optimiser step on the whole batch (one epoch, one minibatch: the ratio anchor is the update's own
    forward, so rho = 1 and the clip is inactive; it matters with several epochs)."""
    adv = group_advantages(batch["reward"], batch["pid"])  # (B,), over mixed groups: guides get large A
    logp = token_logprobs(model, data.prompts[batch["pid"]], batch["comp"], batch["mask"], args.temperature)
    loss = policy_loss(logp, logp.detach(), adv, batch["mask"], args.clip_eps, args.clip_eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm or float("inf"))
    opt.step()
    return {"loss": loss.item(), "grad_norm": grad_norm.item()}


def grpo_step(model: CharLM, opt, data: Data, args: Args, guide: CharLM | None = None) -> dict:
    pids = torch.randperm(len(data.answers))[: args.batch_size // args.group_size].tolist()
    batch = rollout(model, pids, args.group_size, data, args)
    stats = {"reward": batch["reward"].mean().item(), "gated": 0.0, "injected": 0.0}
    if guide is not None:  # NPO: failing groups get a verified-correct row of pi_{t+Delta} in their last slot
        gated = gated_prompts(batch, args.gate)
        if gated:
            guides = rollout(guide, gated, args.guide_samples, data, args)
            batch = merge_guides(batch, guides, gated)
        stats.update(gated=len(gated) / len(pids), injected=batch["guide"].sum().item() / len(pids))
    return stats | update(model, opt, batch, data, args)


# ---- NPO: look ahead, keep the near future, roll back exactly --------------------------------------------------
def snapshot(model: CharLM, opt: torch.optim.Optimizer) -> dict:
    return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
            "torch_rng": torch.get_rng_state(), "py_rng": random.getstate()}  # fmt: skip


def restore(model: CharLM, opt: torch.optim.Optimizer, snap: dict) -> None:
    model.load_state_dict(snap["model"])
    opt.load_state_dict(copy.deepcopy(snap["opt"]))
    torch.set_rng_state(snap["torch_rng"])  # also the data cursor: prompts are drawn from the torch RNG
    random.setstate(snap["py_rng"])


def lookahead(model: CharLM, opt, data: Data, args: Args) -> CharLM:
    snap = snapshot(model, opt)
    for _ in range(args.delta):
        grpo_step(model, opt, data, args)  # plain GRPO steps, no guides
    guide = copy.deepcopy(model).requires_grad_(False)  # pi_{t+Delta}
    restore(model, opt, snap)  # step t again, bit for bit: the guided run sees the same prompts
    return guide


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
    data = Data(ids[0], [p.answer for p in train], ids[1], [p.answer for p in evals], task.max_completion_len)
    p_len = data.prompts.shape[1]
    model = CharLM(p_len + data.max_new, args.d_model, args.n_layer, args.n_head)
    t0 = time.time()
    print(f"warm start: loss {warm_start(model, task, train, evals, args, p_len):.3f} ({time.time() - t0:.0f} s)")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = sorted(s for s in args.interventions if s < args.steps) if args.npo else []
    guide, guide_until, curve = None, -1, []
    for step in range(args.steps):
        if step in schedule:
            guide = lookahead(model, opt, data, args)
            guide_until = next((s for s in schedule if s > step), args.steps)  # guide until the next intervention
            print(f"step {step}: looked ahead {args.delta} steps and rolled back")
        if step % args.eval_every == 0:
            curve.append((step, evaluate(model, data, args)))
        s = grpo_step(model, opt, data, args, guide if step < guide_until else None)
        if step % args.eval_every == 0:
            print(f"step {step:4d}  eval acc {curve[-1][1]:.3f}  reward {s['reward']:.3f}  gated {s['gated']:.2f}  "
                  f"injected {s['injected']:.2f}  loss {s['loss']:+.4f}  ({time.time() - t0:.0f} s)")  # fmt: skip
    curve.append((args.steps, evaluate(model, data, args)))
    print(f"final eval accuracy {curve[-1][1]:.3f} after {args.steps} steps ({time.time() - t0:.0f} s)")
    return curve


def parse_args(argv: list[str] | None = None) -> Args:
    ap = argparse.ArgumentParser(description="GRPO + NPO on arithmetic, in one file")
    for f in dataclasses.fields(Args):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if isinstance(default, bool):
            ap.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, list):
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, nargs="*", default=default)
        else:
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(default), default=default)
    return Args(**vars(ap.parse_args(argv)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(parse_args())

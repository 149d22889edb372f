"""The verifiable-arithmetic simulation backend: a tiny character-level policy on npo_lab.tasks.arithmetic.

Implements :class:`npo_lab.backend.Backend`. A prompt id is an index into the task's training split.
Checkpoints are in-memory copies of the weights plus the sampling generator's state, so NPO's look-ahead
and rollback cost a state-dict copy here (a disk checkpoint in the Qwen3-VL backend).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from npo_lab.envs.charlm import TinyCharLM
from npo_lab.envs.config import TinyLMConfig
from npo_lab.envs.torch_policy import InMemoryPolicy
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from npo_lab.backend import Checkpoint, clone_state
from npo_lab.batch import RolloutBatch
from npo_lab.tasks.arithmetic import (
    END,
    MAX_COMPLETION_CHARS,
    SEP,
    ArithmeticConfig,
    Problem,
    format_completion,
    make_problem,
    make_splits,
)

VOCAB = "0123456789+*%=:$."  # '.' pads after the end token '$'
STOI = {c: i for i, c in enumerate(VOCAB)}
PAD, END_ID, SEP_ID = STOI["."], STOI[END], STOI[SEP]
_PAD_INDEX = torch.tensor([PAD])  # built once: _no_pad runs at every sampled token
_MAX_ANSWER_CHARS = 32  # the longest final answer extract_answer reads
_INT64_DIGITS = 19  # decimal digits of the largest int64: every answer a LongTensor can hold


def encode(s: str) -> list[int]:
    return [STOI[c] for c in s]


def decode(ids: Sequence[int]) -> str:
    """Text of a completion; only the padding *after* the end token is dropped, so a stray pad character
    inside an answer stays visible to the verifier (and makes it wrong)."""
    text = "".join(VOCAB[i] for i in ids)
    end = text.find(END)
    return text if end < 0 else text[: end + 1]


def score_ids(comps: Tensor, answers: Tensor, reverse_answer: bool = True) -> Tensor:
    """``score(decode(row), answer, reverse_answer)`` for every row of ``comps`` at once, as float32 (B,).

    ``comps`` (B, T) holds token ids of :data:`VOCAB`, ``answers`` (B,) the non-negative true results. The same
    rules as :func:`npo_lab.tasks.arithmetic.extract_answer`, on ids: the completion ends at its first end
    token, which must come within the first ``MAX_COMPLETION_CHARS + 1`` characters; the final answer is what
    follows the last separator before it (or the whole text), 1 to 32 characters, digits only (a pad character
    inside it makes it wrong). Its value is compared digit by digit against the answer (leading zeros of the
    value allowed), so no answer of up to 32 digits overflows."""
    b, t = comps.shape
    if b == 0 or t == 0:  # no row, or only empty completions (no end token)
        return torch.zeros(b)
    pos = torch.arange(t)
    is_end = comps == END_ID
    has_end = is_end.any(-1)
    end = torch.where(has_end, is_end.int().argmax(-1), torch.full((b,), t))  # first end token (T if none)
    in_body = pos < end.unsqueeze(-1)
    last_sep = torch.where((comps == SEP_ID) & in_body, pos, torch.full_like(pos, -1)).amax(-1)
    start = last_sep + 1  # the final answer is comps[start:end]
    length = end - start
    in_ans = in_body & (pos >= start.unsqueeze(-1))
    digits_only = ((comps < 10) | ~in_ans).all(-1)  # ids 0-9 are the digits '0'-'9'
    # place value of each answer character: 0 for the least significant digit
    place = pos - start.unsqueeze(-1) if reverse_answer else end.unsqueeze(-1) - 1 - pos
    width = max(t, _INT64_DIGITS)
    powers = 10 ** torch.arange(_INT64_DIGITS, dtype=torch.long)
    expected = torch.zeros(b, width, dtype=torch.long)  # the answer's digits, least significant first
    expected[:, :_INT64_DIGITS] = answers.long().unsqueeze(-1) // powers % 10
    n_digits = (expected[:, :_INT64_DIGITS] != 0).int().cumsum(-1).argmax(-1) + 1  # 1 for the answer 0
    want = expected.gather(-1, place.clamp(0, width - 1))
    digits_match = ((comps == want) | ~in_ans).all(-1)
    ok = has_end & (end <= MAX_COMPLETION_CHARS) & (length >= 1) & (length <= _MAX_ANSWER_CHARS)
    return (ok & digits_only & (length >= n_digits) & digits_match).float()


def _no_pad(logits: Tensor) -> Tensor:
    """The pad token is not an action: mask it out of the policy's distribution (sampling and log-probs)."""
    return logits.index_fill(-1, _PAD_INDEX, float("-inf"))


class ArithmeticBackend(InMemoryPolicy):
    """Tiny char-LM policy on the arithmetic task, with a deterministic supervised warm start."""

    entropy_grad: bool = True
    """False (set by the trainer when no loss term uses the entropy): :meth:`logprobs` computes the entropies
    without an autograd graph (the same values)."""

    def __init__(self, task: ArithmeticConfig, model: TinyLMConfig, seed: int = 0, warm_start: bool = True) -> None:
        self.task, self.cfg, self.seed = task, model, seed
        self.train_set, self.eval_set = make_splits(task)
        self.prompt_len = 2 * task.digits + 2
        self.max_new = task.max_completion_len
        with torch.random.fork_rng():  # the initial weights depend on `seed` only
            torch.manual_seed(seed)
            self.model = TinyCharLM(
                len(VOCAB), self.prompt_len + self.max_new, model.d_model, model.n_layer, model.n_head
            )
        self._train_prompts = torch.tensor([encode(p.prompt) for p in self.train_set])  # (N, P)
        self._eval_prompts = torch.tensor([encode(p.prompt) for p in self.eval_set])  # (N_eval, P)
        self._train_answers = torch.tensor([p.answer for p in self.train_set])  # (N,), for score_ids
        self._eval_answers = torch.tensor([p.answer for p in self.eval_set])  # (N_eval,)
        self.gen = torch.Generator().manual_seed(seed + 7919)
        self.warm_start_loss = float("nan")
        if warm_start and model.warm_steps > 0:
            self.warm_start_loss = self._warm_start()

    # ---- the Backend protocol -------------------------------------------------------------------
    @property
    def num_prompts(self) -> int:
        return len(self.train_set)

    def rollout(self, prompt_ids: Sequence[int], n: int, policy: Checkpoint | None = None) -> RolloutBatch:
        pids = torch.tensor(list(prompt_ids), dtype=torch.long).repeat_interleave(n)  # (B,)
        net = self._policy_model(policy)
        comps, mask, logp = self._sample(net, self._train_prompts[pids], greedy=False)
        rewards = score_ids(comps, self._train_answers[pids], self.task.reverse_answer)  # score() of each row
        lengths = mask.sum(-1).long().tolist()
        # copies, not views: a replay pool that keeps one row must not keep the whole batch alive
        extras = [{"pid": p, "completion": c[:n_tok].clone()} for p, c, n_tok in zip(pids.tolist(), comps, lengths)]
        return RolloutBatch.from_rows(
            behavior_logprobs=logp, mask=mask, rewards=rewards, group_ids=pids, extras=extras
        )

    def logprobs(self, batch: RolloutBatch, policy: Checkpoint | None = None) -> tuple[Tensor, Tensor | None]:
        net = self._policy_model(policy)
        t = batch.mask.shape[1]
        prompts = self._train_prompts[torch.tensor([e["pid"] for e in batch.extras], dtype=torch.long)]  # (B, P)
        comps = torch.full((batch.size, t), PAD, dtype=torch.long)  # (B, T)
        if batch.size:
            rows = pad_sequence([e["completion"] for e in batch.extras], batch_first=True, padding_value=PAD)
            comps[:, : rows.shape[1]] = rows
        inputs = torch.cat([prompts, comps[:, :-1]], 1)  # (B, P + T - 1)
        logits, _ = net(inputs)
        logits = logits[:, self.prompt_len - 1 :]  # (B, T, V): predicts comps
        if self.cfg.temperature != 1.0:  # x / 1.0 is x: skipping it changes no value and no gradient
            logits = logits / self.cfg.temperature
        logp_all = F.log_softmax(_no_pad(logits), -1)
        # pad positions (mask 0) would gather -inf: gather a real token there and zero it with the mask
        safe = torch.where(batch.mask.bool(), comps, torch.zeros_like(comps))
        logp = logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * batch.mask  # (B, T)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.entropy_grad):  # no graph if unused
            p_all = logp_all.exp()
            entropy = -(p_all * logp_all.masked_fill(p_all == 0, 0.0)).sum(-1)  # (B, T); 0 * -inf -> 0
        return logp, entropy

    # ---- evaluation and helpers ------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy on the held-out split."""
        comps, _, _ = self._sample(self.model, self._eval_prompts, greedy=True)
        correct = score_ids(comps, self._eval_answers, self.task.reverse_answer).tolist()  # score() of each row
        return {"eval/accuracy": sum(correct) / len(correct)}

    def decode_batch(self, batch: RolloutBatch) -> list[str]:
        """The completions of a batch as text (for inspection and notebooks)."""
        return [decode(e["completion"].tolist()) for e in batch.extras]

    @torch.no_grad()
    def _sample(self, net: TinyCharLM, prompts: Tensor, greedy: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Batched sampling with a KV cache. Returns completions (B, T) padded with PAD, mask (B, T) and
        the sampling log-probs (B, T); T is the longest completion in the batch."""
        b = prompts.shape[0]
        logits, cache = net(prompts)
        last = logits[:, -1]  # (B, V)
        done = torch.zeros(b, dtype=torch.bool)
        toks, lps, masks = [], [], []
        temperature = self.cfg.temperature
        for i in range(self.max_new):
            if temperature != 1.0:  # x / 1.0 is x
                last = last / temperature
            logp_all = F.log_softmax(_no_pad(last), -1)
            if greedy:
                tok = logp_all.argmax(-1)
            else:
                tok = torch.multinomial(logp_all.exp(), 1, generator=self.gen).squeeze(-1)
            lp = logp_all.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
            tok = tok.masked_fill(done, PAD)  # finished rows emit padding
            toks.append(tok)
            lps.append(lp.masked_fill(done, 0.0))
            masks.append((~done).float())
            done = done | (tok == END_ID)
            if bool(done.all()) or i == self.max_new - 1:
                break
            logits, cache = net(tok.unsqueeze(1), cache, start=self.prompt_len + i)
            last = logits[:, -1]
        return torch.stack(toks, 1), torch.stack(masks, 1), torch.stack(lps, 1)

    def _warm_start(self) -> float:
        """Supervised steps on easier problems (plus a few full ones) in several completion styles."""
        cfg = self.cfg
        styles = [s for s in cfg.warm_styles.split(",") if s]
        return self._supervised(self.model, self.seed, cfg.warm_steps, styles, cfg.warm_full_frac)

    def _supervised(self, model: TinyCharLM, seed: int, steps: int, styles: list[str], full_frac: float) -> float:
        """Teacher-forced training of ``model`` on correct completions in ``styles``: a fraction ``full_frac``
        of full-difficulty training problems, the rest easier ones (never an evaluation problem)."""
        rng = random.Random(seed * 31 + 17)
        cfg, task = self.cfg, self.task
        eval_pairs = {(p.a, p.b) for p in self.eval_set}
        easy_hi = 10 ** min(cfg.warm_easy_digits, task.digits)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.warm_lr)
        loss_val = float("nan")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for _ in range(steps):
                probs: list[Problem] = []
                while len(probs) < cfg.warm_batch:
                    if rng.random() < full_frac:
                        probs.append(self.train_set[rng.randrange(len(self.train_set))])
                        continue
                    a, b = rng.randrange(easy_hi), rng.randrange(easy_hi)
                    if (a, b) not in eval_pairs:
                        probs.append(make_problem(a, b, task))
                seqs = [encode(p.prompt + format_completion(p, task, rng.choice(styles))) for p in probs]
                t = max(len(s) for s in seqs)
                x = torch.full((len(seqs), t), PAD, dtype=torch.long)
                for i, s in enumerate(seqs):
                    x[i, : len(s)] = torch.tensor(s)
                logits, _ = model(x[:, :-1])
                target = x[:, 1:].clone()
                target[:, : self.prompt_len - 1] = -100  # loss on completion tokens only
                target[target == PAD] = -100
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_val = loss.item()
        return loss_val

    def teacher(self) -> Checkpoint:
        """The external teacher for LUFFY: the same architecture trained from its own seed on full-difficulty
        training problems in ``model.teacher_style`` only (strong, and distributionally far from the student,
        which never saw that style). Built once per process and configuration, then reused."""
        key = repr((self.task, self.cfg))
        if key not in _TEACHERS:
            with torch.random.fork_rng():
                torch.manual_seed(self.cfg.teacher_seed)
                net = TinyCharLM(
                    len(VOCAB), self.prompt_len + self.max_new, self.cfg.d_model, self.cfg.n_layer, self.cfg.n_head
                )
            self._supervised(net, self.cfg.teacher_seed, self.cfg.teacher_steps, [self.cfg.teacher_style], 1.0)
            _TEACHERS[key] = clone_state(net.state_dict())
        return {"weights": _TEACHERS[key], "rng": self.gen.get_state()}


_TEACHERS: dict[str, dict[str, Tensor]] = {}


def make_arithmetic_backend(task: ArithmeticConfig, model: TinyLMConfig, seed: int) -> ArithmeticBackend:
    """Picklable factory used by ``npo-lab compare`` (``functools.partial(make_arithmetic_backend, task, model)``)."""
    return ArithmeticBackend(task, model, seed=seed)

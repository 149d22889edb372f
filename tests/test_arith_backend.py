import pytest
import torch
from npo_lab.envs.arithmetic_backend import STOI, VOCAB, ArithmeticBackend, decode, encode

from npo_lab.backend import Backend
from npo_lab.tasks.arithmetic import score


def test_implements_the_protocol(tiny_arith):
    assert isinstance(tiny_arith(), Backend)


def test_rollout_groups_masks_and_rewards(tiny_arith):
    be = tiny_arith(seed=1, warm_steps=150)
    b = be.rollout(list(range(16)), 4)
    assert b.size == 64 and b.group_ids.tolist() == [p for p in range(16) for _ in range(4)]
    lengths = b.mask.sum(-1).long()
    for i, e in enumerate(b.extras):
        # mask is a prefix of ones; the last unmasked token is the end token unless the length cap was hit
        assert b.mask[i, : lengths[i]].all() and not b.mask[i, lengths[i] :].any()
        text = decode(e["completion"].tolist())
        assert text.endswith("$") or lengths[i] == be.max_new
        assert b.rewards[i].item() == score(text, be.train_set[e["pid"]].answer)
    assert 0 < b.rewards.sum() < b.size  # the warm start solves some problems, not all


def test_recomputed_logprobs_match_sampling_logprobs(tiny_arith):
    """The KV-cache sampling path and the training forward path agree, so the first ratio is 1."""
    be = tiny_arith(seed=2, warm_steps=20)
    b = be.rollout(list(range(8)), 4)
    lp, ent = be.logprobs(b)
    assert torch.allclose(lp * b.mask, b.behavior_logprobs, atol=1e-5)
    assert ent.shape == b.mask.shape and (ent >= 0).all()
    lp.sum().backward()  # differentiable
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in be.parameters())


def test_rollout_from_a_checkpoint_leaves_current_weights_alone(tiny_arith):
    be = tiny_arith(seed=3)
    ckpt = be.save()
    with torch.no_grad():
        for p in be.parameters():
            p.add_(0.5)
    before = {k: v.clone() for k, v in be.model.state_dict().items()}
    g = be.rollout([0, 1], 4, policy=ckpt)
    assert all(torch.equal(before[k], v) for k, v in be.model.state_dict().items())
    # rows sampled from the checkpoint carry the checkpoint's log-probs
    lp_ckpt, _ = be.logprobs(g, policy=ckpt)
    assert torch.allclose(lp_ckpt, g.behavior_logprobs, atol=1e-5)
    lp_now, _ = be.logprobs(g)  # the shifted current weights give other log-probs
    assert not torch.allclose(lp_now, g.behavior_logprobs, atol=1e-3)


def test_save_load_round_trip_is_exact(tiny_arith):
    be = tiny_arith(seed=4)
    ck = be.save()
    a = be.rollout([0, 1, 2], 3)
    with torch.no_grad():
        for p in be.parameters():
            p.mul_(1.1)
    be.load(ck)
    b = be.rollout([0, 1, 2], 3)
    assert torch.equal(a.behavior_logprobs, b.behavior_logprobs) and torch.equal(a.rewards, b.rewards)


def test_warm_start_is_deterministic_and_gives_some_success():
    from npo_lab.envs.config import TinyLMConfig

    from npo_lab.tasks.arithmetic import ArithmeticConfig

    task = ArithmeticConfig(digits=2, n_train=256, n_eval=64)
    cfg = TinyLMConfig(d_model=32, n_head=2, warm_steps=60)
    a, b = ArithmeticBackend(task, cfg, seed=5), ArithmeticBackend(task, cfg, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert a.warm_start_loss < 2.0
    cold = ArithmeticBackend(task, TinyLMConfig(d_model=32, n_head=2, warm_steps=0), seed=5)
    assert a.warm_start_loss == a.warm_start_loss and cold.warm_start_loss != cold.warm_start_loss  # nan = none
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), cold.parameters()))


def test_vocab_round_trip():
    s = "047+385=110:234$"
    assert decode(encode(s)) == s and len(set(VOCAB)) == len(VOCAB)


def test_bad_model_config():
    from npo_lab.envs.config import TinyLMConfig

    with pytest.raises(ValueError, match="model.d_model"):
        TinyLMConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="model.warm_styles"):
        TinyLMConfig(warm_styles="bare,latex")


def test_pad_inside_an_answer_is_graded_wrong_and_never_sampled(tiny_arith):
    from npo_lab.envs.arithmetic_backend import PAD

    # decode keeps a stray pad before the end token, so the verifier sees it
    assert decode(encode("2.34$") + [PAD, PAD]) == "2.34$"
    assert score(decode(encode("2.34$")), 432) == 0.0
    be = tiny_arith(seed=6)  # untrained: uniform-ish over the vocabulary
    b = be.rollout(list(range(32)), 8)
    for e in b.extras:
        toks = e["completion"].tolist()
        assert PAD not in toks  # the pad token is not an action
    assert torch.isfinite(b.behavior_logprobs).all()


def test_sampler_never_repeats_a_prompt_within_a_batch():
    from npo_lab.utils import PromptSampler

    s = PromptSampler(100, seed=0)
    for _ in range(300):  # 100 is not a multiple of 16: epochs end mid-batch
        ids = s.next(16)
        assert len(set(ids)) == 16
    with pytest.raises(ValueError, match="distinct prompts"):
        PromptSampler(4, seed=0).next(5)


def _near_misses(answer: int, reverse: bool, rng) -> list[str]:
    """Correct completions of ``answer`` in several shapes, and near misses of each."""
    s = str(answer)[::-1] if reverse else str(answer)
    zeros = "0" * rng.randrange(1, 4)
    padded = s + zeros if reverse else zeros + s  # leading zeros of the value: still correct
    good = [s + "$", padded + "$", "110:" + s + "$", "1:2:" + s + "$"]
    wrong = str(answer + 1)[::-1] if reverse else str(answer + 1)
    bad = [
        "",  # empty
        s,  # no end token
        s + ".$",  # a pad character inside the answer
        s[:-1] + "$",  # a digit short
        wrong + "$",  # off by one
        s + ":$",  # nothing after the separator
        s + "+$",  # a non-digit
        ":" + s + "$$",  # a second end token after a correct answer (still correct: the first one counts)
        s + "$" + wrong,  # text after the end token (ignored)
        "1" * 63 + ":" + s + "$",  # end token beyond the 65 characters the verifier reads
        "1" * (63 - len(s)) + ":" + s + "$",  # end token at the last character it reads (correct)
        "9" * 40 + "$",  # more than 32 answer characters
        s + zeros + "1$" if reverse else "1" + zeros + s + "$",  # a non-zero digit beyond the answer
    ]
    return good + bad


@pytest.mark.parametrize("reverse", [True, False])
def test_score_ids_equals_score(reverse):
    """The vectorised verifier of a rollout grades every row exactly as score(decode(row)) does: correct rows in
    several shapes, near misses of each, malformed rows (no end token, non-digits, pad characters inside, empty),
    and random rows, at several widths."""
    import random

    from npo_lab.envs.arithmetic_backend import score_ids

    rng = random.Random(0)
    texts, answers = [], []
    for answer in [0, 7, 10, 432, 1000, 99980001, 10**12 + 5, 10**18 + 3] + [rng.randrange(10**6) for _ in range(40)]:
        for text in _near_misses(answer, reverse, rng):
            texts.append(text)
            answers.append(answer)
        for _ in range(20):  # random rows over the whole vocabulary, often with an end token
            texts.append("".join(rng.choice(VOCAB) for _ in range(rng.randrange(12))) + rng.choice(["", "$", "$."]))
            answers.append(answer)
    for width in (max(len(t) for t in texts), 90):
        rows = torch.tensor([encode(t.ljust(width, "."))[:width] for t in texts])
        got = score_ids(rows, torch.tensor(answers), reverse)
        want = torch.tensor([score(decode(r.tolist()), a, reverse) for r, a in zip(rows, answers)])
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert 200 < want.sum() < len(texts) - 200  # both outcomes are well represented
    # no row, or rows of width 0 (empty completions)
    assert score_ids(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert score_ids(torch.zeros(3, 0, dtype=torch.long), torch.tensor([0, 1, 2])).tolist() == [0.0] * 3


def test_score_ids_equals_score_on_fuzzed_rows():
    """Any token rows (hypothesis): the vectorised verifier and score(decode(row)) agree."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from npo_lab.envs.arithmetic_backend import score_ids

    tokens = st.lists(st.sampled_from([0, 1, 2, 3, 4, 9] + [STOI[c] for c in "+:$."]), min_size=1, max_size=12)

    @settings(max_examples=300, derandomize=True, deadline=None)
    @given(st.lists(st.tuples(tokens, st.sampled_from([0, 1, 3, 12, 21, 210, 4321])), min_size=1, max_size=16))
    def check(rows):
        width = max(len(r) for r, _ in rows)
        ids = torch.tensor([r + [STOI["."]] * (width - len(r)) for r, _ in rows])
        answers = [a for _, a in rows]
        for reverse in (True, False):
            want = [score(decode(r.tolist()), a, reverse) for r, a in zip(ids, answers)]
            assert score_ids(ids, torch.tensor(answers), reverse).tolist() == want

    check()


def test_entropy_without_a_graph_has_the_same_values(tiny_arith):
    """With entropy_grad False (no loss term uses the entropy) the entropies come without an autograd graph; the
    log-probs, their gradient and the entropies' values are unchanged."""
    be = tiny_arith(seed=3, warm_steps=20)
    b = be.rollout(list(range(8)), 4)
    out = {}
    for flag in (True, False):
        be.entropy_grad = flag
        be.model.zero_grad(set_to_none=True)
        logp, ent = be.logprobs(b)
        logp.sum().backward()
        out[flag] = (logp.detach(), ent.detach(), ent.requires_grad, [p.grad.clone() for p in be.model.parameters()])
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
    assert out[True][2] and not out[False][2]
    assert all(torch.equal(g, h) for g, h in zip(out[True][3], out[False][3]))

import pytest

from npo_lab.tasks.arithmetic import (
    ArithmeticConfig,
    extract_answer,
    format_completion,
    make_splits,
    score,
    scratchpad,
)


def test_splits_are_disjoint_deterministic_and_correct():
    cfg = ArithmeticConfig(digits=3, n_train=500, n_eval=100)
    tr, ev = make_splits(cfg)
    assert len(tr) == 500 and len(ev) == 100
    assert not {(p.a, p.b) for p in tr} & {(p.a, p.b) for p in ev}
    assert make_splits(cfg) == (tr, ev)
    assert all(p.answer == p.a + p.b and p.prompt == f"{p.a:03d}+{p.b:03d}=" for p in tr)
    mul = make_splits(ArithmeticConfig(digits=2, operation="mul", n_train=50, n_eval=10))[0]
    assert all(p.answer == p.a * p.b and "*" in p.prompt for p in mul)
    mod = make_splits(ArithmeticConfig(digits=2, operation="mod_add", modulus=7, n_train=50, n_eval=10))[0]
    assert all(p.answer == (p.a + p.b) % 7 for p in mod)


@pytest.mark.parametrize("op", ["add", "mul", "mod_add"])
def test_every_style_is_graded_correct(op):
    cfg = ArithmeticConfig(digits=3, operation=op, n_train=200, n_eval=10)
    for p in make_splits(cfg)[0]:
        for style in ("bare", "padded", "scratch"):
            c = format_completion(p, cfg, style)
            assert score(c, p.answer) == 1.0, (p, style, c)
            assert len(c) <= cfg.max_completion_len


def test_several_valid_trajectories_per_problem():
    cfg = ArithmeticConfig(digits=3)
    p = next(p for p in make_splits(cfg)[0] if p.answer < 1000)  # padding adds a digit only below 1000
    assert len({format_completion(p, cfg, s) for s in ("bare", "padded", "scratch")}) == 3


def test_carries_scratchpad():
    cfg = ArithmeticConfig(digits=3)
    from npo_lab.tasks.arithmetic import make_problem

    assert scratchpad(make_problem(47, 385, cfg), cfg) == "110"  # 7+5 carry, 4+8+1 carry, 0+3+1 none


@pytest.mark.parametrize(
    "completion",
    [
        "234",  # no end token
        "$",  # empty answer
        "23a$",  # junk
        "243$",  # digit swap
        "2340:$",  # answer after the separator is empty
        "432$",  # forward order when reversed is expected
        "-234$",
        "2 34$",
        "2" * 40 + "$",  # absurdly long number
        "9" * 100000 + "$",  # megabyte-ish string: no end token inside the read window
        "\x00234$",
        "２３４$",  # full-width digits
    ],
)
def test_near_misses_and_junk_are_never_correct(completion):
    assert score(completion, 432) == 0.0


def test_answer_length_is_bounded():
    assert extract_answer("2" * 40 + "$") is None  # over the 32-digit cap: not parsed at all
    assert extract_answer("2" * 32 + "$") == int("2" * 32)


def test_scratchpad_is_ignored_and_last_separator_wins():
    assert score("999:234$", 432) == 1.0
    assert score("234:999$", 432) == 0.0
    assert extract_answer("432$", reverse_answer=False) == 432


def test_bad_task_config_names_the_field():
    with pytest.raises(ValueError, match="task.digits"):
        ArithmeticConfig(digits=0)
    with pytest.raises(ValueError, match="task.operation"):
        ArithmeticConfig(operation="div")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task.name"):
        ArithmeticConfig(name="gsm8k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task.n_train \+ task.n_eval must be at most 50"):
        ArithmeticConfig(digits=1, n_train=60, n_eval=10)


def test_mixed_operand_lengths_share_one_prompt_format_and_leave_the_old_split_alone():
    """task.min_digits: a family of operand lengths (transfer between prompts); 0 keeps the split it always was."""
    old = make_splits(ArithmeticConfig(digits=3, n_train=300, n_eval=50))
    assert make_splits(ArithmeticConfig(digits=3, n_train=300, n_eval=50, min_digits=0)) == old
    cfg = ArithmeticConfig(digits=3, n_train=300, n_eval=50, min_digits=1)
    tr, ev = make_splits(cfg)
    assert not {(p.a, p.b) for p in tr} & {(p.a, p.b) for p in ev} and make_splits(cfg) == (tr, ev)
    assert all(p.prompt == f"{p.a:03d}+{p.b:03d}=" and p.answer == p.a + p.b for p in tr + ev)
    longest = [len(str(max(p.a, p.b))) for p in tr]
    # lengths 1, 2, 3 drawn evenly (length 1 has only 100 pairs, so fewer of them survive the de-duplication)
    assert {1, 2, 3} <= set(longest) and longest.count(3) < 0.6 * len(tr)
    assert sum(n <= 2 for n in longest) > sum(n <= 2 for n in [len(str(max(p.a, p.b))) for p in old[0]]) * 3


@pytest.mark.parametrize(
    "completion",
    ["08$", "7$", "9$", "18$", "0:08$", "8:$", "$", "88$", "8", "80"],  # 0 + 8 = 8, written least-significant first
)
def test_near_misses_of_short_problems_in_the_mixed_family_are_never_correct(completion):
    """A one-digit problem padded to three digits (000+008=): only an answer that reads 8 is correct."""
    cfg = ArithmeticConfig(digits=3, n_train=10, n_eval=10, min_digits=1)
    assert score("8$", 8) == 1.0 and score("800$", 8) == 1.0 and score("000:8$", 8) == 1.0  # bare, padded, scratch
    assert score(completion, 8, cfg.reverse_answer) == 0.0


def test_min_digits_is_checked_against_digits():
    with pytest.raises(ValueError, match="task.min_digits"):
        ArithmeticConfig(digits=2, min_digits=3)

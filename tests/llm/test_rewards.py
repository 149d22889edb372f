"""Verifiable rewards: boxed-answer extraction, the format reward, math-verify grading under time limits in worker
processes, custom reward functions and their combination (RewardSet).

No test here asserts a duration (CI hosts differ several-fold in speed, and a shared host's speed changes by the
minute). A time limit is checked by its mechanism: the worker process was killed and replaced, the item scored 0,
the stats counted it, the next call works. Legitimate items get a generous limit; only a deliberately slow item
meets a short one. Joins with long timeouts are hang guards, and say so when they fire."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
import sys
import textwrap
import threading
import time

import pytest
from npo_lab.llm.config import RewardConfig
from npo_lab.llm.rewards import MathVerifier, RewardSet, extract_boxed, format_reward, load_reward_fn

pytestmark = pytest.mark.llm
needs_math_verify = pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="needs math-verify")

SLOW = "\\boxed{9^{9^{9^{9^{9}}}}}"  # sympy spends minutes on this (killed after 15 s when measured)
HANG_GUARD_S = 300.0  # far above any legitimate wait here (under a second when measured); firing means a hang
GENEROUS_S = 60.0  # time limit for legitimate items: none of them may depend on machine load
SHORT_S = 1.0  # time limit for the deliberately slow item only
# items only math-verify can grade (the final-answer rule alone decides plain numbers), to exercise the workers
ALGEBRA = [
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
    ("\\boxed{(x+1)^2}", "x^2+2x+1"),
    ("\\boxed{\\pi}", "\\frac{2\\pi}{3}"),
]


def _workers() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == "math-verify"]


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=GENEROUS_S) as mv:
        yield mv


def _run_guarded(fn, what: str):
    """fn() in a thread, with a hang guard: its result, or a failure that says the guard fired."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), f"hang guard ({HANG_GUARD_S:.0f} s) fired: {what} never returned"
    return out[0]


# --- extract_boxed -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{{a}{b{c}}}", "{a}{b{c}}"),
        ("first \\boxed{1}, then \\boxed{2}, finally \\boxed{3} done", "3"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} then \\fbox{2}", "2"),
        ("\\fbox{1} then \\boxed{2}", "2"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{}", ""),
        ("\\boxed{\\boxed{5}}", "5"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "the answer is 42",
        "boxed{42}",
        "\\boxed 42",
        "\\boxed{\\frac{1}{2}",
        "\\boxed{1} and then \\boxed{2",
        "\\boxed{a\\}",
        "",
    ],
)
def test_extract_boxed_absent_or_unbalanced(text):
    assert extract_boxed(text) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x" * 1_000_000 + "\\boxed{" + "{" * 500_000, None),
        ("\\boxed{" * 150_000, None),
        ("\\boxed{" + "{}" * 500_000 + "}", "{}" * 500_000),
        ("\\boxed{" + "\\" * 1_000_001 + "}", None),
    ],
)
def test_extract_boxed_megabyte_returns(text, expected):
    # a quadratic scan would run for hours: the hang guard catches that without asserting a speed
    assert _run_guarded(lambda: extract_boxed(text), "extract_boxed on a megabyte") == expected
    assert _run_guarded(lambda: format_reward(text, think_tags=True), "format_reward on a megabyte") == 0.0


# --- format_reward ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, think_tags, expected",
    [
        ("so \\boxed{3}", False, 1.0),
        ("\\boxed{3} and some text after", False, 1.0),
        ("the answer is 3", False, 0.0),
        ("\\boxed{}", False, 0.0),
        ("\\boxed{  }", False, 0.0),
        ("\\boxed{3", False, 0.0),
        ("<think>r</think> \\boxed{3}", False, 1.0),
        ("\\boxed{3} <think>", False, 1.0),
        ("<think>reasoning</think> so \\boxed{3}", True, 1.0),
        ("so \\boxed{3}", True, 0.0),
        ("<think>reasoning</think> no answer", True, 0.0),
        ("\\boxed{3} <think>reasoning</think>", True, 0.0),
        ("<think>\\boxed{3}</think>", True, 0.0),
        ("<think>a</think><think>b</think> \\boxed{3}", True, 0.0),
        ("<think>a <think>b</think> \\boxed{3}", True, 0.0),
        ("</think> x <think> \\boxed{3}", True, 0.0),
        ("<think>a \\boxed{3}", True, 0.0),
    ],
)
def test_format_reward(completion, think_tags, expected):
    assert format_reward(completion, think_tags=think_tags) == expected


# --- MathVerifier ----------------------------------------------------------------------------------------------

CORRECT = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{42}", "42"),
    ("$x = 3$ so \\boxed{3}", "3"),
    ("so the answer is \\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\sqrt{2}}", "$\\sqrt{2}$"),
    ("\\boxed{2\\sqrt{2}}", "$\\sqrt{8}$"),
    ("\\boxed{\\dfrac{3}{4}}", "0.75"),
    ("\\boxed{$7$}", "7"),
    ("no box, but the answer is 42", "42"),
    ("\\boxed{x = 3}", "3"),
    ("\\boxed{\\text{Paris}}", "Paris"),
    ("x" * 10_000 + " so \\boxed{5}", "5"),  # only the tail is read
    ("it costs \\boxed{5}", "\\$5"),  # an escaped dollar in the gold (MATH's currency answers) is no delimiter
    ("\\boxed{18.90}", "\\$18.90"),
]

NEAR_MISSES = [
    ("\\boxed{4.2}", "42"),
    ("\\boxed{-42}", "42"),
    ("\\boxed{42.1}", "42"),
    ("\\boxed{24}", "42"),
    ("\\boxed{420}", "42"),
    ("\\boxed{0.33}", "\\frac{1}{3}"),
    ("\\boxed{\\frac{1}{3}}", "0.33"),
    ("\\boxed{}", "42"),
    ("I am not sure.", "42"),
    ("\\boxed{42} is wrong, the answer is \\boxed{41}", "42"),
    ("\\boxed{1.4142}", "\\sqrt{2}"),
    ("\\boxed{5}" + "x" * 5000, "5"),  # the answer lies before the last max_chars characters
    ("\\boxed{6}", "\\$5"),
]


@needs_math_verify
def test_grades_correct_answers(verifier):
    completions, answers = zip(*CORRECT)
    assert verifier.grade(list(completions), list(answers)) == [1.0] * len(CORRECT)


@needs_math_verify
def test_grades_near_misses_zero(verifier):
    completions, answers = zip(*NEAR_MISSES)
    scores = verifier.grade(list(completions), list(answers))
    assert dict(zip(completions, scores)) == dict.fromkeys(completions, 0.0)


@needs_math_verify
def test_grade_checks_lengths(verifier):
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        verifier.grade(["\\boxed{1}", "\\boxed{2}"], ["1"])
    assert verifier.grade([], []) == []


@needs_math_verify
def test_grades_from_a_thread(verifier):
    completions = ["\\boxed{\\frac{1}{2}}", "\\boxed{0.3}", "\\boxed{\\pi \\cdot 2}", "\\boxed{2\\sqrt{3}}"]
    answers = ["0.5", "\\frac{1}{3}", "2\\pi", "\\sqrt{13}"]
    scores = _run_guarded(lambda: verifier.grade(completions, answers), "grade() from a thread")
    assert scores == verifier.grade(completions, answers) == [1.0, 0.0, 1.0, 0.0]


@needs_math_verify
def test_timeout_kills_the_worker_and_recovers():
    before = set(_workers())
    mv = MathVerifier(timeout_s=GENEROUS_S)
    try:
        assert mv.grade([ALGEBRA[0][0]], [ALGEBRA[0][1]]) == [1.0]  # starts the worker
        (old,) = set(_workers()) - before
        mv.timeout_s = SHORT_S  # only the slow item meets the short limit
        assert _run_guarded(lambda: mv.grade([SLOW], ["1"]), "grade() of an item over the time limit") == [0.0]
        assert mv.stats["timeouts"] == 1 and mv.stats["errors"] == 0
        old.join(HANG_GUARD_S)
        assert not old.is_alive() and old.exitcode == -signal.SIGKILL  # the worker was killed, not left running
        assert set(_workers()) - before == set()  # and not replaced until it is needed
        # a slow item mid-batch scores 0 and does not hurt its neighbours (plain numbers: decided without a worker)
        assert mv.grade(["\\boxed{0.5}", SLOW, "\\boxed{3}"], ["\\frac{1}{2}", "1", "4"]) == [1.0, 0.0, 0.0]
        assert mv.stats == {"graded": 5, "timeouts": 2, "errors": 0}
        mv.timeout_s = GENEROUS_S
        completions, answers = zip(*ALGEBRA)
        assert mv.grade(list(completions), list(answers)) == [1.0, 1.0, 0.0]  # a fresh worker grades correctly
        (fresh,) = set(_workers()) - before
        assert fresh is not old and fresh.is_alive()
        assert mv.stats == {"graded": 8, "timeouts": 2, "errors": 0}
    finally:
        mv.close()
    assert set(_workers()) <= before
    with pytest.raises(RuntimeError, match="closed"):
        mv.grade(["\\boxed{1}"], ["2"])


@needs_math_verify
def test_two_slow_items_on_two_workers_are_both_killed():
    before = set(_workers())
    with MathVerifier(timeout_s=GENEROUS_S, workers=2) as mv:
        completions, answers = [c for c, _ in ALGEBRA[:2]], [a for _, a in ALGEBRA[:2]]
        assert mv.grade(completions, answers) == [1.0, 1.0]  # one item per worker: starts both
        first = set(_workers()) - before
        assert len(first) == 2
        mv.timeout_s = SHORT_S
        # round-robin: one slow item per worker, both in flight together, both killed
        assert _run_guarded(lambda: mv.grade([SLOW, SLOW], ["1", "2"]), "grade() of two slow items") == [0.0, 0.0]
        assert mv.stats["timeouts"] == 2 and mv.stats["errors"] == 0
        for proc in first:
            proc.join(HANG_GUARD_S)
            assert not proc.is_alive() and proc.exitcode == -signal.SIGKILL
        # slow items between plain-number rows: the rows keep their scores, both workers are killed again
        rows = [SLOW, "\\boxed{0.5}", "\\boxed{0.25}", SLOW, "\\boxed{7}", "\\boxed{1/3}"]
        golds = ["1", "\\frac{1}{2}", "1/4", "2", "8", "\\frac{1}{3}"]
        assert _run_guarded(lambda: mv.grade(rows, golds), "grade() of a mixed batch") == [
            0.0,
            1.0,
            1.0,
            0.0,
            0.0,
            1.0,
        ]
        assert mv.stats == {"graded": 10, "timeouts": 4, "errors": 0}
        mv.timeout_s = GENEROUS_S
        assert mv.grade(completions, answers) == [1.0, 1.0]  # two fresh workers
        second = set(_workers()) - before
        assert len(second) == 2 and not second & first
    assert set(_workers()) <= before


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


@needs_math_verify
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the item in flight")
def test_a_crashed_worker_scores_zero_and_counts_an_error():
    before = set(_workers())
    with MathVerifier(timeout_s=HANG_GUARD_S) as mv:  # the slow item must still be running when it is killed
        assert mv.grade([ALGEBRA[0][0]], [ALGEBRA[0][1]]) == [1.0]
        (worker,) = set(_workers()) - before
        idle = _cpu_ticks(worker.pid)
        out: list[list[float]] = []
        thread = threading.Thread(target=lambda: out.append(mv.grade([SLOW], ["1"])), daemon=True)
        thread.start()
        waited = 0.0
        while _cpu_ticks(worker.pid) < idle + 3:  # the idle worker uses no CPU: it is busy with the slow item
            assert waited < HANG_GUARD_S, "hang guard: the worker never started on the item"
            time.sleep(0.01)
            waited += 0.01
        os.kill(worker.pid, signal.SIGKILL)
        thread.join(HANG_GUARD_S)
        assert not thread.is_alive(), "hang guard: grade() did not return after its worker died"
        assert out == [[0.0]]
        assert mv.stats == {"graded": 2, "timeouts": 0, "errors": 1}
        completions, answers = zip(*ALGEBRA)
        assert mv.grade(list(completions), list(answers)) == [1.0, 1.0, 0.0]  # restarted


def test_missing_math_verify_says_how_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install 'npo-lab\[llm\]'"):
        MathVerifier()
    with pytest.raises(ImportError, match="npo-lab"):
        RewardSet(RewardConfig(accuracy_weight=1.0))
    RewardSet(RewardConfig(accuracy_weight=0.0, format_weight=1.0)).close()  # no accuracy: no math-verify needed


@needs_math_verify
def test_constructor_checks():
    with pytest.raises(ValueError, match="timeout_s"):
        MathVerifier(timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        MathVerifier(workers=0)


# --- load_reward_fn, RewardSet -------------------------------------------------------------------------------

CUSTOM = """
import math

CALLS = []


def bonus(prompts, completions, images, answer, difficulty, **kw):
    CALLS.append(dict(prompts=prompts, completions=completions, images=images, answer=answer,
                      difficulty=difficulty, **kw))
    return [None if d is None else d / 10 for d in difficulty]


def flag(prompts, completions, **kw):
    return [len(c) > 12 for c in completions]


def wrong_length(prompts, completions, **kw):
    return [0.0]


def gives_str(prompts, completions, **kw):
    return ["1.0" for _ in completions]


def gives_nan(prompts, completions, **kw):
    return [math.nan for _ in completions]


def gives_inf(prompts, completions, **kw):
    return [math.inf for _ in completions]


def gives_float(prompts, completions, **kw):
    return 1.0


NOT_CALLABLE = 3
"""


@pytest.fixture
def custom_mod(tmp_path, monkeypatch):
    name = "npo_rewards_custom_mod"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_reward_fn(custom_mod):
    assert load_reward_fn(f"{custom_mod}:flag").__name__ == "flag"
    assert load_reward_fn(" os.path : join ") is os.path.join


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon", "must be 'module:function'"),
        ("mod:", "must be 'module:function'"),
        (":fn", "must be 'module:function'"),
        ("a:b:c", "must be 'module:function'"),
        ("npo_no_such_module_xyz:fn", "cannot import module 'npo_no_such_module_xyz'"),
        ("{mod}:no_such_fn", "has no attribute 'no_such_fn'"),
        ("{mod}:NOT_CALLABLE", "not callable"),
    ],
)
def test_load_reward_fn_bad_specs(custom_mod, spec, message):
    spec = spec.format(mod=custom_mod)
    with pytest.raises(ValueError, match=message) as info:
        load_reward_fn(spec)
    assert repr(spec) in str(info.value)


@needs_math_verify
def test_reward_set_totals_and_components(custom_mod):
    cfg = RewardConfig(
        accuracy_weight=1.0,
        format_weight=0.25,
        think_tags=True,
        custom=f"{custom_mod}:bonus, {custom_mod}:flag,{custom_mod}:bonus",
        timeout_s=20.0,
    )
    prompts = ["p0", "p1", "p2", "p3"]
    completions = [
        "<think>a</think> \\boxed{42}",
        "\\boxed{42}",
        "<think>b</think> \\boxed{}",
        "<think></think>\\boxed{6}",
    ]
    answers = ["42", "42", "7", "7"]
    images = [["img0"], [], ["img2a", "img2b"], []]
    columns = [{"difficulty": 1, "answer": "ignored"}, {"difficulty": 3, "topic": "algebra"}, {}, {"difficulty": 0}]
    with RewardSet(cfg) as rewards:
        totals, components = rewards.score(prompts, completions, answers, images, columns)
    assert list(components) == ["accuracy", "format", "bonus", "flag", "bonus_2"]
    assert components["accuracy"] == [1.0, 1.0, 0.0, 0.0]
    assert components["format"] == [1.0, 0.0, 0.0, 1.0]
    assert components["bonus"] == components["bonus_2"] == [0.1, 0.3, None, 0.0]
    assert components["flag"] == [1.0, 0.0, 1.0, 1.0]
    expected = [1.0 + 0.25 + 0.2 + 1.0, 1.0 + 0.6, 1.0, 0.25 + 1.0]
    assert totals == pytest.approx(expected)

    calls = sys.modules[custom_mod].CALLS
    assert len(calls) == 2
    assert calls[0] == {
        "prompts": prompts,
        "completions": completions,
        "images": images,
        "answer": answers,
        "difficulty": [1, 3, None, 0],
        "topic": [None, "algebra", None, None],
    }


def test_reward_set_without_accuracy_starts_no_worker(custom_mod):
    before = set(_workers())
    cfg = RewardConfig(accuracy_weight=0.0, format_weight=0.5, custom=f"{custom_mod}:flag")
    with RewardSet(cfg) as rewards:
        assert rewards.verifier is None
        completions = ["\\boxed{1}", "a long answer, no box"]
        totals, components = rewards.score(["p", "p"], completions, ["1", "1"], [[], []], [{}, {}])
    assert list(components) == ["format", "flag"]
    assert components == {"format": [1.0, 0.0], "flag": [0.0, 1.0]}
    assert totals == [0.5, 1.0]
    assert set(_workers()) == before


@pytest.mark.parametrize(
    "fn, message",
    [
        ("wrong_length", "returned 1 values for 2 completions"),
        ("gives_str", "returned a str at index 0"),
        ("gives_nan", "returned nan"),
        ("gives_inf", "returned inf"),
        ("gives_float", "must return a list"),
    ],
)
def test_reward_set_rejects_bad_custom_output(custom_mod, fn, message):
    rewards = RewardSet(RewardConfig(accuracy_weight=0.0, custom=f"{custom_mod}:{fn}"))
    with pytest.raises(ValueError, match=message) as info:
        rewards.score(["p", "p"], ["a", "b"], ["1", "1"], [[], []], [{}, {}])
    assert repr(fn) in str(info.value)


def test_reward_set_checks_lengths():
    rewards = RewardSet(RewardConfig(accuracy_weight=0.0, format_weight=1.0))
    with pytest.raises(ValueError, match="1 answers for 2 completions"):
        rewards.score(["p", "p"], ["a", "b"], ["1"], [[], []], [{}, {}])


def test_custom_output_conversion(custom_mod):
    # bools are numbers (True -> 1.0), as in TRL; numpy arrays (and tensors) are read through tolist()
    np = pytest.importorskip("numpy")
    from npo_lab.llm.rewards import _check_custom

    assert _check_custom("f", [True, False, None, 2], 4) == [1.0, 0.0, None, 2.0]
    assert _check_custom("f", (0.5, np.float32(1.5)), 2) == [0.5, 1.5]
    assert _check_custom("f", np.array([0.5, 1.5]), 2) == [0.5, 1.5]

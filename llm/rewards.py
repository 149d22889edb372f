"""Verifiable rewards for model completions: math-verify accuracy, a format reward, custom callables.

Threat model: a completion is untrusted text written by the policy, which is optimised to find whatever the grader
rewards. Only its last ``max_chars`` characters are graded (size limit). ``npo_lab.llm.grader`` decides, in this
process and in linear time, which span is the completion's final answer and whether it commits to it (a later
answer, a retraction or a hedge scores 0), and grades what needs no algebra (plain numbers, exactly; choice
letters; written-form rules such as lowest terms). The rest goes to math-verify (regexes, a LaTeX parser and
sympy, which spends minutes or more on inputs like ``9^{9^{9^{9^{9}}}}``), in a worker process that is killed and
replaced when an item takes longer than ``timeout_s`` (time limit), so a hostile completion costs at most
``timeout_s`` and a score of 0. math-verify's own timeouts use ``signal.alarm``, which only works on the main
thread; they are switched off, so grading also works from any thread.

What is evaluated. Nothing here calls ``eval`` or ``exec`` on model output. math-verify does, indirectly: sympy's
``parse_expr`` (which runs Python's ``eval`` on code generated from its input) is called by math-verify's
expression extraction on text its regex has filtered down to digits, '.', whitespace and the operators
``+ - * × / ^ ( ) ÷``, and by its LaTeX parser (latex2sympy2_extended, through ``sympy.Number``) on number tokens.
The worker reads the answer with the LaTeX extraction only, so model text reaches ``parse_expr`` only as number
tokens; the reference (trusted data) is read with math-verify's default extraction, both kinds.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import math
import multiprocessing
import numbers
import os
import re
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from npo_lab.llm.config import RewardConfig
from npo_lab.llm.grader import AnswerRules, decide

__all__ = ["MathVerifier", "RewardSet", "extract_boxed", "format_reward", "load_reward_fn"]

_INSTALL_HINT = "math-verify is needed for the accuracy reward: pip install 'npo-lab[llm]'"
_OPENERS = ("\\boxed{", "\\fbox{")
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character, or a brace: no nesting, no backtracking
_STARTUP_TIMEOUT_S = 120.0  # a worker's interpreter start and imports (not counted in the per-item limit)
_FIXED_KWARGS = frozenset({"prompts", "completions", "images", "answer"})


def _last_boxed(text: str) -> tuple[int, int, int] | None:
    """(start of the opener, start, end of the content) of the last \\boxed{ or \\fbox{ in text; None if absent or
    unbalanced. Backslash-escaped characters (\\{, \\}, \\\\) do not count as braces."""
    start = max(text.rfind(opener) for opener in _OPENERS)
    if start < 0:
        return None
    content = text.index("{", start) + 1
    depth = 1
    for m in _BRACE_TOKENS.finditer(text, content):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return start, content, m.start()
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if absent or unbalanced.

    One linear scan, so safe on untrusted text of any size."""
    span = _last_boxed(text)
    return None if span is None else text[span[1] : span[2]]


def format_reward(completion: str, think_tags: bool = False) -> float:
    """1.0 when the completion has a non-empty final ``\\boxed{}`` answer and, with think_tags, exactly one
    ``<think>`` and one ``</think>``, in that order, both before the answer; else 0.0. Linear time."""
    span = _last_boxed(completion)
    if span is None or not completion[span[1] : span[2]].strip():
        return 0.0
    if think_tags:
        if completion.count("<think>") != 1 or completion.count("</think>") != 1:
            return 0.0
        opened, closed = completion.find("<think>"), completion.find("</think>")
        if not opened < closed or closed + len("</think>") > span[0]:
            return 0.0
    return 1.0


def _exit_with_parent(parent_pid: int, pdeathsig: bool) -> None:
    """Make this worker die with its parent, even in the middle of a slow item (the pipe's EOF only ends the wait
    between items). Linux: PR_SET_PDEATHSIG, which fires when the parent's forking thread ends, hence only asked for
    when that was the main thread; else a thread watching the parent, which a long C-level sympy call may stall."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before this point
        os._exit(0)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(0)), daemon=True).start()


_PROBE_POINTS = ((7, 3), (-11, 5), (13, 17))  # rational values given to the variables, in order of their names


def _differ_numerically(gold: list, pred: list) -> bool:
    """True when the first sympy expressions of two math-verify parses differ at 50 significant digits: as numbers,
    or, with the same variables, at any of three fixed rational points. math-verify compares to 15 digits and chops
    what is smaller (``evalf(chop=True)``), so it pays for ``\\sqrt{2} + 10^{-20}`` against ``\\sqrt{2}`` and for
    ``0.3333333333333333x`` against ``x/3``; this check refuses those. Cases sympy cannot evaluate keep
    math-verify's verdict."""
    import sympy

    g = next((x for x in gold if isinstance(x, sympy.Expr)), None)
    p = next((x for x in pred if isinstance(x, sympy.Expr)), None)
    if g is None or p is None:
        return False  # relations, sets, intervals, strings: math-verify's structural comparison stands
    try:
        g, p = g.doit(), p.doit()
        if g.free_symbols != p.free_symbols:
            return False  # not a near-equal number: math-verify matched text or symbols its own way
        names = sorted(g.free_symbols, key=lambda sym: sym.name)
        points = [
            dict(zip(names, (sympy.Rational(a, b) * (k + 1) for k in range(len(names))))) for a, b in _PROBE_POINTS
        ]
        for point in points if names else [{}]:
            gv, pv = sympy.N(g.subs(point), 50), sympy.N(p.subs(point), 50)
            if not (gv.is_number and pv.is_number):
                return False
            if bool(abs(gv - pv) > max(sympy.Integer(1), abs(gv)) * sympy.Float("1e-40", 50)):
                return True
        return False
    except Exception:  # a point outside the domain, a comparison sympy cannot decide
        return False


def _math_verify_worker(conn: Connection, parent_pid: int, pdeathsig: bool) -> None:
    """Worker process: imports math-verify, says 'ready', then answers (prediction, gold) items with
    ('ok', bool) or ('error', message) until the pipe closes. The prediction is read with the LaTeX extraction only
    (it arrives as ``\\boxed{answer}``), the gold answer with math-verify's default extraction."""
    _exit_with_parent(parent_pid, pdeathsig)
    try:
        logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" warning: intended
        from math_verify import LatexExtractionConfig, parse, verify

        latex_only = [LatexExtractionConfig()]
        verify(parse("$1$", parsing_timeout=None), parse("$1$", parsing_timeout=None), timeout_seconds=None)  # warm-up
    except Exception as e:  # reported to the parent, which raises
        conn.send(("fail", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            pred, gold = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        try:
            gold_parsed = parse(gold, parsing_timeout=None)
            pred_parsed = parse(pred, extraction_config=latex_only, parsing_timeout=None)
            ok = verify(gold_parsed, pred_parsed, timeout_seconds=None)
            ok = ok and not _differ_numerically(gold_parsed, pred_parsed)
            reply: tuple[str, object] = ("ok", bool(ok))
        except Exception as e:
            reply = ("error", type(e).__name__)  # not str(e): printing a sympy object can itself hang
        conn.send(reply)


class _Worker:
    """One grading process and the parent's end of its pipe."""

    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_math_verify_worker,
            args=(child, os.getpid(), threading.current_thread() is threading.main_thread()),
            daemon=True,
            name="math-verify",
        )
        self.proc.start()
        child.close()
        self.ready = False

    def await_ready(self) -> None:
        """Block until the worker has imported math-verify (ImportError / RuntimeError when it could not)."""
        if self.ready:
            return
        try:
            msg = self.conn.recv() if self.conn.poll(_STARTUP_TIMEOUT_S) else ("fail", "no answer in time")
        except (EOFError, OSError):
            msg = ("fail", "the process exited")
        if msg[0] != "ready":
            self.kill()
            if "math_verify" in str(msg[1]):
                raise ImportError(f"{_INSTALL_HINT} (worker: {msg[1]})")
            raise RuntimeError(f"math-verify worker failed to start: {msg[1]}")
        self.ready = True

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5.0)
        self.conn.close()


def _kill_all(slots: list[_Worker | None]) -> None:
    for i, w in enumerate(slots):
        if w is not None:
            w.kill()
            slots[i] = None


class MathVerifier:
    """Grades completions against gold answers: the final-answer rule of ``npo_lab.llm.grader`` here, math-verify
    for what needs algebra, each such item under a time limit, in worker processes.

    Workers (spawn context) start lazily and persist between calls; an item that runs over ``timeout_s`` gets its
    worker killed (a fresh one starts when next needed) and scores 0. ``timeout_s`` is read for every item, so it
    may be changed between calls. An exception in math-verify scores 0 too.
    Safe to call from any thread (calls are serialised). ``stats`` counts items ``graded`` (all scored items,
    including those that timed out or failed), ``timeouts`` and ``errors``. Close with ``close()`` or a ``with``
    block; workers left open are killed when the verifier is collected or the interpreter exits. The workers are
    started with the "spawn" method, so a script that grades at import time needs ``if __name__ == "__main__":``.

    Args:
        timeout_s: Time limit for one item in a worker (parse + verify).
        max_chars: Only the last max_chars characters of a completion are read.
        workers: Worker processes (items are spread round-robin, one in flight per worker).
        lowest_terms: A fraction must be in lowest terms where the reference's are (``AnswerRules``).
        decimal_match: "exact" or "rounded" (``AnswerRules``).
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        max_chars: int = 4000,
        workers: int = 1,
        lowest_terms: bool = True,
        decimal_match: str = "exact",
    ) -> None:
        if importlib.util.find_spec("math_verify") is None:
            raise ImportError(_INSTALL_HINT)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self.rules = AnswerRules(lowest_terms=bool(lowest_terms), decimal_match=decimal_match)  # type: ignore[arg-type]
        self.timeout_s = float(timeout_s)
        self.max_chars = int(max_chars)
        self.stats: dict[str, int] = {"graded": 0, "timeouts": 0, "errors": 0}
        self._ctx = multiprocessing.get_context("spawn")
        self._slots: list[_Worker | None] = [None] * workers
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _kill_all, self._slots)  # also runs at interpreter exit

    def _prepare(self, completion: str, gold: str) -> tuple[float | None, str, str]:
        """(score decided here or None, prediction text, gold text) for math-verify."""
        decision = decide(completion[-self.max_chars :], gold, self.rules)
        if decision.score is not None:
            return decision.score, "", ""
        return None, "\\boxed{" + decision.prediction + "}", "$" + decision.reference + "$"

    def grade(self, completions: Sequence[str], answers: Sequence[str]) -> list[float]:
        """1.0 or 0.0 per completion: does the final answer of its last max_chars characters (the final-answer rule
        of ``npo_lab.llm.grader``) equal the gold answer?"""
        if len(completions) != len(answers):
            raise ValueError(f"grade: {len(completions)} completions but {len(answers)} answers")
        scores = [0.0] * len(completions)
        jobs: list[tuple[int, str, str]] = []
        for i, (completion, gold) in enumerate(zip(completions, answers)):
            fast, pred, gold_text = self._prepare(str(completion), str(gold))
            if fast is None:
                jobs.append((i, pred, gold_text))
            else:
                scores[i] = fast
        with self._lock:
            if self._closed:
                raise RuntimeError("MathVerifier is closed")
            self._run(jobs, scores)
            self.stats["graded"] += len(completions)
        return scores

    def _run(self, jobs: list[tuple[int, str, str]], scores: list[float]) -> None:
        """Grade jobs round-robin over the workers, one item in flight per worker, each with its own deadline."""
        n = len(self._slots)
        queues = [deque(jobs[k::n]) for k in range(n)]
        for k in range(n):  # start the needed workers together, so their start-ups overlap
            if queues[k] and self._slots[k] is None:
                self._slots[k] = _Worker(self._ctx)
        inflight: dict[int, tuple[int, float]] = {}  # slot -> (row, deadline)

        def launch(k: int) -> None:
            while queues[k]:
                row, pred, gold = queues[k].popleft()
                w = self._slots[k]
                if w is None or not w.proc.is_alive():  # first use, or died between calls
                    self._drop(k)
                    w = self._slots[k] = _Worker(self._ctx)
                w.await_ready()
                try:
                    w.conn.send((pred, gold))
                except (OSError, ValueError):  # the worker died between items
                    self._drop(k)
                    self.stats["errors"] += 1
                    continue
                inflight[k] = (row, time.monotonic() + self.timeout_s)
                return

        try:
            for k in range(n):
                launch(k)
            while inflight:
                conns = {self._worker(k).conn: k for k in inflight}
                left = min(deadline for _, deadline in inflight.values()) - time.monotonic()
                for conn in wait(list(conns), timeout=max(0.0, left)):
                    k = conns[conn]  # type: ignore[index]
                    row, _ = inflight.pop(k)
                    try:
                        status, value = self._worker(k).conn.recv()
                    except (EOFError, OSError):  # the worker died (e.g. out of memory)
                        status, value = "error", None
                        self._drop(k)
                    if status == "ok":
                        scores[row] = 1.0 if value else 0.0
                    else:
                        self.stats["errors"] += 1
                    launch(k)
                now = time.monotonic()
                expired = [k for k, (_, dl) in inflight.items() if dl <= now and not self._worker(k).conn.poll()]
                for k in expired:  # kill first, then start the replacements together
                    del inflight[k]
                    self._drop(k)
                    self.stats["timeouts"] += 1
                    if queues[k]:
                        self._slots[k] = _Worker(self._ctx)
                for k in expired:
                    launch(k)
        except BaseException:  # a reply still on its way would be read as the next item's: kill those workers
            for k in inflight:
                self._drop(k)
            raise

    def _worker(self, k: int) -> _Worker:
        w = self._slots[k]
        assert w is not None
        return w

    def _drop(self, k: int) -> None:
        w = self._slots[k]
        if w is not None:
            w.kill()
            self._slots[k] = None

    def close(self) -> None:
        """Kill the workers; grade() then raises."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_reward_fn(spec: str) -> Callable[..., Any]:
    """The callable named by 'module:function' (a dotted attribute path is allowed after the colon)."""
    mod_name, sep, attr = spec.strip().partition(":")
    if not sep or not mod_name.strip() or not attr.strip() or ":" in attr:
        raise ValueError(f"reward function spec {spec!r} must be 'module:function'")
    mod_name, attr = mod_name.strip(), attr.strip()
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as e:
        raise ValueError(
            f"reward function {spec!r}: cannot import module {mod_name!r} ({type(e).__name__}: {e})"
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"reward function {spec!r}: {mod_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"reward function {spec!r}: {attr!r} is a {type(obj).__name__}, not callable")
    return obj


def _check_custom(name: str, out: object, n: int) -> list[float | None]:
    """A custom reward function's output as floats/None; ValueError naming the function when malformed."""
    if hasattr(out, "tolist"):  # numpy arrays, torch tensors
        out = out.tolist()
    if isinstance(out, (str, bytes, Mapping)) or not isinstance(out, Sequence):
        raise ValueError(f"reward function {name!r} must return a list of len(completions), got {type(out).__name__}")
    if len(out) != n:
        raise ValueError(f"reward function {name!r} returned {len(out)} values for {n} completions")
    values: list[float | None] = []
    for i, v in enumerate(out):
        if v is None:
            values.append(None)
            continue
        if not isinstance(v, numbers.Real):
            raise ValueError(f"reward function {name!r} returned a {type(v).__name__} at index {i}, not a number")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"reward function {name!r} returned {f} at index {i} (rewards must be finite)")
        values.append(f)
    return values


class RewardSet:
    """The reward of a RewardConfig: accuracy_weight x accuracy (``MathVerifier``) + format_weight x format reward +
    each custom function (weight 1). Close it (or use ``with``) to stop the grading workers."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        used = {"accuracy", "format"}
        self.custom: list[tuple[str, Callable[..., Any]]] = []
        for spec in filter(None, (s.strip() for s in cfg.custom.split(","))):
            fn = load_reward_fn(spec)
            base = getattr(fn, "__name__", None) or spec.rpartition(":")[2]
            name, j = base, 2
            while name in used:
                name, j = f"{base}_{j}", j + 1
            used.add(name)
            self.custom.append((name, fn))
        self.verifier = (
            MathVerifier(cfg.timeout_s, cfg.max_chars, cfg.workers, cfg.lowest_terms, cfg.decimal_match)
            if cfg.accuracy_weight > 0
            else None
        )

    def score(
        self,
        prompts: list[str],
        completions: list[str],
        answers: list[str],
        images: list[list],
        columns: list[dict],
    ) -> tuple[list[float], dict[str, list[float | None]]]:
        """(total reward per row, {component name: value per row}). Components: 'accuracy' (when
        accuracy_weight > 0), 'format' (when format_weight > 0), then each custom function by its ``__name__``
        (deduplicated with _2, _3, ...). A custom None counts as 0 in the total and stays None in its component.

        Custom functions are called TRL-style: ``fn(prompts, completions, images=images, answer=answers, **cols)``,
        one list per key of the rows' ``columns`` dicts (missing -> None; keys named like the fixed arguments are
        left out)."""
        n = len(completions)
        for what, seq in (("prompts", prompts), ("answers", answers), ("images", images), ("columns", columns)):
            if len(seq) != n:
                raise ValueError(f"score: {len(seq)} {what} for {n} completions")
        cfg = self.cfg
        totals = [0.0] * n
        components: dict[str, list[float | None]] = {}
        if self.verifier is not None:
            acc = self.verifier.grade(completions, answers)
            components["accuracy"] = list(acc)
            totals = [t + cfg.accuracy_weight * a for t, a in zip(totals, acc)]
        if cfg.format_weight > 0:
            fmt = [format_reward(str(c), cfg.think_tags) for c in completions]
            components["format"] = list(fmt)
            totals = [t + cfg.format_weight * f for t, f in zip(totals, fmt)]
        if self.custom:
            keys = list(dict.fromkeys(k for row in columns for k in row if k not in _FIXED_KWARGS))
            cols = {k: [row.get(k) for row in columns] for k in keys}
            for name, fn in self.custom:
                values = _check_custom(name, fn(prompts, completions, images=images, answer=answers, **cols), n)
                components[name] = values
                totals = [t + (v or 0.0) for t, v in zip(totals, values)]
        return totals, components

    def close(self) -> None:
        """Stop the grading workers."""
        if self.verifier is not None:
            self.verifier.close()

    def __enter__(self) -> RewardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

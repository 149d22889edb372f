"""Helpers shared by the tests (imported as ``helpers``: pytest puts tests/ on sys.path for its conftest.py).

Time limits: hosts of the CI class differ 2.5-5x in speed and a shared host's speed changes by the minute, so no
test asserts a duration. A subprocess gets :data:`HANG_GUARD_S`, far beyond what any of them needs on a slow host
(the slowest, a grading class of three students, measures under 90 s on the project's 2-core machine), and a guard
that fires says it is a hang guard.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

HANG_GUARD_S = 1800
"""Seconds after which a subprocess of a test is taken to hang (30 minutes; never a speed budget)."""


def run_guarded(cmd: Sequence[str], *, guard_s: float = HANG_GUARD_S, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kwargs)`` under the hang guard: a command still running after ``guard_s`` is killed
    and the test fails with a message that says it hung (not that it was slow)."""
    try:
        return subprocess.run(list(cmd), timeout=guard_s, **kwargs)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"hang guard: {' '.join(map(str, cmd))[:300]} was still running after {guard_s:g} s"
        ) from e

"""Backend-neutral verifiable tasks (standard library only): problem generators plus exact verifiers."""

from npo_lab.tasks.arithmetic import ArithmeticConfig, Problem, make_splits, score

TASKS = {"arith": ArithmeticConfig}

__all__ = ["ArithmeticConfig", "Problem", "TASKS", "make_splits", "score"]

"""Training: the state (:mod:`.state`), one GRPO step (:mod:`.step`), look-ahead and rollback (:mod:`.rollback`),
probing sources' Q, V and S (:mod:`.probe`), what the loop asks of a method (:mod:`.method`) and the loop
(:mod:`.loop`). Written against the backend protocol only; methods (:mod:`npo_lab.methods`) build on it."""

from npo_lab.train.loop import RunResult, train
from npo_lab.train.method import GuidePlan, LookaheadRequest, Method, StepOutcome
from npo_lab.train.rollback import LookaheadResult, lookahead, restore, snapshot
from npo_lab.train.state import TrainState, make_state, save_training_checkpoint
from npo_lab.train.step import NonFiniteError, grpo_step

__all__ = [
    "GuidePlan",
    "LookaheadRequest",
    "LookaheadResult",
    "Method",
    "NonFiniteError",
    "RunResult",
    "StepOutcome",
    "TrainState",
    "grpo_step",
    "lookahead",
    "make_state",
    "restore",
    "save_training_checkpoint",
    "snapshot",
    "train",
]

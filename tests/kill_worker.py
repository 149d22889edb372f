"""``npo-lab train`` that kills itself with SIGKILL at a chosen point (used by tests/test_resume.py).

KILL_AT selects the point, counted from this process's start:

* ``step:N``: at the N-th training step (main or look-ahead), before it runs;
* ``lookahead:N``: at the N-th look-ahead step (inside NPO's look-ahead window), before it runs;
* ``write:N``: in the middle of the N-th checkpoint file write: half of its bytes are on disk;
* unset: no kill (an ordinary run).
"""

from __future__ import annotations

import os
import signal
import sys

from npo_lab import checkpoint, cli
from npo_lab.train import loop


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    kind, _, n = os.environ.get("KILL_AT", "").partition(":")
    count = 0
    if kind in ("step", "lookahead"):
        grpo_step = loop.grpo_step

        def counted(state, grpo, method=None):
            nonlocal count
            if kind == "step" or method is None:  # look-ahead steps run without a method
                count += 1
                if count == int(n):
                    _die()
            return grpo_step(state, grpo, method)

        loop.grpo_step = counted  # the name the training loop calls
    elif kind == "write":
        write = checkpoint._write_file

        def torn(path, data):
            nonlocal count
            count += 1
            if count == int(n):
                with open(path, "xb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                _die()
            write(path, data)

        checkpoint._write_file = torn
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

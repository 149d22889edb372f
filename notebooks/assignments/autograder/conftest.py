"""The autograder's fixtures: ``--submission`` (a notebook, or one student's folder) and a per-test time limit.

    python -m pytest notebooks/assignments/autograder --submission path/to/alice/       # every assignment
    python -m pytest notebooks/assignments/autograder/test_a1_group_advantages.py --submission a1.ipynb

Each test module names its assignment in ``ASSIGNMENT`` and uses the ``sub`` fixture: the submission loaded by
:func:`submission.load_submission`, whose attributes are the student's functions. To grade a whole class, with
every (student, assignment) in its own subprocess and a report, use ``notebooks/assignments/grade.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from submission import Submission, find_notebook, load_submission, time_limit

torch.set_num_threads(1)  # several gradings run side by side; results must not depend on the thread count
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))  # its first call imports for ~1 s: not in a test's limit


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("npo_lab autograder")
    group.addoption("--submission", help="a notebook (.ipynb or percent-format .py) or a folder of one student's")
    group.addoption("--test-timeout", type=float, default=30.0, help="seconds per test (0: none); default 30")
    group.addoption("--cell-timeout", type=float, default=60.0, help="seconds per loaded cell (0: none); default 60")


@pytest.fixture(scope="module")
def sub(request: pytest.FixtureRequest) -> Submission:
    """The submission of this module's ``ASSIGNMENT``, loaded once per module."""
    where = request.config.getoption("--submission")
    if not where:
        pytest.fail("pass --submission NOTEBOOK_OR_FOLDER (see docs/teaching.md)", pytrace=False)
    assignment = request.module.ASSIGNMENT
    path = find_notebook(Path(where), assignment)
    if path is None:
        pytest.fail(f"no notebook for {assignment} in {where}", pytrace=False)
    return load_submission(path, cell_timeout=request.config.getoption("--cell-timeout") or None)


@pytest.fixture(autouse=True)
def _per_test_time_limit(request: pytest.FixtureRequest):
    """An infinite loop in one function fails the tests that call it, not the whole assignment."""
    with time_limit(request.config.getoption("--test-timeout") or None, request.node.name):
        yield

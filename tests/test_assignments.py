"""The classroom assignments (notebooks/assignments): generated notebooks, self-checks, and the autograder.

* the committed student and instructor notebooks are exactly what make.py generates from the sources;
* the self-check cells pass on the instructor version and fail on the student stubs;
* the autograder (grade.py, one subprocess per student and assignment) fails every test on the student stubs,
  passes every test on the instructor version, and catches a typical mistake in each assignment while crediting
  the rest; a broken, looping or missing notebook costs only its own assignment.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S, run_guarded

ASSIGNMENTS = Path(__file__).resolve().parents[1] / "notebooks" / "assignments"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"npo_lab_assignments_{name}", ASSIGNMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


make = load("make")
grade = load("grade")
NAMES = make.assignments()


def test_there_are_assignments_with_an_autograder_each():
    assert len(NAMES) >= 4, NAMES
    assert NAMES == grade.assignments(), "every source needs autograder/test_<name>.py and vice versa"
    for version in make.VERSIONS:
        assert sorted(p.stem for p in (ASSIGNMENTS / version).glob("*.ipynb")) == NAMES, version


@pytest.mark.parametrize("version", make.VERSIONS)
@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_are_generated_from_their_sources(name, version):
    import nbformat

    committed = (ASSIGNMENTS / version / f"{name}.ipynb").read_text(encoding="utf-8")
    assert committed == make.render(ASSIGNMENTS / "source" / f"{name}.py", version), (
        f"{version}/{name}.ipynb differs from source/{name}.py: run python notebooks/assignments/make.py"
    )
    nb = nbformat.reads(committed, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "committed notebooks carry no outputs"
    text = "\n".join(c.source for c in code)
    assert ("raise NotImplementedError" in text) == (version == "student")
    assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text
    assert any("selfcheck" in c.metadata.get("tags", []) for c in code), "every assignment has self-check cells"


def test_make_rejects_malformed_sources(tmp_path):
    bad = {
        "unbalanced": "# %%\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n",
        "no_solution": "# %%\nx = 1\n",
        "bad_markdown": "# %% [markdown]\n# fine\nnot a comment\n# %%\n### BEGIN SOLUTION\n### END SOLUTION\n",
        "unknown_tag": '# %% tags=["selfchek"]\n### BEGIN SOLUTION\n### END SOLUTION\n',
    }
    for name, text in bad.items():
        src = tmp_path / f"a9_{name}.py"
        src.write_text(text)
        with pytest.raises(ValueError):
            make.render(src, "student")


RUN_CELLS = textwrap.dedent(
    """
    import json, sys, traceback
    import matplotlib
    matplotlib.use("Agg")
    report = {}
    for path in sys.argv[1:]:
        nb = json.load(open(path, encoding="utf-8"))
        ns, cells = {"__name__": "__main__"}, []
        for c in nb["cells"]:
            if c["cell_type"] != "code":
                continue
            try:
                exec(compile("".join(c["source"]), path, "exec"), ns)
                cells.append([c["metadata"].get("tags", []), None])
            except Exception as e:
                cells.append([c["metadata"].get("tags", []), type(e).__name__ + ": " + str(e)[:200]])
        report[path] = cells
    print(json.dumps(report))
    """
)


def test_self_checks_pass_on_solutions_and_fail_on_stubs(tmp_path):
    """Runs every code cell of every notebook, in order, as Jupyter would (one namespace per notebook)."""
    paths = [str(ASSIGNMENTS / v / f"{n}.ipynb") for v in make.VERSIONS for n in NAMES]
    out = run_guarded([sys.executable, "-c", RUN_CELLS, *paths], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for path, cells in report.items():
        if "/instructor/" in path.replace("\\", "/"):
            assert all(err is None for _, err in cells), (path, [e for _, e in cells if e])
            continue
        for tags, err in cells:
            if "selfcheck" in tags:
                assert err is not None and err.startswith("NotImplementedError"), (path, tags, err)
            elif "demo" not in tags:
                assert err is None, (path, err)  # imports and definitions run on the stubs


MUTANTS = {  # a typical mistake per assignment: (text of the solution, the mistake)
    "a1_group_advantages": ("(count - 1).clamp(min=1.0)", "count"),  # a biased std
    "a2_clipped_loss": ("return masked.sum() / mask.sum().clamp(min=1.0)", "return loss_mat.mean()"),  # no mask
    "a3_qvs_estimators": ("if not math.isnan(ss) and ss > best_s:", "if not math.isnan(ss) and ss >= best_s:"),
    "a4_autonpo_trigger": ("step - self.last_intervention < self.cooldown", "False"),  # no cooldown
    "a5_gate_and_merge": (
        "        if r > correct_threshold:\n            correct",
        "        if True:\n            correct",
    ),  # a wrong guide row may be inserted
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """grade.py on a class of three (one subprocess per student and assignment, two at a time): the stubs, the
    solutions, and a broken submission."""
    root = tmp_path_factory.mktemp("class")
    for version in make.VERSIONS:
        shutil.copytree(ASSIGNMENTS / version, root / version)
    broken = root / "broken"
    broken.mkdir()
    # a2 is not valid JSON; a5 loops forever in one function (its other tests must still pass) and is renamed (found
    # by its metadata); the others are missing
    (broken / "a2_clipped_loss.ipynb").write_text('{"cells": [', encoding="utf-8")
    a5 = (ASSIGNMENTS / "instructor" / "a5_gate_and_merge.ipynb").read_text(encoding="utf-8")
    assert a5.count("return group_acc < threshold") == 1
    (broken / "my homework.ipynb").write_text(a5.replace("return group_acc < threshold", "while True: pass"))
    # the whole-assignment limit is only a hang guard here; the per-test limit stops a5's loop after 10 s (the
    # slowest autograder test takes 0.03 s on the project's machine, so no legitimate test comes near it)
    results = grade.grade([root], jobs=2, timeout=HANG_GUARD_S, test_timeout=10)
    out = root / "report"
    grade.write_report(results, out)
    return {(r.student, r.assignment): r for r in results}, out


@pytest.mark.parametrize("name", NAMES)
def test_autograder_fails_every_test_on_the_student_stubs(graded, name):
    r = graded[0]["student", name]
    assert r.status == "failed" and r.total >= 10 and r.passed == 0, (r.status, r.passed, r.total, r.detail)


@pytest.mark.parametrize("name", NAMES)
def test_autograder_passes_every_test_on_the_instructor_version(graded, name):
    r = graded[0]["instructor", name]
    failures = [(t["name"], t["message"][:200]) for t in r.tests if t["outcome"] != "passed"]
    assert r.status == "passed" and r.passed == r.total >= 10, (r.status, r.detail, failures)


def test_one_broken_assignment_does_not_hide_the_others(graded):
    by, out = graded
    assert [by["broken", n].status for n in NAMES] == ["missing", "failed", "missing", "missing", "failed"]
    a2 = by["broken", "a2_clipped_loss"]
    assert a2.passed == 0 and a2.total > 0 and all("JSONDecodeError" in t["message"] for t in a2.tests), a2.tests[:1]
    a5 = by["broken", "a5_gate_and_merge"]
    timed_out = [t["name"] for t in a5.tests if "GradingTimeout" in t["message"]]
    assert timed_out == ["test_gate_is_at_most_the_threshold"] and a5.passed == a5.total - 1, a5.tests
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| broken | missing | 0/" in report and "| instructor | " in report and "100%" in report
    rows = (out / "grades.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("student,assignment,status") and len(rows) == 1 + 3 * len(NAMES)


@pytest.fixture(scope="module")
def mutants(tmp_path_factory):
    """The autograder (one pytest process over every module) on instructor notebooks with one mistake each."""
    folder, scratch = tmp_path_factory.mktemp("mutants"), tmp_path_factory.mktemp("mutated_sources")
    for name in NAMES:
        src = (ASSIGNMENTS / "source" / f"{name}.py").read_text(encoding="utf-8")
        right, wrong = MUTANTS[name]
        assert src.count(right) == 1, f"the solution of {name} changed: update MUTANTS"
        (scratch / f"{name}.py").write_text(src.replace(right, wrong), encoding="utf-8")
        (folder / f"{name}.ipynb").write_text(make.render(scratch / f"{name}.py", "instructor"), encoding="utf-8")
    autograder, xml = ASSIGNMENTS / "autograder", scratch / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", str(autograder), "-c", str(autograder / "pytest.ini"), "-q",
           "--rootdir", str(autograder), f"--submission={folder}", f"--junitxml={xml}"]  # fmt: skip
    run_guarded(cmd, cwd=scratch, capture_output=True)
    return grade.parse_junit(xml)


@pytest.mark.parametrize("name", NAMES)
def test_autograder_catches_a_typical_mistake(mutants, name):
    tests = [t for t in mutants if t["module"].endswith(f"test_{name}")]
    passed = sum(t["outcome"] == "passed" for t in tests)
    assert 0 < passed < len(tests), (name, passed, len(tests))


def test_a_percent_format_script_is_a_submission_too(tmp_path):
    loader = load("autograder/submission")
    sub = loader.load_submission(ASSIGNMENTS / "source" / "a4_autonpo_trigger.py")
    assert sub.errors == [] and sub.slope([1.0, 2.0]) == 1.0 and sub.StagnationTrigger().window == 40
    assert not hasattr(sub.module, "fired_steps") and not hasattr(sub.module, "fig")  # self-check and demo skipped
    broken = tmp_path / "a1.py"
    broken.write_text("# %%\n%matplotlib inline\nx = 1\n# %%\nraise RuntimeError('oops')\n# %%\ny = x + 1\n")
    sub = loader.load_submission(broken)
    assert sub.y == 2 and len(sub.errors) == 1 and "RuntimeError: oops" in sub.errors[0]
    with pytest.raises(NameError, match="oops"):
        sub.group_stats  # noqa: B018


def test_a_submission_that_never_returns_is_stopped(tmp_path):
    nb = json.loads((ASSIGNMENTS / "student" / "a1_group_advantages.ipynb").read_text(encoding="utf-8"))
    stubborn = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    nb["cells"].append(
        {"cell_type": "code", "metadata": {}, "source": stubborn, "outputs": [], "execution_count": None}
    )
    path = tmp_path / "a1_group_advantages.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    r = grade.grade_one(path, "a1_group_advantages", timeout=5)  # the loop never ends, so any limit is reached
    assert r.status == "timeout" and r.score == 0.0 and r.passed == 0, (r.status, r.detail)
    # the mechanism, not the clock: the grading process was killed (nothing runs the submission any more) ...
    assert not _processes_mentioning(str(path)), "the stopped submission is still running"
    # ... and the next student is graded normally
    ok = grade.grade_one(ASSIGNMENTS / "instructor" / "a1_group_advantages.ipynb", "a1_group_advantages")
    assert ok.status == "passed" and ok.passed == ok.total > 0, (ok.status, ok.detail)


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (Linux /proc; zombies excluded)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def test_discover_finds_students_in_folders_and_in_lms_exports(tmp_path):
    a1 = (ASSIGNMENTS / "student" / "a1_group_advantages.ipynb").read_text(encoding="utf-8")
    for rel in ("class/alice/a1_group_advantages.ipynb", "class/bob/homework/whatever.ipynb", "lms/carol_a1.ipynb",
                "lms/dave_a2_clipped_loss.py", "lms/erin - a1_group_advantages.ipynb"):  # fmt: skip
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(a1 if p.suffix == ".ipynb" else "# %%\nx = 1\n", encoding="utf-8")
    found = grade.discover([tmp_path / "class", tmp_path / "lms"], NAMES)
    assert sorted(found) == ["alice", "bob", "carol", "dave", "erin"]
    assert found["bob"]["a1_group_advantages"].name == "whatever.ipynb"  # by the notebook's metadata
    assert found["dave"]["a2_clipped_loss"] is not None and found["dave"]["a1_group_advantages"] is None

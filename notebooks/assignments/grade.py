"""Grade collected submissions: every (student, assignment) in its own pytest subprocess, then one report.

    python notebooks/assignments/grade.py submissions/               # a folder with one folder per student
    python notebooks/assignments/grade.py alice/ bob/ --out grading  # students' folders named on the command line
    python notebooks/assignments/grade.py alice/a1.ipynb --assignments a1_group_advantages
    python notebooks/assignments/grade.py . --fail-under 100         # one student (e.g. in CI): exit 1 below 100%

What counts as a student: each folder given on the command line whose notebooks sit directly in it, and each
sub-folder of a folder given (a class); a notebook given by itself belongs to the folder it is in. In one folder,
files named like ``alice_a1_group_advantages.ipynb`` (an LMS export) are split by the name before the
assignment's. A notebook is matched to an assignment by the metadata make.py writes into it, else by its file
name (the assignment's full name, or its short id such as ``a1``).

Writes, under ``--out`` (default ``grading``): ``report.md`` (a table of scores, then every failed test with its
message), ``grades.csv`` (one row per student and assignment), ``results.json``, and ``logs/<student>/<assignment>
.log`` (pytest's output). A submission is the student's own code: each run is a separate process with a time
limit (``--timeout`` per assignment, ``--test-timeout`` per test), so an infinite loop or a crash costs only that
assignment. That limits accidents, not malice: grade untrusted submissions inside a container.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
AUTOGRADER = HERE / "autograder"
sys.path.insert(0, str(AUTOGRADER))
from submission import NOTEBOOK_SUFFIXES, find_notebook, matches  # noqa: E402


def assignments() -> list[str]:
    """Every assignment that has an autograder module (``autograder/test_<assignment>.py``), sorted."""
    return sorted(p.stem.removeprefix("test_") for p in AUTOGRADER.glob("test_a*.py"))


@dataclass
class Result:
    """The grade of one student on one assignment."""

    student: str
    assignment: str
    status: str
    """passed (every test), failed (some test), missing (no notebook), timeout, or error (pytest could not run)."""
    passed: int = 0
    total: int = 0
    notebook: str = ""
    tests: list[dict[str, str]] = field(default_factory=list)
    """One entry per test: module, name, outcome (passed, failed, error, skipped), message (for failures)."""
    detail: str = ""
    seconds: float = 0.0

    @property
    def score(self) -> float:
        """Fraction of tests passed (0 for a missing, timed-out or crashed assignment)."""
        return self.passed / self.total if self.total else 0.0


def _notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in NOTEBOOK_SUFFIXES)


def _split_by_student(folder: Path, names: list[str]) -> dict[str, dict[str, Path]]:
    """Notebooks directly in ``folder``: one student (the folder's name), or several named by file prefix."""
    out: dict[str, dict[str, Path]] = {}
    for p in _notebooks(folder):
        for a in names:
            if matches(p, a):
                short = a.split("_", 1)[0]
                stem = re.split(rf"(?i){re.escape(a)}|(?<![a-z0-9]){short}(?![a-z0-9])", p.stem, maxsplit=1)[0]
                student = stem.strip(" _-.") or folder.resolve().name
                out.setdefault(student, {}).setdefault(a, p)
                break
    return out


def discover(paths: list[Path], names: list[str]) -> dict[str, dict[str, Path | None]]:
    """{student: {assignment: notebook or None}} for the given files and folders."""
    found: dict[str, dict[str, Path]] = {}

    def add(student: str, nbs: dict[str, Path]) -> None:
        if student in found:
            raise SystemExit(f"grade.py: two submissions are both called {student!r}; rename one folder")
        found[student] = nbs

    for path in paths:
        if path.is_file():
            a = next((a for a in names if matches(path, a)), None)
            if a is None:
                raise SystemExit(f"grade.py: {path} matches none of the assignments {names}")
            found.setdefault(path.resolve().parent.name, {})[a] = path
        elif path.is_dir():
            subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
            direct = _split_by_student(path, names)
            if direct or not subdirs:
                for student, nbs in direct.items():
                    add(student, nbs)
            for d in subdirs if not direct else []:
                nbs = {a: nb for a in names if (nb := find_notebook(d, a)) is not None}
                add(d.name, nbs)
        else:
            raise SystemExit(f"grade.py: no such file or folder: {path}")
    return {s: {a: nbs.get(a) for a in names} for s, nbs in sorted(found.items())}


def parse_junit(xml_path: Path) -> list[dict[str, str]]:
    """The tests of a pytest ``--junitxml`` report."""
    tests = []
    for tc in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = child.get("message") or (child.text or "").strip()[-500:]
                break
            if child.tag == "skipped":
                outcome, message = "skipped", child.get("message", "")
        tests.append(
            {"module": tc.get("classname", ""), "name": tc.get("name", "?"), "outcome": outcome, "message": message}
        )
    return tests


def grade_one(
    notebook: Path, assignment: str, timeout: float = 300.0, test_timeout: float = 30.0, log: Path | None = None
) -> Result:
    """Run ``autograder/test_<assignment>.py`` on one notebook in a subprocess (``student`` left empty)."""
    res = Result("", assignment, "error", notebook=str(notebook))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="npo_grade_") as tmp:  # the student's code runs in a scratch folder
        xml = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable, "-m", "pytest", str(AUTOGRADER / f"test_{assignment}.py"),
            "-c", str(AUTOGRADER / "pytest.ini"), "--rootdir", str(AUTOGRADER), "-q", "-p", "no:cacheprovider",
            f"--submission={notebook.resolve()}", f"--test-timeout={test_timeout}", f"--junitxml={xml}",
        ]  # fmt: skip
        try:
            out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
            text, rc = out.stdout + out.stderr, out.returncode
        except subprocess.TimeoutExpired as e:  # the child is killed; keep what it printed
            partial = e.stdout or b""
            text, rc = partial.decode(errors="replace") if isinstance(partial, bytes) else partial, None
        res.seconds = time.perf_counter() - t0
        if rc is None:
            res.status, res.detail = "timeout", f"stopped after {timeout:g} s for the whole assignment (a loop?)"
        elif xml.exists() and rc in (0, 1):
            res.tests = parse_junit(xml)
            res.total = len(res.tests)
            res.passed = sum(t["outcome"] == "passed" for t in res.tests)
            res.status = "passed" if rc == 0 and res.total else "failed"
        else:
            res.detail = f"pytest exited with {rc}: " + "\n".join(text.strip().splitlines()[-15:])
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n\n{text}", encoding="utf-8")
    return res


def grade(
    paths: list[Path],
    names: list[str] | None = None,
    jobs: int = 0,
    timeout: float = 300.0,
    test_timeout: float = 30.0,
    logs: Path | None = None,
) -> list[Result]:
    """Grade every student found in ``paths`` on ``names`` (default: every assignment), ``jobs`` at a time."""
    names = names or assignments()
    unknown = sorted(set(names) - set(assignments()))
    if unknown:
        raise SystemExit(f"grade.py: unknown assignment(s) {unknown}; known: {assignments()}")
    plan = discover(paths, names)
    results: list[Result] = []
    todo = []
    for student, nbs in plan.items():
        for a, nb in nbs.items():
            if nb is None:
                results.append(Result(student, a, "missing", detail="no notebook found"))
            else:
                todo.append((student, a, nb))

    def run(item: tuple[str, str, Path]) -> Result:
        student, a, nb = item
        log = None if logs is None else logs / student / f"{a}.log"
        r = grade_one(nb, a, timeout, test_timeout, log)
        r.student = student
        return r

    with ThreadPoolExecutor(max_workers=jobs or min(4, os.cpu_count() or 1)) as pool:
        results.extend(pool.map(run, todo))
    return sorted(results, key=lambda r: (r.student, r.assignment))


def _cell(r: Result) -> str:
    return f"{r.passed}/{r.total}" if r.status in ("passed", "failed") else r.status


def write_report(results: list[Result], out: Path, command: str = "") -> str:
    """Write report.md, grades.csv and results.json under ``out``; return the report's text."""
    out.mkdir(parents=True, exist_ok=True)
    students = sorted({r.student for r in results})
    names = sorted({r.assignment for r in results})
    by = {(r.student, r.assignment): r for r in results}
    lines = ["# Autograder report", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [
        f"{len(students)} student(s), {len(names)} assignment(s). A cell is tests passed / tests run; the total",
        "is the mean over assignments of the fraction passed (missing, timeout and error count 0).",
        "",
        "| student | " + " | ".join(names) + " | total |",
        "|---" * (len(names) + 2) + "|",
    ]
    for s in students:
        mean = sum(by[s, a].score for a in names if (s, a) in by) / len(names)
        cells = [_cell(by[s, a]) if (s, a) in by else "" for a in names]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {100 * mean:.0f}% |")
    for s in students:
        lines += ["", f"## {s}"]
        for a in names:
            r = by.get((s, a))
            if r is None:
                continue
            head = f"- **{a}**: {_cell(r)}" + (f" ({Path(r.notebook).name})" if r.notebook else "")
            lines.append(head + (f": {r.detail.splitlines()[0]}" if r.detail else ""))
            for t in r.tests:
                if t["outcome"] in ("failed", "error"):
                    msg = " ".join(t["message"].split())[:300]
                    lines.append(f"  - `{t['name']}` {t['outcome']}: {msg}")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    with open(out / "grades.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", "status", "passed", "total", "score", "notebook"])
        for r in results:
            w.writerow([r.student, r.assignment, r.status, r.passed, r.total, f"{r.score:.4f}", r.notebook])
    payload = [asdict(r) | {"score": r.score} for r in results]
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="submission folders or notebooks")
    ap.add_argument("--assignments", default="", help="comma-separated names (default: all)")
    ap.add_argument("--out", type=Path, default=Path("grading"), help="report folder (default: grading)")
    ap.add_argument("--jobs", type=int, default=0, help="gradings in parallel (default: min(4, CPU count))")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per student and assignment (300)")
    ap.add_argument("--test-timeout", type=float, default=30.0, help="seconds per test (30; 0: none)")
    ap.add_argument("--fail-under", type=float, default=None, help="exit 1 if a student's total is below this %%")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.assignments.split(",") if n.strip()] or None
    results = grade(args.paths, names, args.jobs, args.timeout, args.test_timeout, logs=args.out / "logs")
    command = "python notebooks/assignments/grade.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = write_report(results, args.out, command)
    table_end = text.index("\n## ") if "\n## " in text else len(text)
    print(text[:table_end].rstrip())
    print(f"\nreport: {args.out / 'report.md'}; grades: {args.out / 'grades.csv'}")
    if args.fail_under is not None:
        names = sorted({r.assignment for r in results})
        for s in sorted({r.student for r in results}):
            total = 100 * sum(r.score for r in results if r.student == s) / max(len(names), 1)
            if total < args.fail_under:
                print(f"{s}: {total:.0f}% < --fail-under {args.fail_under:g}%")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per tutorial notebook, executed headless from a fresh kernel (the README's "runs in minutes on a
laptop" promise, measured here rather than asserted by a test).

Each notebook runs exactly as ``tests/test_notebooks.py`` runs it: a fresh ``python3`` kernel of this interpreter,
a temporary working directory, the Agg matplotlib backend and one thread per numeric library. The notebooks run one
after the other, so the table is a side-by-side measurement on one machine at one time; speeds of hosts differ
2.5-5x, so read the ratios between notebooks, and the total only for this machine.

Usage: python benchmarks/notebook_times.py [--out FILE.md] [NAME_SUBSTRING ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path) -> float:
    """Wall seconds to execute ``path`` from a fresh kernel (raises if a cell fails)."""
    with tempfile.TemporaryDirectory(prefix="npo_nb_") as tmp:
        env = {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        saved = {k: os.environ.get(k) for k in [*env, "TMPDIR"]}
        os.environ.update(env, TMPDIR=tmp)  # the kernel process inherits these
        try:
            nb = nbformat.read(path, as_version=4)
            client = nbclient.NotebookClient(
                nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": tmp}}
            )
            t0 = time.perf_counter()
            client.execute()
            return time.perf_counter() - t0
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="run only notebooks whose file name contains one of these")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args()
    paths = [p for p in TUTORIALS if not args.names or any(n in p.name for n in args.names)]
    rows = []
    for p in paths:
        s = execute(p)
        rows.append((p.stem, s))
        print(f"{p.stem}: {s:.1f} s", flush=True)
    total = sum(s for _, s in rows)
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"notebooks run one after the other.",
        "",
        "| notebook | seconds | share of total |",
        "|---|---|---|",
        *[f"| {name} | {s:.1f} | {s / total:.0%} |" for name, s in rows],
        f"| **all** | **{total:.1f}** | |",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Summarise the cells of several benefit-map folders together (the same grid run on other seeds, e.g. the default
grid on seeds 0-4 inside the full map and on seeds 5-9 on its own), for the methods they share.

    python benchmarks/benefit_map_merge.py runs/map_full runs/map_seeds5 --out runs/map_10seeds

Writes map.json, map.md, map.png and qvs_map.png of the merged cells into --out (docs/benefit_map.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from npo_lab.cli.benefit_map import BenefitMapCommand
from npo_lab.cli.config_file import from_dict
from npo_lab.experiments.benefit_map import load_cells, summarize_map, write_map_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="benefit-map output folders (each with config.json and cells/)")
    ap.add_argument("--out", required=True, help="folder for the merged map")
    args = ap.parse_args()
    cfgs = [from_dict(BenefitMapCommand, json.loads((Path(f) / "config.json").read_text())) for f in args.folders]
    grids = {(c.row_knob, c.row_values, c.col_knob, c.col_values) for c in cfgs}
    if len(grids) != 1:
        raise SystemExit(f"the folders hold different grids: {sorted(grids)}")
    methods = [m for m in cfgs[0].method_list if all(m in c.method_list for c in cfgs)]
    cells = [c for f in args.folders for c in load_cells(f) if c["method"] in methods]
    seeds = sorted({int(c["seed"]) for c in cells})
    cfg = cfgs[0]
    doc = summarize_map(
        cells, [r for r, _ in cfg.regimes()], methods, cfg.method_configs, control=cfg.control,
        target_fraction=cfg.target_fraction, n_boot=cfg.bootstrap,
    )  # fmt: skip
    command = "python benchmarks/benefit_map_merge.py " + " ".join(args.folders) + f" --out {args.out}"
    grid = cfg.grid(command)
    doc.update(command=command, seeds=seeds, grid=grid, folders=list(args.folders))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(write_map_report(doc, out, grid))


if __name__ == "__main__":
    main()

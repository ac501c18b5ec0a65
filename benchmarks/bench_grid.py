"""Wall time of a whole experiment grid (issue target: the WIKI grid in <= 30 min with --jobs 2).

Runs CONFIG into a fresh results folder with ``--jobs`` workers (optionally only some seeds),
prints per-method training/evaluation time and the runner's wall time, and writes
benchmarks/results/grid_<config>.json. Timings on a shared machine are noisy: the JSON records
the load average before and after.

    PYTHONPATH=src python benchmarks/bench_grid.py configs/wiki.toml --jobs 2
    PYTHONPATH=src python benchmarks/bench_grid.py configs/wiki.toml --jobs 2 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from collections import defaultdict
from pathlib import Path

from cmhash.experiments.config import load_config, parse_config
from cmhash.experiments.runner import run_grid
from cmhash.experiments.store import ResultsStore
from cmhash.io import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", type=str, default=None, help="comma-separated subset of the config's seeds")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.seeds:
        raw = dict(cfg.raw)
        raw["grid"] = {**raw.get("grid", {}), "seeds": [int(s) for s in args.seeds.split(",")]}
        cfg = parse_config(raw, source=args.config, path=Path(args.config))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_grid(cfg, Path(tmp) / "results", jobs=args.jobs)
        store = ResultsStore(Path(tmp) / "results")
        per_method: dict[str, dict[str, float]] = defaultdict(lambda: {"cells": 0, "train_s": 0.0, "eval_s": 0.0})
        for rec in store.records():
            m = per_method[rec["label"]]
            m["cells"] += 1
            m["train_s"] += rec["record"].get("wall_time_s") or 0.0
            m["eval_s"] += rec.get("eval_time_s") or 0.0
        failures = [f["error"] for f in store.failures()]
    load_after = os.getloadavg()
    print(f"{'method':<16}{'cells':>6}{'train s':>10}{'eval s':>9}")
    for label, m in per_method.items():
        print(f"{label:<16}{m['cells']:>6}{m['train_s']:>10.1f}{m['eval_s']:>9.1f}")
    print(f"grid: {summary.done} cells done, {len(summary.failed)} failed, wall {summary.wall_time_s:.1f} s "
          f"with --jobs {args.jobs} on {os.cpu_count()} CPUs (load {load_before[0]:.1f} -> {load_after[0]:.1f})")
    out = Path(__file__).resolve().parent / "results" / f"grid_{Path(args.config).stem}.json"
    write_json(out, {
        "config": args.config, "seeds": list(cfg.seeds), "jobs": args.jobs, "cells": summary.total,
        "done": summary.done, "failed": failures, "wall_time_s": summary.wall_time_s,
        "per_method": per_method, "cpus": os.cpu_count(), "platform": platform.platform(),
        "loadavg_before": load_before, "loadavg_after": load_after,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

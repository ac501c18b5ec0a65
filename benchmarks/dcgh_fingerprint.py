"""DCGH bit-for-bit fingerprint: a sha256 per fit over every model array, the objective history,
the model config and the codes of 50 queries; to show that a refactor changed no number.

Fits: WIKI at 8/16/32/64 bits, WIKI-RoPH at 16/64 (float32, the default), WIKI at 16 bits in
float64, and 9,000 synthetic pairs at 24 bits with the squared kernel (above the 8,192 items from
which the row passes and step pairs run in threads); seeds 0 and 1 each.

Run:  PYTHONPATH=src python benchmarks/dcgh_fingerprint.py                       (~1.5 min)
      PYTHONPATH=src python benchmarks/dcgh_fingerprint.py --compare benchmarks/results/dcgh_fingerprint.json
Writes benchmarks/results/dcgh_fingerprint.json (--out to change); --compare FILE prints which fits
differ from an earlier run's file and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import cmhash
from cmhash.data.synthetic import make_synthetic

RESULTS = Path(__file__).resolve().parent / "results"


def fingerprint(model, data) -> str:
    arrays, config = model.state()
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    h.update(json.dumps(model.record["objective_terms"]).encode())
    h.update(json.dumps(config, sort_keys=True).encode())
    h.update(model.encode("image", data.query.image[:50]).data.tobytes())
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "dcgh_fingerprint.json"))
    parser.add_argument("--compare", help="an earlier run's JSON: report the fits that differ")
    args = parser.parse_args()
    wiki, roph = cmhash.load_dataset("wiki"), cmhash.load_dataset("wiki-roph")
    synthetic = make_synthetic(9000, seed=3)
    runs = [("wiki", wiki, (8, 16, 32, 64), {}), ("wiki-roph", roph, (16, 64), {}),
            ("wiki-float64", wiki, (16,), {"dtype": "float64"}),
            ("synthetic-9000-squared", synthetic, (24,), {"kernel": "squared", "n_anchors": 300})]
    fits: dict[str, str] = {}
    for name, data, bit_lengths, hparams in runs:
        for bits in bit_lengths:
            for seed in (0, 1):
                model = cmhash.get_method("dcgh", preset="wiki", **hparams).fit(data.train, bits=bits, seed=seed)
                fits[f"{name}/{bits}/{seed}"] = fingerprint(model, data)
                print(f"{name:24s} {bits:3d} bits seed {seed}  {fits[f'{name}/{bits}/{seed}'][:16]}")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    Path(args.out).write_text(json.dumps({"commit": commit, "fits": fits}, indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differ = [k for k in fits if before["fits"].get(k) != fits[k]]
        print(f"against {args.compare} (commit {before.get('commit')}): "
              + ("identical, all {} fits".format(len(fits)) if not differ else f"DIFFERENT: {differ}"))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""IDGH training speed on WIKI (protocol dcgh, 64 bits, one torch thread) against its peer.

1. Per-epoch time: IDGH with synthesis from the first epoch (``start_fraction=0``, so every
   epoch pays for the 3 synthetic copies and the NDCG triplet losses on 4 x 128 items) and the
   plain deep baseline (same engine, triplet loss on 128 items), ``--epochs`` epochs each,
   ``patience=0``; seconds per epoch as recorded by the engine, and the ratio.
2. ``--full``: one IDGH cell with the defaults (as in configs/wiki.toml): epochs run, s/epoch,
   validation mAP and test mAP@all of both directions, so that two versions of the code can be
   compared on the same seed.

The machine is shared: wall times vary with the load (the load average is recorded).

Run:  PYTHONPATH=src python benchmarks/idgh_speed.py [--epochs 6] [--covariance full] [--full] [--tag NAME]
Writes benchmarks/results/idgh_speed[_TAG].json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--covariance", default="diag", choices=("diag", "full"), help="IDGH's covariance (per-epoch part)")
    ap.add_argument("--full", action="store_true", help="also train one default IDGH cell and score it")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from cmhash.data.protocols import load_dataset
    from cmhash.evaluation import evaluate
    from cmhash.io import write_json
    from cmhash.methods.registry import get_method

    data = load_dataset("wiki", protocol="dcgh", seed=0)
    rows = {}
    for name, hp in (("idgh", {"start_fraction": 0.0, "covariance": args.covariance}), ("deep-baseline", {})):
        model = get_method(name, epochs=args.epochs, patience=0, **hp).fit(data.train, args.bits, seed=args.seed)
        rows[name] = model.record["training"]["seconds_per_epoch"]
    ratio = rows["idgh"] / rows["deep-baseline"]
    print(f"{'method':<16}{'s/epoch':>10}")
    for name, s in rows.items():
        print(f"{name:<16}{s:>10.3f}")
    print(f"idgh / deep-baseline: {ratio:.2f}")
    out = {"epochs": args.epochs, "bits": args.bits, "idgh_covariance": args.covariance, "seed": args.seed, "torch_threads": 1,
           "seconds_per_epoch": rows, "ratio_idgh_to_baseline": ratio, "load_average": os.getloadavg(),
           "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    if args.full:
        model = get_method("idgh").fit(data.train, args.bits, seed=args.seed)
        tr = model.record["training"]
        maps = {d: r["map"] for d, r in evaluate(model, data).items()}
        out["full_cell"] = {"epochs_run": tr["epochs_run"], "seconds_per_epoch": tr["seconds_per_epoch"],
                            "selected_epoch": tr["selected_epoch"], "best_val_map": tr["best_val_map"],
                            "test_map": maps}
        print(f"default cell: {tr['epochs_run']} epochs, {tr['seconds_per_epoch']:.3f} s/epoch, "
              f"val mAP {tr['best_val_map']!r}, test mAP {maps!r}")
    path = RESULTS / f"idgh_speed{'_' + args.tag if args.tag else ''}.json"
    write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

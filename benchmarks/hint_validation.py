"""Choose HINT's open readings on a validation split of the TRAINING set (never the queries).

For each seed, the training set of the dataset is split with the engine's
:func:`cmhash.nn.engine.split_validation` (``--val-fraction``, default 0.2, seeded). HINT is fitted
on the rest (label-free: unsupervised methods get a copy without labels); the held-out items
then query the fitted items, I->T and T->I mAP@all, with the training labels used only here,
to score. The test queries are never loaded into any score.

    CMHASH_DATA=/path/to/data PYTHONPATH=src python benchmarks/hint_validation.py \\
        [--dataset wiki] [--bits 16] [--seeds 0] [--candidates NAME ...]

A candidate is ``label=key:value,key:value`` over HINT's defaults (values parsed as JSON), e.g.
``literal=target:"per_modality",pair_in_cross:false`` (``preset:"v1"`` picks a preset). Results are merged into
benchmarks/results/hint_validation.json, keyed by dataset / bits / seed / candidate; ``params``
are over the defaults of the code that ran (``hparams``: all of them, where recorded).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cmhash.codes import pack, sign
from cmhash.data.protocols import load_dataset
from cmhash.io import write_json
from cmhash.methods.registry import get_method
from cmhash.metrics.ranking import mean_average_precision
from cmhash.nn.engine import split_validation
from cmhash.record import versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hint_validation.json"
PROTOCOL = {"wiki": "dcgh"}


def parse_candidate(text: str) -> tuple[str, dict]:
    label, _, body = text.partition("=")
    params = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        params[key] = json.loads(value)
    return label, params


def validation_map(model, fit, val) -> dict[str, float]:
    def codes(part, m):
        return model.encode(m, part.features(m))
    out = {}
    for key, (q, d) in {"i2t": ("image", "text"), "t2i": ("text", "image")}.items():
        out[key] = mean_average_precision(codes(val, q), codes(fit, d), val.labels, fit.labels).map
    out["mean"] = (out["i2t"] + out["t2i"]) / 2
    return out


def code_spread(model, part) -> dict[str, dict[str, float]]:
    """Per modality: distinct codes among the items, and mean |bit mean| (1 = every bit constant)."""
    out = {}
    for m in ("image", "text"):
        bits = model.encode(m, part.features(m)).unpack().astype(np.float64)  # +-1
        out[m] = {"unique_codes": int(len(np.unique(bits, axis=0))),
                  "mean_abs_bit_mean": round(float(np.abs(bits.mean(axis=0)).mean()), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="wiki")
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--candidates", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, protocol=PROTOCOL.get(args.dataset))
    train = data.train
    for seed in args.seeds:
        fit_idx, val_idx = split_validation(len(train), args.val_fraction, seed)
        fit, val = train.subset(fit_idx), train.subset(val_idx)
        for text in args.candidates:
            label, params = parse_candidate(text)
            start = time.perf_counter()
            kwargs = dict(params)
            model = get_method("hint", preset=kwargs.pop("preset", None), **kwargs).fit(fit, args.bits, seed=seed)
            scores = validation_map(model, fit, val)
            rec = model.record["hint"]
            entry = {
                "dataset": args.dataset, "bits": args.bits, "seed": seed, "candidate": label,
                "params": params, "hparams": model.hparams, "val_fraction": args.val_fraction,
                "fit_size": len(fit_idx), "val_size": len(val_idx),
                "val_map": scores, "fit_codes": code_spread(model, fit), "seconds": round(time.perf_counter() - start, 1),
                "pairs_in_one_community": rec.get("pairs_in_one_community"),
                "pair_in_cross": rec.get("pair_in_cross"),
                "pair_bit_agreement": rec.get("pair_bit_agreement"),
                "lambda_first_last": [rec["lambda_per_epoch"][i] for i in (0, -1)] if rec["lambda_per_epoch"] else None,
                "versions": versions(),
            }
            # re-read before merging: several runs of this script may share the file
            results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": {}}
            results["runs"][f"{args.dataset}/{args.bits}/{seed}/{label}"] = entry
            write_json(RESULTS, results)
            print(f"{args.dataset} {args.bits} bits seed {seed} {label:>28}: val I->T {scores['i2t']:.4f} "
                  f"T->I {scores['t2i']:.4f} mean {scores['mean']:.4f}  agree {entry['pair_bit_agreement']:.3f} "
                  f"unique {entry['fit_codes']['image']['unique_codes']}/{entry['fit_codes']['text']['unique_codes']} "
                  f"({entry['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()

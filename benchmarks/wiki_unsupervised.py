"""DEMO, HINT, their ablations and CCA-ITQ on WIKI (protocol dcgh): mAP@all, time, HINT's lambda.

Protocol ``dcgh``: query = the 693 shipped test items, database = train = the 2,173 others.
Labels are used only to score. Every run records its hyper-parameters, seed and timings.

    CMHASH_DATA=/path/to/data PYTHONPATH=src python benchmarks/wiki_unsupervised.py \\
        [--bits 16 32 64 128] [--seeds 0] [--epochs 30] [--configs hint demo cca-itq ...] \\
        [--corrupt 0.1] [--threads 1]

A config is a method name, optionally with a preset after a colon and hyper-parameters after
an at sign (``hint:v3``, ``demo:wo_d``, ``hint@pair_weight=2``).
Results: benchmarks/results/wiki_unsupervised.json (one entry per run, merged with what the
file already holds, keyed by config / bits / seed / scenario); the figure of HINT's lambda over
training: docs/hint_lambda.png (``--figure-only`` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cmhash.data.protocols import load_dataset
from cmhash.data.scenarios import corrupted_pairs
from cmhash.evaluation import evaluate
from cmhash.io import write_json
from cmhash.methods.registry import get_method
from cmhash.record import versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "wiki_unsupervised.json"
FIGURE = ROOT / "docs" / "hint_lambda.png"
DEFAULT_CONFIGS = ["cca-itq", "hint", "demo"]
DEEP = {"hint", "demo"}


def parse_config(config: str) -> tuple[str, str | None, dict]:
    """'hint:v3@pair_weight=2,knn=5' -> ('hint', 'v3', {'pair_weight': 2, 'knn': 5})."""
    head, _, overrides = config.partition("@")
    name, _, preset = head.partition(":")
    params = {}
    for item in filter(None, overrides.split(",")):
        k, _, v = item.partition("=")
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    return name, preset or None, params


def run_one(config: str, data, bits: int, seed: int, epochs: int, scenario: str) -> dict:
    name, preset, params = parse_config(config)
    kwargs = {"epochs": epochs, **params} if name in DEEP else params
    method = get_method(name, preset=preset, **kwargs)
    start = time.perf_counter()
    model = method.fit(data.train, bits, seed=seed)
    seconds = time.perf_counter() - start
    scores = evaluate(model, data)
    out = {
        "config": config, "method": name, "preset": preset, "bits": bits, "seed": seed,
        "scenario": scenario, "map_i2t": scores["i2t"]["map"], "map_t2i": scores["t2i"]["map"],
        "fit_seconds": round(seconds, 3), "hparams": method.hparams,
        "dataset_checksum": model.record["dataset"]["checksum"],
    }
    training = model.record.get("training")
    if training:
        out["seconds_per_epoch"] = round(training["seconds_per_epoch"], 4)
        out["epochs_run"] = training["epochs_run"]
    if "hint" in model.record:
        rec = model.record["hint"]
        out["lambda_per_epoch"] = rec["lambda_per_epoch"]
        if "tree" in rec:
            out["tree"] = rec["tree"]
    if "demo" in model.record:
        out["demo"] = model.record["demo"]
    return out


def key(r: dict) -> tuple:
    return (r["config"], r["bits"], r["seed"], r["scenario"])


def draw_lambda(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hint = [r for r in runs if r["config"] == "hint" and r["scenario"] == "clean" and r.get("lambda_per_epoch")]
    if not hint:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, modality in zip(axes, ("image", "text")):
        for r in sorted(hint, key=lambda r: (r["bits"], r["seed"])):
            lam = r["lambda_per_epoch"]
            ax.plot([e["epoch"] + 1 for e in lam], [e[modality] for e in lam],
                    label=f"{r['bits']} bits, seed {r['seed']}")
        ax.set_title(f"HINT on WIKI: lambda ({modality} items)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("epoch mean of lambda (Eq. 6)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--corrupt", type=float, default=0.0,
                        help="also train on WIKI with this share of corrupted pairs (HINT Table 6)")
    parser.add_argument("--corrupt-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared machine: 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--figure-only", action="store_true")
    args = parser.parse_args()

    old = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    runs = {key(r): r for r in old["runs"]}
    if not args.figure_only:
        import torch

        torch.set_num_threads(args.threads)
        clean = load_dataset("wiki", protocol="dcgh")
        datasets = [] if args.corrupt_only else [("clean", clean)]
        if args.corrupt > 0:
            datasets.append((f"corrupted_pairs_{args.corrupt:g}", corrupted_pairs(clean, seed=0, rate=args.corrupt)))
        print(f"{'scenario':<22} {'config':<10} {'bits':>4} {'seed':>4} {'I->T':>7} {'T->I':>7} "
              f"{'fit s':>7} {'s/epoch':>8}")
        for scenario, data in datasets:
            for config in args.configs:
                for bits in args.bits:
                    for seed in args.seeds:
                        r = run_one(config, data, bits, seed, args.epochs, scenario)
                        runs[key(r)] = r
                        print(f"{scenario:<22} {config:<10} {bits:>4} {seed:>4} {r['map_i2t']:>7.4f} "
                              f"{r['map_t2i']:>7.4f} {r['fit_seconds']:>7.1f} "
                              f"{r.get('seconds_per_epoch', float('nan')):>8.3f}", flush=True)
                        write_json(args.out, {
                            "benchmark": "wiki_unsupervised", "protocol": "dcgh",
                            "dataset_info": {k: v for k, v in clean.info.items()
                                             if k in ("benchmark", "protocol", "split", "source_sha256")},
                            "note": "2 shared CPU cores, torch threads = --threads; timings are noisy",
                            "versions": versions(), "runs": sorted(runs.values(), key=key),
                        })
    draw_lambda(list(runs.values()), args.figure)
    summary(list(runs.values()))


def summary(runs: list[dict]) -> None:
    """mean +- std over seeds, per scenario / config / bits."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["config"], r["bits"]), []).append(r)
    print("\nmean over seeds (std where > 1 seed)")
    for (scenario, config, bits), rs in sorted(groups.items()):
        i2t = np.array([r["map_i2t"] for r in rs])
        t2i = np.array([r["map_t2i"] for r in rs])
        sd = lambda a: f" +- {a.std(ddof=1):.4f}" if len(a) > 1 else ""  # noqa: E731
        print(f"{scenario:<22} {config:<10} {bits:>4}  I->T {i2t.mean():.4f}{sd(i2t)}  "
              f"T->I {t2i.mean():.4f}{sd(t2i)}  (n={len(rs)})")


if __name__ == "__main__":
    main()

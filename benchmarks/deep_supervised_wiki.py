"""Deep supervised methods on WIKI (protocol ``dcgh``): the plain baseline, IDGH, DGHDGH and ablations.

Query = the 693 shipped test pairs, database = train = the 2,173 training pairs; model selection
and early stopping on a seeded validation split of the training pairs (never the queries).
Prints mAP@all (I->T, T->I) as mean +- std over seeds and writes every run to a JSON file
(rewritten after each run, so an interrupted sweep keeps what it finished; finished runs are
skipped when the same file is given again).

    PYTHONPATH=src python benchmarks/deep_supervised_wiki.py --variants deep-baseline,idgh \\
        --bits 16,32,64,128 --seeds 0,1,2 --epochs 40 --out benchmarks/results/deep_supervised_wiki.json
    # scenarios of the data branch: --scenario label_noise:rate=0.5  /  long_tail:head_size=200,imbalance_factor=10

Timings are per training epoch (without validation) on this machine, torch single-threaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cmhash.data.protocols import load_dataset
from cmhash.evaluation import evaluate
from cmhash.io import write_json
from cmhash.methods.registry import get_method
from cmhash.progress import Progress


class PrintProgress(Progress):
    """One short line per epoch (for long runs in a log file)."""

    def log(self, message: str = "", **metrics) -> None:
        keys = ("loss", "val_map", "gamma_syn", "tau", "synthetic")
        print(message, " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics), flush=True)

# name -> (method, hyper-parameters over the method's defaults, plug-in)
VARIANTS = {
    "deep-baseline": ("deep-baseline", {}, False),
    "idgh": ("idgh", {}, False),
    "idgh/no-synthesis": ("idgh", {"aug_num": 0}, False),
    "idgh/margin-0.25": ("idgh", {"margin": 0.25}, False),              # the baseline's margin
    "idgh/no-synthesis/margin-0.25": ("idgh", {"aug_num": 0, "margin": 0.25}, False),
    "idgh/wo-class-cov": ("idgh", {"class_cov": False}, False),
    "idgh/wo-global-cov": ("idgh", {"global_cov": False}, False),
    "idgh/full-cov": ("idgh", {"covariance": "full"}, False),
    "idgh/w-fix": ("idgh", {"sampling": "class-mean"}, False),
    "dghdgh": ("dghdgh", {}, False),
    "dghdgh/wo-rgp": ("dghdgh", {"gt_blocks": 0}, False),
    "dghdgh/wo-hap": ("dghdgh", {"hardness": False}, False),
    "dghdgh/wo-emf": ("dghdgh", {"edge_to_node": False}, False),
    "idgh+dgs": ("idgh", {}, True),
}


def parse_scenario(text: str | None) -> tuple[str, dict]:
    if not text:
        return "", {}
    name, _, rest = text.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        params[key] = float(value) if "." in value else int(value)
    return name, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="deep-baseline,idgh", help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--bits", default="16,32,64,128")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--scenario", default="", help="name:key=value,... applied to the training split")
    ap.add_argument("--extra", default="{}", help="JSON hyper-parameters applied to every variant")
    ap.add_argument("--out", default="benchmarks/results/deep_supervised_wiki.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="print one line per epoch")
    ap.add_argument("--table-only", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args()
    if args.table_only:
        print_table(json.loads(Path(args.out).read_text())["runs"])
        return
    torch.set_num_threads(args.threads)

    data = load_dataset("wiki", protocol="dcgh")
    scenario, params = parse_scenario(args.scenario)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    done = {(r["variant"], r["bits"], r["seed"], r.get("scenario", "")) for r in results["runs"]}
    extra = json.loads(args.extra)
    for variant in args.variants.split(","):
        method_name, hp, plug = VARIANTS[variant]
        for bits in map(int, args.bits.split(",")):
            for seed in map(int, args.seeds.split(",")):
                if (variant, bits, seed, args.scenario) in done:
                    continue
                train_data = data
                if scenario:
                    from cmhash.data.scenarios import apply_scenario
                    train_data = apply_scenario(data, scenario, seed=seed, **params)
                method = get_method(method_name, epochs=args.epochs, **{**hp, **extra})
                if plug:
                    from cmhash.methods.dghdgh import GlobalSenseSynthesis
                    method.add_plugin(GlobalSenseSynthesis())
                start = time.perf_counter()
                model = method.fit(train_data.train, bits, seed=seed,
                                   progress=PrintProgress() if args.verbose else None)
                wall = time.perf_counter() - start
                res = evaluate(model, data)  # queries/database are never changed by scenarios
                tr = model.record["training"]
                run = {
                    "variant": variant, "method": method_name, "bits": bits, "seed": seed,
                    "scenario": args.scenario, "i2t": res["i2t"]["map"], "t2i": res["t2i"]["map"],
                    "selected_epoch": tr["selected_epoch"], "epochs_run": tr["epochs_run"],
                    "best_val_map": tr["best_val_map"], "seconds_per_epoch": tr["seconds_per_epoch"],
                    "wall_s": wall, "hparams": model.record["hparams"],
                    "dataset_checksum": model.record["dataset"]["checksum"],
                    "versions": model.record["versions"],
                }
                results = append_run(out, run)
                print(f"{variant:28s} {bits:4d} bits seed {seed}: I->T {run['i2t']:.4f} T->I {run['t2i']:.4f} "
                      f"epoch {run['selected_epoch']}/{run['epochs_run']} {run['seconds_per_epoch']:.2f} s/epoch",
                      flush=True)
    print_table(results["runs"])


def append_run(out: Path, run: dict) -> dict:
    """Add ``run`` to the JSON file under an exclusive lock (several sweeps may share a file)."""
    import fcntl
    import hashlib
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"cmhash-bench-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(out.read_text()) if out.is_file() else {"runs": []}
        results["runs"].append(run)
        write_json(out, results)
    return results


def print_table(runs: list[dict]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r.get("scenario", ""), r["variant"], r["bits"]), []).append(r)
    print(f"\n{'scenario':28s} {'variant':28s} {'bits':>4s} {'I->T':>15s} {'T->I':>15s} {'s/epoch':>8s} "
          f"{'best ep':>7s} {'wall s':>7s} seeds")
    for (scen, variant, bits), rs in sorted(groups.items()):
        cell = lambda k: (f"{100 * statistics.mean(r[k] for r in rs):6.2f} +- "  # noqa: E731
                          f"{100 * (statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0):4.2f}")
        spe = statistics.mean(r["seconds_per_epoch"] for r in rs)
        best = statistics.mean(r["selected_epoch"] + 1 for r in rs)
        wall = statistics.mean(r["wall_s"] for r in rs)
        print(f"{scen or '-':28s} {variant:28s} {bits:4d} {cell('i2t'):>15s} {cell('t2i'):>15s} {spe:8.2f} "
              f"{best:7.1f} {wall:7.0f} {len(rs)}")


if __name__ == "__main__":
    main()

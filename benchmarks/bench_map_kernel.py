"""A numba metrics kernel against its version at another git revision, in the same process.

On a shared, noisy machine absolute times drift by 2x within minutes; a ratio measured by
alternating the two kernels on the same data, single-threaded, best of several repeats, does not.
The other version's ``src/cmhash/metrics/_numba.py`` is read with ``git show REV:...`` and loaded
as a separate module; both run ``rank_kernel`` for mAP@all (``--kernel rank``, their APs must be
identical) or ``histogram_kernel`` for the per-distance histograms (``--kernel histogram``, the
counts must be identical) on bench_map.py's synthetic problem.

Run:  PYTHONPATH=src python benchmarks/bench_map_kernel.py --against main [--kernel histogram]
Writes benchmarks/results/bench_map_kernel.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_map import loadavg, machine, make_problem  # noqa: E402

from cmhash.codes import _words, pack  # noqa: E402
from cmhash.io import write_json  # noqa: E402
from cmhash.metrics.kernels import ap_scale, numba_word_layout  # noqa: E402
from cmhash.metrics.relevance import label_masks  # noqa: E402
from cmhash.record import versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_map_kernel.json"  # --kernel histogram: ..._histogram.json
KERNEL = "src/cmhash/metrics/_numba.py"


def load_kernel_at(rev: str, folder: Path):
    """The metrics kernel module as it is at git revision ``rev`` (own module, own JIT cache)."""
    text = subprocess.run(["git", "show", f"{rev}:{KERNEL}"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    path = folder / "numba_kernel_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("numba_kernel_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_map_at_all(module, qw, dw, qm, dm, nbits):
    """APs of every query (mAP@all) with ``module.rank_kernel``, whichever signature it has."""
    nq, n = qw.shape[0], dw.shape[0]
    layout = ()
    if "dist_bits" in inspect.signature(module.rank_kernel.py_func).parameters:
        layout = numba_word_layout(nbits, n)
    out_ap = np.zeros(nq)
    module.rank_kernel(qw, dw, qm, dm, nbits, *layout, n, ap_scale(n), np.zeros(0, np.int64),
                       np.zeros(0), np.empty(nq, np.int64), np.empty(nq, np.int64), out_ap,
                       np.empty((nq, 0), np.int64), np.empty((nq, 0)))
    return out_ap


def run_histograms(module, qw, dw, qm, dm, nbits):
    """(all, relevant) counts at each distance with ``module.histogram_kernel`` (either signature)."""
    out = np.zeros((2, qw.shape[0], nbits + 1), np.int64)
    packed = (True,) if "packed" in inspect.signature(module.histogram_kernel.py_func).parameters else ()
    module.histogram_kernel(qw, dw, qm, dm, *packed, out[0], out[1])
    return out


KERNELS = {"rank": run_map_at_all, "histogram": run_histograms}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", default="main", help="git revision of the other kernel")
    ap.add_argument("--kernel", choices=sorted(KERNELS), default="rank",
                    help="rank: mAP@all (rank_kernel); histogram: distance histograms")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--database", type=int, default=190_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--repeat", type=int, default=5, help="alternating timed runs (min kept)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = RESULTS if args.kernel == "rank" else RESULTS.with_name("bench_map_kernel_histogram.json")

    import numba

    from cmhash.metrics import _numba as current

    load_start = loadavg()
    q, db, ql, dl = make_problem(args.queries, args.database, args.bits, args.classes, args.seed)
    qw = np.ascontiguousarray(_words(pack(q)))
    dw = np.ascontiguousarray(_words(pack(db)))
    qm, dm = label_masks(ql.astype(bool)), label_masks(dl.astype(bool))
    pairs = args.queries * args.database
    numba.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        kernels = {f"at {args.against}": load_kernel_at(args.against, Path(tmp)),
                   "working tree": current}
        run = KERNELS[args.kernel]
        aps = {name: run(m, qw[:2], dw, qm[:2], dm, args.bits)  # compile / warm up
               for name, m in kernels.items()}
        times = {name: [] for name in kernels}
        for _ in range(args.repeat):
            for name, m in kernels.items():
                t = time.perf_counter()
                aps[name] = run(m, qw, dw, qm, dm, args.bits)
                times[name].append(time.perf_counter() - t)
    base, new = (aps[name] for name in kernels)
    if not np.array_equal(base, new):
        raise RuntimeError(f"results differ: max |diff| {np.abs(base - new).max():.3e}")
    best = {name: min(t) for name, t in times.items()}
    ref = best[f"at {args.against}"]
    load_end = loadavg()
    what = "mAP@all kernel" if args.kernel == "rank" else "distance-histogram kernel"
    print(f"{what}, {args.queries} queries x {args.database} x {args.bits} bits, "
          f"{args.classes} classes, {args.threads} thread(s), best of {args.repeat} alternating")
    print(f"{'kernel':20s} {'seconds':>8s} {'ns/pair':>8s} {'vs ' + args.against:>10s}")
    rows = []
    for name, t in best.items():
        rows.append({"kernel": name, "seconds": t, "ns_per_pair": t / pairs * 1e9,
                     "ratio": t / ref, "runs": times[name]})
        print(f"{name:20s} {t:8.3f} {t / pairs * 1e9:8.3f} {t / ref:10.3f}")
    same = f"APs identical; mAP@all {new.mean():.4f}" if args.kernel == "rank" else "counts identical"
    print(f"{same}; load average {load_start} -> {load_end}")
    report = {"benchmark": "bench_map_kernel",
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "params": vars(args) | {"out": str(args.out)}, "machine": machine(),
              "cpu_count": os.cpu_count(), "versions": versions(),
              "load_average": {"start": load_start, "end": load_end}, "results": rows,
              "results_identical": True}
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()

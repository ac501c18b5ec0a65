"""Exact mAP@all: cmhash's counting kernels against the field's per-query loop, in the same run.

Problem (issue 2, item 9): 5,000 queries x 190,000 database items x 64 bits, 21-class multi-hot
labels. Codes and labels are synthetic but structured (each item's code is the sign of the mean
of its classes' random prototypes plus noise), so APs are far from trivial.

Methods:
* field loop — per query: label products, distances from +-1 codes, ``np.argsort`` (numpy's
  default, unstable), cumulative relevant counts: the DCMH-style ``calc_map`` the field copies.
* stable brute force — the same loop with ``argsort(kind="stable")``: the reference APs.
* cmhash numpy / numba — ``cmhash.metrics.mean_average_precision`` with each backend.

Lower bounds, timed beside them (numba, each thread setting), to show what a target asks of a
kernel: *distance histograms* (``cmhash.metrics.kernels.distance_histograms``: per query, the
number of items and of relevant items at each distance; one bucket update per pair and no ranks,
the cheapest pass an exact counting kernel makes) and the *scan floor* (per pair a popcount and
a label AND, summed: no histogram, no ranking; not a metric).

The two loops take ~10 ms a query, so by default they run on the first ``--field-queries``
queries and their time is extrapolated linearly to all queries (marked in the table). Every
method's APs are compared with the stable brute force on the queries both computed.

Run:  PYTHONPATH=src python benchmarks/bench_map.py          (or: make bench)
      ... --field-queries 5000 --numpy-queries 5000          (no extrapolation; minutes)
Writes benchmarks/results/bench_map.json.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cmhash.codes import _words, pack, sign
from cmhash.io import write_json
from cmhash.metrics import mean_average_precision
from cmhash.metrics.kernels import distance_histograms, numba_available
from cmhash.metrics.relevance import prepare
from cmhash.record import versions

RESULTS = Path(__file__).resolve().parent / "results" / "bench_map.json"


def make_problem(n_query: int, n_db: int, bits: int, classes: int, seed: int):
    """Structured synthetic codes (+-1, int8) and multi-hot labels (1..3 classes, skewed)."""
    rng = np.random.default_rng(seed)
    n = n_query + n_db
    freq = rng.dirichlet(np.full(classes, 1.0))
    labels = np.zeros((n, classes), dtype=np.uint8)
    n_labels = rng.integers(1, 4, n)
    for j in range(3):
        pick = rng.choice(classes, size=n, p=freq)
        rows = np.flatnonzero(n_labels > j)
        labels[rows, pick[rows]] = 1
    prototypes = rng.standard_normal((classes, bits))
    latent = (labels @ prototypes) / labels.sum(axis=1, keepdims=True)
    codes = sign(latent + 1.0 * rng.standard_normal((n, bits)))
    return codes[:n_query], codes[n_query:], labels[:n_query], labels[n_query:]


def field_loop(q_codes, db_codes, q_labels, db_labels, kind=None):
    """The field's calc_map, per query (DCMH style); ``kind="stable"`` makes it the reference."""
    q_b, r_b = q_codes.astype(np.float32), db_codes.astype(np.float32)
    q_l, r_l = q_labels.astype(np.float32), db_labels.astype(np.float32)
    bits = q_b.shape[1]
    ap = np.zeros(len(q_b))
    for i in range(len(q_b)):
        gnd = (q_l[i] @ r_l.T > 0).astype(np.float32)
        tsum = int(gnd.sum())
        if tsum == 0:
            continue
        hamm = 0.5 * (bits - q_b[i] @ r_b.T)
        ind = np.argsort(hamm) if kind is None else np.argsort(hamm, kind=kind)
        gnd = gnd[ind]
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(gnd == 1)) + 1.0
        ap[i] = np.mean(count / tindex)
    return ap


@functools.cache
def _scan_floor_kernel():
    from numba import njit, prange

    from cmhash._popcount import popcount

    @njit(parallel=True, nogil=True)
    def kernel(qw, dw, qm, dm):
        total = 0
        for qi in prange(qw.shape[0]):
            x, m, s = qw[qi], qm[qi], 0
            for i in range(dw.shape[0]):
                s += popcount(x ^ dw[i]) + ((m & dm[i]) != 0)
            total += s
        return total

    return kernel


def scan_floor(pq, pdb, q_labels, db_labels) -> int:
    """Sum over all pairs of popcount(q ^ x) + [labels share a class]: the work of reading every
    pair, without the histogram and ranking a metric needs (<= 64-bit codes, <= 64 classes).
    Inputs are prepared as ``mean_average_precision`` prepares them, inside the timing."""
    ret = prepare(pq, pdb, q_labels, db_labels)
    if ret.nbits > 64 or ret.query_masks.shape[1] != 1:
        raise ValueError("scan_floor: codes of <= 64 bits and <= 64 classes only")
    return int(_scan_floor_kernel()(_words(ret.query)[:, 0].copy(), _words(ret.database)[:, 0].copy(),
                                    ret.query_masks[:, 0].copy(), ret.db_masks[:, 0].copy()))


def histograms_only(pq, pdb, q_labels, db_labels):
    """``distance_histograms`` (numba) from the raw inputs, prepared inside the timing as above."""
    return distance_histograms(prepare(pq, pdb, q_labels, db_labels), backend="numba")


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def machine() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu_count": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "python": sys.version.split()[0]}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    return info


def loadavg():
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--database", type=int, default=190_000)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--field-queries", type=int, default=500,
                    help="queries the two loops run on (time extrapolated to --queries)")
    ap.add_argument("--numpy-queries", type=int, default=500,
                    help="queries the numpy backend runs on (time extrapolated to --queries)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each numba setting (min kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    nq = args.queries
    nf = min(args.field_queries, nq)
    nn = min(args.numpy_queries, nq)

    load_start = loadavg()
    q, db, ql, dl = make_problem(nq, args.database, args.bits, args.classes, args.seed)
    pq, pdb = pack(q), pack(db)
    print(f"problem: {nq} queries x {args.database} database x {args.bits} bits, "
          f"{args.classes} classes (seed {args.seed}); load average {load_start}")

    rows = []

    def add(name, n_timed, wall, cpu, ap_vals, note=""):
        scale = nq / n_timed
        ref_n = min(nf, len(ap_vals))
        rows.append({
            "method": name, "queries_timed": n_timed, "extrapolated": n_timed < nq,
            "seconds": wall * scale, "cpu_seconds": cpu * scale, "note": note,
            "max_abs_ap_diff_vs_stable": float(np.abs(ap_vals[:ref_n] - ref_ap[:ref_n]).max()),
        })

    field_ap, fw, fc = timed(field_loop, q[:nf], db, ql[:nf], dl)
    ref_ap, sw, sc = timed(field_loop, q[:nf], db, ql[:nf], dl, kind="stable")
    add("field loop (np.argsort default)", nf, fw, fc, field_ap)
    add("stable brute force (argsort kind=stable)", nf, sw, sc, ref_ap)

    res_np, nw_, nc_ = timed(mean_average_precision, pq[:nn], pdb, ql[:nn], dl, backend="numpy")
    add("cmhash numpy backend", nn, nw_, nc_, res_np.ap)

    result = {"map_reference_subset": float(ref_ap.mean()), "numba": None}
    bounds = []  # lower bounds (not metrics), see the module docstring
    if numba_available():
        import numba

        _, compile_s, _ = timed(mean_average_precision, pq[:2], pdb, ql[:2], dl, backend="numba")
        result["numba_first_call_seconds"] = compile_s  # JIT compile or cache load
        threads_default = numba.get_num_threads()
        for threads in sorted({threads_default, 1}, reverse=True):
            numba.set_num_threads(threads)
            runs = [timed(mean_average_precision, pq, pdb, ql, dl, backend="numba")
                    for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r[1])
            res_nb = best[0]
            add(f"cmhash numba, {threads} thread{'s' if threads > 1 else ''}", nq, best[1], best[2],
                res_nb.ap, note=f"min of {args.repeat}: " + ", ".join(f"{r[1]:.2f}" for r in runs))
            if not np.array_equal(res_nb.ap[:nn], res_np.ap):
                raise RuntimeError("numba and numpy backends gave different APs")
            for label, fn in (("bound: distance histograms only", histograms_only),
                              ("bound: scan floor (popcount + AND)", scan_floor)):
                fn(pq[:2], pdb, ql[:2], dl)  # compile / cache load
                runs = [timed(fn, pq, pdb, ql, dl) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r[1])
                bounds.append({"method": f"{label}, {threads} thread{'s' if threads > 1 else ''}",
                               "seconds": best[1], "cpu_seconds": best[2],
                               "note": f"min of {args.repeat}"})
        numba.set_num_threads(threads_default)
        result["numba"] = numba.__version__
        result["map"] = res_nb.map
        result["queries_without_relevant"] = res_nb.queries_without_relevant
        result["numba_equals_numpy_exactly"] = True

    field_s = rows[0]["seconds"]
    for row in rows + bounds:
        row["ratio_vs_field_loop"] = field_s / row["seconds"]
    load_end = loadavg()

    head = f"{'method':44s} {'seconds':>9s} {'cpu s':>8s} {'vs field':>9s} {'max|AP diff|':>13s}"
    print(head)
    print("-" * len(head))
    for row in rows:
        star = "*" if row["extrapolated"] else " "
        print(f"{row['method']:44s} {row['seconds']:8.2f}{star} {row['cpu_seconds']:8.2f} "
              f"{row['ratio_vs_field_loop']:8.1f}x {row['max_abs_ap_diff_vs_stable']:13.2e}")
    if bounds:
        print("lower bounds (not metrics: no ranks):")
        for row in bounds:
            print(f"{row['method']:44s} {row['seconds']:8.2f}  {row['cpu_seconds']:8.2f} "
                  f"{row['ratio_vs_field_loop']:8.1f}x")
        result["seconds_for_50x_field_loop"] = field_s / 50
        print(f"50x the field loop means <= {field_s / 50:.3f} s for all {nq} queries")
    print(f"* timed on the first {nf} (loops) / {nn} (numpy) queries and scaled to {nq}. "
          f"max|AP diff| vs the stable brute force on the first {nf} queries.")
    if "map" in result:
        print(f"mAP@all = {result['map']:.4f} ({result['queries_without_relevant']} queries without "
              f"relevant items); numba first call (compile/cache load) {result['numba_first_call_seconds']:.2f} s")
    print(f"load average: start {load_start}, end {load_end}; machine: {machine()}")

    report = {
        "benchmark": "bench_map", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "params": vars(args) | {"out": str(args.out)}, "machine": machine(),
        "versions": versions(), "load_average": {"start": load_start, "end": load_end},
        "results": rows, "lower_bounds": bounds, **result,
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()

"""Index backends in one run: HammingIndex (in memory) vs MilvusIndex (Milvus Lite, BIN_FLAT).

    PYTHONPATH=src python benchmarks/bench_backends.py                     # 1e5 and 1e6 x 64 bits
    PYTHONPATH=src python benchmarks/bench_backends.py --sizes 100000 --single 20

For each database size (uniform random codes, ids = positions): build time (HammingIndex:
``from_codes``; Milvus: create the collection, batched inserts, flush), then top-k queries per
second at batch 1 (``--single`` queries one at a time, stopped early after ``--max-seconds``) and
at batch ``--batch`` (one call), for k in ``--ks``. Paths:
- ``hamming-numpy``: HammingIndex, numpy kernel, one thread (the per-core scan rate),
- ``hamming-numba``: HammingIndex, numba kernel, queries over all cores (when numba is installed),
- ``milvus-lite``: MilvusIndex on a temporary Milvus Lite file (its own server process and threads).
Recall of each path against the exact HammingIndex answer: ``recall`` counts a returned item as
right when its true distance is at most the exact k-th distance (ties at the k-th distance are
interchangeable; 1.0 for any exact search); ``id_recall`` is the plain |ids ∩ exact ids| / k.
Prints a table and writes benchmarks/results/bench_backends.json. The Milvus Lite file and its
server are removed and stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_index import cpu_model
from cmhash.codes import PackedCodes
from cmhash.index import HammingIndex, kernels
from cmhash.io import write_json
from cmhash.record import versions

RESULTS = Path(__file__).resolve().parent / "results" / "bench_backends.json"


def true_distances(query: np.ndarray, db: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Hamming distances of each query to the items it got back (ids = positions)."""
    return np.bitwise_count(query[:, None, :] ^ db[ids]).sum(axis=2)


def recalls(query: np.ndarray, db: np.ndarray, ids: np.ndarray, exact_ids: np.ndarray, exact_dist: np.ndarray) -> tuple[float, float]:
    kth = exact_dist[:, -1:].astype(np.int64)
    right = (true_distances(query, db, ids) <= kth).sum()
    same = sum(len(np.intersect1d(a, b)) for a, b in zip(ids, exact_ids))
    return float(right / exact_ids.size), float(same / exact_ids.size)


def time_single(index, queries: PackedCodes, k: int, max_seconds: float) -> tuple[float, int, np.ndarray]:
    """Queries one at a time until all are done or ``max_seconds`` passed: (q/s, queries, ids)."""
    out = []
    start = time.perf_counter()
    for i in range(len(queries)):
        out.append(index.search(queries[i : i + 1], k)[0])
        if time.perf_counter() - start > max_seconds:
            break
    seconds = time.perf_counter() - start
    return len(out) / seconds, len(out), np.vstack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated database sizes")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--ks", default="10,100")
    parser.add_argument("--single", type=int, default=50, help="batch-1 queries timed per path and k")
    parser.add_argument("--batch", type=int, default=1000, help="queries in the one batched call")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap on each batch-1 loop")
    parser.add_argument("--insert-batch", type=int, default=10_000, help="rows per Milvus insert call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    from cmhash.index.milvus import MilvusIndex

    sizes = [int(s) for s in args.sizes.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    nbytes = (args.bits + 7) // 8
    rng = np.random.default_rng(args.seed)
    queries = PackedCodes(rng.integers(0, 256, size=(max(args.batch, args.single), nbytes), dtype=np.uint8), args.bits)
    folder = tempfile.mkdtemp(prefix="bench-backends-")
    load_before = os.getloadavg()
    rows, builds = [], []
    try:
        for n in sizes:
            db = PackedCodes(rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8), args.bits)
            ids = np.arange(n, dtype=np.int64)
            indexes = {}
            for path in ["hamming-numpy"] + (["hamming-numba"] if kernels.HAVE_NUMBA else []):
                start = time.perf_counter()
                indexes[path] = HammingIndex.from_codes(db, ids=ids, backend=path.split("-")[1])
                builds.append({"n": n, "path": path, "build_seconds": round(time.perf_counter() - start, 3)})
            if "hamming-numba" in indexes:
                indexes["hamming-numba"].search(queries[:2], 10)  # compile outside the timing
            start = time.perf_counter()
            milvus = MilvusIndex(os.path.join(folder, f"n{n}.db"), "codes", args.bits, id_type="int",
                                 payloads=False, insert_batch=args.insert_batch, timeout=600)
            milvus.add(db, ids)
            milvus.save()
            builds.append({"n": n, "path": "milvus-lite", "build_seconds": round(time.perf_counter() - start, 3)})
            indexes["milvus-lite"] = milvus
            try:
                for k in ks:
                    exact_ids, exact_dist = indexes["hamming-numpy"].search(queries[: args.batch], k)
                    for path, index in indexes.items():
                        start = time.perf_counter()
                        got_ids, got_dist = index.search(queries[: args.batch], k)
                        batch_s = time.perf_counter() - start
                        single_qps, single_n, single_ids = time_single(index, queries, k, args.max_seconds)
                        recall, id_recall = recalls(queries.data[: args.batch], db.data, got_ids, exact_ids, exact_dist)
                        single_recall, _ = recalls(queries.data[:single_n], db.data, single_ids, exact_ids[:single_n], exact_dist[:single_n])
                        batch_qps = args.batch / batch_s
                        rows.append({
                            "n": n, "bits": args.bits, "k": k, "path": path,
                            "threads": 1 if path == "hamming-numpy" else ("all cores" if path == "hamming-numba" else "milvus server"),
                            "batch": args.batch, "batch_qps": round(batch_qps, 1),
                            "batch_gb_per_s": round(n * nbytes * batch_qps / 1e9, 3),
                            "single_queries": single_n, "single_qps": round(single_qps, 1),
                            "recall": recall, "recall_single": single_recall, "id_recall": round(id_recall, 4),
                            "same_distances_as_exact": bool(np.array_equal(got_dist, exact_dist)),
                        })
                        r = rows[-1]
                        print(f"{n:>9} k={k:<4} {path:>14}  batch {r['batch_qps']:>9.1f} q/s ({r['batch_gb_per_s']:.2f} GB/s)  "
                              f"single {r['single_qps']:>8.1f} q/s  recall {recall:.3f} (ids {id_recall:.3f})", flush=True)
            finally:
                milvus.close()
            os.unlink(os.path.join(folder, f"n{n}.db"))
            del indexes, db
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()
    for r in rows:
        peer = next(p for p in rows if p["n"] == r["n"] and p["k"] == r["k"] and p["path"] == "hamming-numpy")
        r["batch_speed_vs_numpy"] = round(r["batch_qps"] / peer["batch_qps"], 2)
        r["single_speed_vs_numpy"] = round(r["single_qps"] / peer["single_qps"], 2)
    print(f"\n{args.bits}-bit codes; load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores ({cpu_model()})")
    print(f"{'n':>9} {'path':>14} {'build s':>8}")
    for b in builds:
        print(f"{b['n']:>9} {b['path']:>14} {b['build_seconds']:>8.2f}")
    print(f"{'n':>9} {'k':>4} {'path':>14} {'batch q/s':>10} {'x numpy':>8} {'single q/s':>10} {'x numpy':>8} {'recall':>7} {'id rec':>7} same d")
    for r in rows:
        print(f"{r['n']:>9} {r['k']:>4} {r['path']:>14} {r['batch_qps']:>10.1f} {r['batch_speed_vs_numpy']:>8.2f} "
              f"{r['single_qps']:>10.1f} {r['single_speed_vs_numpy']:>8.2f} {r['recall']:>7.3f} {r['id_recall']:>7.3f} {r['same_distances_as_exact']}")
    import milvus_lite
    import pymilvus

    write_json(args.out, {
        "benchmark": "bench_backends",
        "command": "PYTHONPATH=src python benchmarks/bench_backends.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "builds": builds, "rows": rows,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "versions": {**versions(), "pymilvus": pymilvus.__version__, "milvus_lite": getattr(milvus_lite, "__version__", "?")},
        "seed": args.seed,
        "notes": "uniform random codes; recall = returned items with true distance <= the exact k-th distance, / k; "
                 "id_recall = |ids & exact ids| / k (below 1 for exact searches when the k-th distance ties); "
                 "batch-1 loops stop after --max-seconds; speed ratios are against hamming-numpy in the same run",
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

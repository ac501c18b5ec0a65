"""Top-k Hamming search speed: HammingIndex (numpy and numba kernels) vs brute force, same run.

    PYTHONPATH=src python benchmarks/bench_index.py            # 1M codes, 64 and 128 bits, k=100
    PYTHONPATH=src python benchmarks/bench_index.py --n 200000 --bits 64

Paths, all exact and checked to return the same ids and distances on the shared queries:
- ``brute``: ``cmhash.codes.hamming_distances`` + ``np.argsort(kind="stable")`` per query (the
  plain reference),
- ``numpy``: ``HammingIndex(backend="numpy")`` (cache-sized tiles, bounded top-k; one thread),
- ``numba``: ``HammingIndex(backend="numba")`` (fused scan, queries over all cores),
- ``faiss``: ``faiss.IndexBinaryFlat`` when ``faiss-cpu`` is importable (optional).
Reports queries per second, GB/s of codes scanned (n x bytes per code x queries / time) and each
path's speed-up over brute force. Prints a table and writes benchmarks/results/bench_index.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from cmhash.codes import PackedCodes, hamming_distances
from cmhash.index import HammingIndex, kernels
from cmhash.io import write_json
from cmhash.record import versions

RESULTS = Path(__file__).resolve().parent / "results" / "bench_index.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def brute_force(query: PackedCodes, db: PackedCodes, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.empty((len(query), k), dtype=np.int64)
    dist = np.empty((len(query), k), dtype=np.uint16)
    for i in range(len(query)):
        row = hamming_distances(query[i : i + 1], db)[0]
        order = np.argsort(row, kind="stable")[:k]
        ids[i], dist[i] = order, row[order]
    return ids, dist


def timed(fn, repeats: int):
    """(best wall seconds over ``repeats`` runs, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="database codes")
    parser.add_argument("--bits", default="64,128", help="comma-separated code lengths")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--queries", default="brute=8,numpy=32,numba=128,faiss=128",
                        help="queries timed per path")
    parser.add_argument("--repeats", type=int, default=2, help="runs per path; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    nq = {p: int(v) for p, v in (item.split("=") for item in args.queries.split(","))}
    try:
        import faiss  # optional peer: pip install faiss-cpu
    except ImportError:
        faiss = None
    paths = ["brute", "numpy"] + (["numba"] if kernels.HAVE_NUMBA else []) + (["faiss"] if faiss else [])
    threads = {"brute": 1, "numpy": 1, "numba": os.cpu_count(), "faiss": faiss.omp_get_max_threads() if faiss else None}
    load_before = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    rows = []
    for nbits in [int(b) for b in args.bits.split(",")]:
        nbytes = (nbits + 7) // 8
        db = PackedCodes(rng.integers(0, 256, size=(args.n, nbytes), dtype=np.uint8), nbits)
        queries = PackedCodes(rng.integers(0, 256, size=(max(nq.values()), nbytes), dtype=np.uint8), nbits)
        indexes = {p: HammingIndex.from_codes(db, backend=p) for p in ("numpy", "numba") if p in paths}
        if "numba" in indexes:
            indexes["numba"].search(queries[:2], args.k)  # compile outside the timing
        if faiss:
            flat = faiss.IndexBinaryFlat(nbits)
            flat.add(db.data)
        check = min(nq.values())
        results, times = {}, {}
        for path in paths:
            q = queries[: nq[path]]
            if path == "brute":
                fn = lambda q=q: brute_force(q, db, args.k)  # noqa: E731
            elif path == "faiss":
                fn = lambda q=q: tuple(reversed(flat.search(q.data, args.k)))  # noqa: E731
            else:
                fn = lambda q=q, ix=indexes[path]: ix.search(q, args.k)  # noqa: E731
            times[path], results[path] = timed(fn, args.repeats)
        ref_ids, ref_dist = (r[:check] for r in results["brute"])
        for path in paths:
            ids, dist = results[path][0][:check], results[path][1][:check]
            qps = nq[path] / times[path]
            rows.append({
                "bits": nbits, "n": args.n, "k": args.k, "path": path, "threads": threads[path],
                "queries": nq[path], "seconds": round(times[path], 4), "qps": round(qps, 2),
                "gb_per_s": round(args.n * nbytes * qps / 1e9, 3),
                "same_distances_as_brute": bool(np.array_equal(dist.astype(np.int64), ref_dist.astype(np.int64))),
                "same_ids_as_brute": bool(np.array_equal(ids, ref_ids)),
            })
        base = next(r["qps"] for r in rows if r["bits"] == nbits and r["path"] == "brute")
        for r in rows:
            if r["bits"] == nbits:
                r["speedup_vs_brute"] = round(r["qps"] / base, 2)
        del indexes, db
    load_after = os.getloadavg()
    header = f"{'bits':>5} {'path':>6} {'thr':>4} {'queries':>7} {'q/s':>9} {'GB/s':>7} {'x brute':>8}  same ids/dists"
    print(f"top-{args.k} over {args.n:,} codes; load average {load_before[0]:.1f} -> {load_after[0]:.1f} "
          f"on {os.cpu_count()} cores ({cpu_model()})")
    print(header)
    for r in rows:
        print(f"{r['bits']:>5} {r['path']:>6} {r['threads']:>4} {r['queries']:>7} {r['qps']:>9.1f} {r['gb_per_s']:>7.2f} "
              f"{r['speedup_vs_brute']:>8.1f}  {r['same_ids_as_brute']}/{r['same_distances_as_brute']}")
    write_json(args.out, {
        "benchmark": "bench_index", "command": "PYTHONPATH=src python benchmarks/bench_index.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "rows": rows,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": load_after},
        "versions": {**versions(), "faiss": getattr(faiss, "__version__", None)},
        "seed": args.seed,
        "notes": "best of --repeats runs; ids compared on the first queries shared by every path",
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

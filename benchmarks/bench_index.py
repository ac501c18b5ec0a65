"""HammingIndex search and persistence against faiss and a branch-free floor, measured in one run.

    PYTHONPATH=src python benchmarks/bench_index.py              # 546-820 s on the shared 2-core machine (load 5-13)
    PYTHONPATH=src python benchmarks/bench_index.py --n 200000 --save-n 1000000   # a quick look
    PYTHONPATH=src python benchmarks/bench_index.py --ops radius --batches 1 --bits 64 --out /tmp/r.json  # some cells

Paths, timed in the same run with repetitions interleaved (path A, B, C, A, B, C, ...; best kept):
- ``cmhash``: ``HammingIndex(backend="numba")`` with ``index.threads`` = 1 or 2,
- ``faiss``: ``faiss.IndexBinaryFlat`` (faiss-cpu, installed beside the project for this benchmark
  only, not a dependency; skipped with a message when absent) with ``omp_set_num_threads``.
  faiss's range search keeps d < r, so it gets r + 1 for cmhash's d <= r,
- ``floor``: a minimal branch-free scan (XOR, popcount, compare, count; one query at a time over
  the whole database, split over the same threads): what any exact scan has to do.

Cells: 64/128 bits x random/clustered codes x batch 1/1000 x k 10/100 x 1/2 threads for top-k;
radius 2/8 for range search; save/load of ``--save-n`` codes against faiss write/read
(``--ops``, ``--bits``, ``--codes``, ``--threads``, ``--batches``, ``--ks``, ``--radii`` pick a
subset; the targets printed at the end then cover only the cells run). Each cell
reports the ratios cmhash speed / faiss speed and floor time / cmhash time (1.0 = at the floor).
Every cell checks that cmhash and faiss return the same distances, and cmhash's ids equal the
numpy backend's (the reference kernel) on the first queries. ``uptime``'s load average is
recorded before and after. Writes benchmarks/results/bench_index.json.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # faiss's idle OpenMP threads must not spin

import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from cmhash.codes import PackedCodes  # noqa: E402
from cmhash.index import HammingIndex, kernels  # noqa: E402
from cmhash.io import write_json  # noqa: E402
from cmhash.record import versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_index.json"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def uptime() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def make_codes(rng, kind: str, n: int, nq: int, nbits: int, clusters: int = 1000, flip: float = 0.1):
    """(database, queries) packed codes: uniform random, or clustered (centres with each bit
    flipped with probability ``flip``; queries drawn the same way)."""
    nbytes = nbits // 8
    if kind == "random":
        return (rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8),
                rng.integers(0, 256, size=(nq, nbytes), dtype=np.uint8))
    centres = rng.integers(0, 2, size=(clusters, nbits), dtype=np.uint8)

    def draw(m):
        bits = centres[rng.integers(0, clusters, size=m)] ^ (rng.random((m, nbits)) < flip)
        return np.packbits(bits.astype(np.uint8), axis=1)

    return draw(n), draw(nq)


def floor_scan(threads: int):
    """The floor: count codes with d < t per query, branch-free, database split over ``threads``."""
    from numba import njit

    from cmhash._popcount import popcount

    @njit(nogil=True, cache=True)
    def scan(qw, dw, t):
        acc = 0
        nw = dw.shape[1]
        for q in range(qw.shape[0]):
            if nw == 1:
                x = qw[q, 0]
                for i in range(dw.shape[0]):
                    acc += popcount(x ^ dw[i, 0]) < t
            else:
                x0, x1 = qw[q, 0], qw[q, 1]
                for i in range(dw.shape[0]):
                    acc += popcount(x0 ^ dw[i, 0]) + popcount(x1 ^ dw[i, 1]) < t
        return acc

    def run(qw, dw, t):
        ranges = kernels._ranges(0, dw.shape[0], threads, 64)
        return sum(kernels._run([lambda a=a, b=b: scan(qw, dw[a:b], t) for a, b in ranges]))

    return run


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, the functions taking turns."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def search_cells(args, faiss, rng) -> list[dict]:
    rows = []
    for nbits in args.bits:
        for kind in args.codes:
            db, queries = make_codes(rng, kind, args.n, max(args.batches), nbits)
            index = HammingIndex.from_codes(PackedCodes(db, nbits), backend="numba")
            ref = HammingIndex.from_codes(PackedCodes(db, nbits), backend="numpy")
            flat = None
            if faiss is not None:
                flat = faiss.IndexBinaryFlat(nbits)
                flat.add(db)
            dw = kernels.to_words(db).astype(np.uint64)
            for threads in args.threads:
                index.threads = threads
                floor = floor_scan(threads)
                if faiss is not None:
                    faiss.omp_set_num_threads(threads)
                for batch in args.batches:
                    q = PackedCodes(queries[:batch], nbits)
                    qw = kernels.to_words(q.data).astype(np.uint64)
                    calls = max(1, args.batch1_calls // batch)  # small batches: several calls per timing
                    for k in args.ks if "topk" in args.ops else ():
                        fns = {"cmhash": lambda: [index.search(q, k) for _ in range(calls)],
                               "floor": lambda: [floor(qw, dw, 5) for _ in range(calls)]}
                        if flat is not None:
                            fns["faiss"] = lambda: [flat.search(q.data, k) for _ in range(calls)]
                        rows.append(cell(args, "topk", nbits, kind, threads, batch, calls, fns,
                                         {"k": k}, lambda: index.search(q, k), lambda: ref.search(q[:4], k),
                                         (lambda: flat.search(q.data, k)) if flat is not None else None))
                    for r in args.radii if "radius" in args.ops else ():
                        fns = {"cmhash": lambda: [index.range_search(q, r) for _ in range(calls)],
                               "floor": lambda: [floor(qw, dw, r + 1) for _ in range(calls)]}
                        if flat is not None:
                            fns["faiss"] = lambda: [flat.range_search(q.data, r + 1) for _ in range(calls)]
                        rows.append(cell(args, "radius", nbits, kind, threads, batch, calls, fns, {"radius": r},
                                         lambda: index.range_search(q, r), lambda: ref.range_search(q[:4], r),
                                         (lambda: flat.range_search(q.data, r + 1)) if flat is not None else None))
            del index, ref, flat, db
    return rows


def cell(args, op, nbits, kind, threads, batch, calls, fns, extra, ours, reference, theirs) -> dict:
    times = interleaved(fns, args.repeats)
    got = ours()
    same_ref, same_faiss = _same(op, got, reference(), theirs() if theirs else None)
    queries = batch * calls
    row = {"op": op, "bits": nbits, "codes": kind, "n": args.n, "threads": threads, "batch": batch, **extra,
           "calls_per_timing": calls, "seconds": {p: round(t, 5) for p, t in times.items()},
           "qps": {p: round(queries / t, 1) for p, t in times.items()},
           "cmhash_over_faiss": round(times["faiss"] / times["cmhash"], 2) if "faiss" in times else None,
           "floor_over_cmhash": round(times["floor"] / times["cmhash"], 2),
           "same_ids_as_numpy_backend": same_ref, "same_distances_as_faiss": same_faiss}
    ratio = row["cmhash_over_faiss"]
    print(f"{op:6} {nbits:4} {kind:9} thr {threads} batch {batch:5} {str(extra):15} "
          f"q/s cmhash {row['qps']['cmhash']:>10,.0f} faiss {row['qps'].get('faiss', 0):>10,.0f} "
          f"| x faiss {ratio if ratio is not None else '-':>5} | floor/cmhash {row['floor_over_cmhash']:.2f} "
          f"| same {same_ref}/{same_faiss}", flush=True)
    return row


def _same(op, got, ref, theirs):
    if op == "topk":
        ids, dist = got
        same_ref = bool(np.array_equal(ids[:4], ref[0]) and np.array_equal(dist[:4], ref[1]))
        same_faiss = None if theirs is None else bool(np.array_equal(dist.astype(np.int64), theirs[0].astype(np.int64)))
        return same_ref, same_faiss
    same_ref = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(got[:4], ref))
    if theirs is None:
        return same_ref, None
    lims, dist, _ = theirs
    same_faiss = all(np.array_equal(np.sort(dist[lims[i]:lims[i + 1]]).astype(np.int64), d.astype(np.int64))
                     for i, (_, d) in enumerate(got))
    return same_ref, same_faiss


def save_load_cells(args, faiss, rng) -> list[dict]:
    rows = []
    for nbits in args.bits:
        db = rng.integers(0, 256, size=(args.save_n, nbits // 8), dtype=np.uint8)
        index = HammingIndex.from_codes(PackedCodes(db, nbits))
        flat = None
        if faiss is not None:
            flat = faiss.IndexBinaryFlat(nbits)
            flat.add(db)
        with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
            ours, theirs = Path(tmp) / "cmhash.index.npz", Path(tmp) / "faiss.index"

            def faiss_write_fsync():
                faiss.write_index_binary(flat, str(theirs))
                fd = os.open(theirs, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)

            fns = {"cmhash save": lambda: index.save(ours), "cmhash load": lambda: HammingIndex.load(ours)}
            if flat is not None:
                fns |= {"faiss write": lambda: faiss.write_index_binary(flat, str(theirs)),
                        "faiss read": lambda: faiss.read_index_binary(str(theirs)),
                        "faiss write + fsync": faiss_write_fsync}
            times = interleaved(fns, args.repeats)
            same = bool(np.array_equal(HammingIndex.load(ours).codes.data, db))
        row = {"op": "save/load", "bits": nbits, "n": args.save_n, "seconds": {p: round(t, 4) for p, t in times.items()},
               "file_mb": round(db.nbytes / 1e6, 1), "round_trip_same_codes": same}
        if flat is not None:
            row["save_over_faiss_write"] = round(times["cmhash save"] / times["faiss write"], 2)
            row["load_over_faiss_read"] = round(times["cmhash load"] / times["faiss read"], 2)
            row["save_over_faiss_write_fsync"] = round(times["cmhash save"] / times["faiss write + fsync"], 2)
        print(f"save/load {nbits} bits, {args.save_n:,} codes: " + ", ".join(f"{p} {t:.3f} s" for p, t in times.items())
              + (f" | save/faiss write {row['save_over_faiss_write']}x, load/faiss read {row['load_over_faiss_read']}x"
                 if flat is not None else "") + f" | same {same}", flush=True)
        rows.append(row)
        del index, flat, db
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="database codes for the searches")
    parser.add_argument("--batches", default="1,1000", help="query batch sizes")
    parser.add_argument("--batch1-calls", type=int, default=50, help="queries timed per small-batch timing")
    parser.add_argument("--save-n", type=int, default=10_000_000, help="codes saved and loaded")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", default="topk,radius,save", help="which of topk, radius, save to time")
    parser.add_argument("--bits", default="64,128", help="code lengths (multiples of 8)")
    parser.add_argument("--codes", default="random,clustered", help="which of random, clustered codes")
    parser.add_argument("--threads", default="1,2", help="thread counts")
    parser.add_argument("--ks", default="10,100", help="top-k depths")
    parser.add_argument("--radii", default="2,8", help="range-search radii")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    for name in ("batches", "bits", "threads", "ks", "radii"):
        setattr(args, name, [int(v) for v in str(getattr(args, name)).split(",")])
    args.ops, args.codes = str(args.ops).split(","), str(args.codes).split(",")
    if not set(args.ops) <= {"topk", "radius", "save"} or not set(args.codes) <= {"random", "clustered"}:
        raise SystemExit(f"--ops takes topk,radius,save and --codes random,clustered; got {args.ops} and {args.codes}")
    if any(b % 8 for b in args.bits):
        raise SystemExit(f"--bits must be multiples of 8, got {args.bits}")
    if not kernels.HAVE_NUMBA:
        raise SystemExit("this benchmark times the numba kernels: pip install 'cmhash[fast]'")
    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss-cpu is not installed: the faiss columns are skipped (pip install faiss-cpu==1.15.1)")
    load_before = uptime()
    print(f"{cpu_model()}, {os.cpu_count()} cores; {load_before}")
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    HammingIndex.from_codes(PackedCodes(np.zeros((64, 8), np.uint8), 64), backend="numba").search(
        PackedCodes(np.zeros((1, 8), np.uint8), 64), 1)  # compile (or load the cache) outside the timing
    rows = search_cells(args, faiss, rng) if {"topk", "radius"} & set(args.ops) else []
    rows += save_load_cells(args, faiss, rng) if "save" in args.ops else []
    load_after = uptime()
    print(f"{load_after}; {time.perf_counter() - started:.0f} s")
    targets = summary(rows, faiss is not None)
    for line in targets["lines"]:
        print(line)
    write_json(args.out, {
        "benchmark": "bench_index", "command": "PYTHONPATH=src python benchmarks/bench_index.py "
        + " ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in vars(args).items() if k != "out"),
        "rows": rows, "targets": targets,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_before": load_before, "load_after": load_after},
        "versions": {**versions(), "faiss": getattr(faiss, "__version__", None)},
        "seed": args.seed,
        "notes": "best of --repeats interleaved rounds; ratios within one cell come from the same rounds",
    })
    print(f"wrote {args.out}")


def summary(rows: list[dict], have_faiss: bool) -> dict:
    """The issue-14 targets, met or not, from this run's cells."""
    topk = [r for r in rows if r["op"] == "topk"]
    radius = [r for r in rows if r["op"] == "radius"]
    saves = [r for r in rows if r["op"] == "save/load"]
    out = {"topk_min_over_faiss": min((r["cmhash_over_faiss"] for r in topk), default=None) if have_faiss else None,
           "topk_min_floor_over_cmhash": min((r["floor_over_cmhash"] for r in topk), default=None),
           "radius_min_over_faiss": min((r["cmhash_over_faiss"] for r in radius), default=None) if have_faiss else None,
           "save_max_over_faiss_write": max((r.get("save_over_faiss_write", 0) for r in saves), default=None),
           "load_max_over_faiss_read": max((r.get("load_over_faiss_read", 0) for r in saves), default=None),
           "save_max_over_faiss_write_fsync": max((r.get("save_over_faiss_write_fsync", 0) for r in saves), default=None),
           "all_results_equal": all(r["same_ids_as_numpy_backend"] and r["same_distances_as_faiss"] is not False
                                    for r in topk + radius) and all(r["round_trip_same_codes"] for r in saves)}
    lines = []
    if topk:
        lines += [f"top-k >= 1.5x faiss in every cell: {out['topk_min_over_faiss'] is not None and out['topk_min_over_faiss'] >= 1.5}"
                  f" (min {out['topk_min_over_faiss']}x)",
                  f"top-k within 1.5x of the floor in every cell: {out['topk_min_floor_over_cmhash'] >= 1 / 1.5}"
                  f" (worst floor/cmhash {out['topk_min_floor_over_cmhash']})"]
    if radius:
        lines += [f"radius >= 1.5x faiss in every cell: {out['radius_min_over_faiss'] is not None and out['radius_min_over_faiss'] >= 1.5}"
                  f" (min {out['radius_min_over_faiss']}x)"]
    if saves:
        lines += [f"save within 2x of faiss write: {bool(out['save_max_over_faiss_write']) and out['save_max_over_faiss_write'] <= 2}"
                  f" (worst {out['save_max_over_faiss_write']}x); load within 2x of faiss read: "
                  f"{bool(out['load_max_over_faiss_read']) and out['load_max_over_faiss_read'] <= 2} (worst {out['load_max_over_faiss_read']}x)",
                  # cmhash's save is durable (temp file, fsync, rename, directory fsync); faiss's
                  # write is not, so the same durability is faiss write + fsync of the file
                  f"save within 2x of faiss write + fsync (the same durability): "
                  f"{bool(out['save_max_over_faiss_write_fsync']) and out['save_max_over_faiss_write_fsync'] <= 2}"
                  f" (worst {out['save_max_over_faiss_write_fsync']}x)"]
    lines += [f"every result equal (ids vs the numpy backend, distances vs faiss, save round trip): {out['all_results_equal']}"]
    out["lines"] = lines
    return out


if __name__ == "__main__":
    main()

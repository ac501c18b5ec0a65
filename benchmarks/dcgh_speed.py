"""DCGH speed: WIKI end to end, and training time and peak memory against n and bits (Fig. 8).

1. WIKI (protocol dcgh), per bit length: train + encode the 693 queries of both modalities +
   mAP@all of both directions, the median of ``--repeats`` runs, wall and CPU seconds; the peer
   in the same run is CCA-ITQ, the package's other shallow method, through the same pipeline.
2. Scale: synthetic data of NUS-WIDE's size (``make_synthetic``: 500-d image, 1,000-d text,
   21 classes, up to 3 labels an item, 1,867 queries), 1,500 anchors, the ``nus-wide`` preset,
   ``dtype=float32``. The data is generated once and saved; every (n, bits) point then trains in
   a fresh process that loads the first n training rows, so its peak resident memory
   (VmHWM, see ``peak_rss_gb``) is the whole process: Python, data and training. The
   same process times CCA-ITQ on the same data as the peer, and reports mAP@all (database =
   the learned codes H of the n training items).

The machine is shared: wall times vary with the load (the load average is recorded); CPU
seconds vary less. BLAS threads: whatever ``OPENBLAS_NUM_THREADS`` says (recorded).

Run:  PYTHONPATH=src python benchmarks/dcgh_speed.py   (OPENBLAS_NUM_THREADS=1 on a shared machine)
      ... --skip-scale | --skip-wiki | --sizes 10000,184000 --scale-bits 64
Writes benchmarks/results/dcgh_speed_wiki.json and benchmarks/results/dcgh_speed_scale.json
(``--out DIR``: into DIR instead).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
NUS = dict(image_dim=500, text_dim=1000, num_classes=21, max_labels=3, n_query=1867)


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def wiki_pipeline(method: str, data, bits: int, hparams: dict) -> dict:
    """train + encode (both query modalities) + mAP@all (both directions), timed per stage."""
    from cmhash.evaluation import DIRECTIONS, database_codes
    from cmhash.methods.registry import get_method
    from cmhash.metrics import mean_average_precision

    model, tw, tc = timed(lambda: get_method(method, **hparams).fit(data.train, bits, seed=0))

    def encode():
        return {d: (model.encode(q, data.query.features(q)), database_codes(model, data.database, db))
                for d, (q, db) in DIRECTIONS.items()}

    codes, ew, ec = timed(encode)
    maps, mw, mc = timed(lambda: {d: mean_average_precision(q, db, data.query.labels, data.database.labels).map
                                  for d, (q, db) in codes.items()})
    return {"train_wall": tw, "train_cpu": tc, "encode_wall": ew, "encode_cpu": ec, "map_wall": mw,
            "map_cpu": mc, "total_wall": tw + ew + mw, "total_cpu": tc + ec + mc,
            "i2t": 100 * maps["i2t"], "t2i": 100 * maps["t2i"]}


def run_wiki(bits_list, repeats) -> list[dict]:
    from cmhash.data.protocols import load_dataset

    data = load_dataset("wiki", protocol="dcgh", seed=0)
    rows = []
    print("WIKI: train + encode + mAP both directions, median of", repeats, "runs (seconds)")
    print("| method | bits | total wall | total CPU | train wall | encode+mAP wall | I->T | T->I |")
    print("|---|---|---|---|---|---|---|---|")
    for method, hp in (("dcgh", {"preset": "wiki"}), ("dcgh", {"preset": "wiki", "dtype": "float64"}),
                       ("cca-itq", {})):
        for bits in bits_list:
            runs = [wiki_pipeline(method, data, bits, hp) for _ in range(repeats)]
            med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            label = method + (" float64" if hp.get("dtype") == "float64" else "")
            rows.append({"method": label, "bits": bits, **med, "runs": runs})
            print(f"| {label} | {bits} | {med['total_wall']:.2f} | {med['total_cpu']:.2f} | {med['train_wall']:.2f}"
                  f" | {med['encode_wall'] + med['map_wall']:.2f} | {med['i2t']:.2f} | {med['t2i']:.2f} |", flush=True)
    for bits in bits_list:
        d = next(r for r in rows if r["method"] == "dcgh" and r["bits"] == bits)
        p = next(r for r in rows if r["method"] == "cca-itq" and r["bits"] == bits)
        print(f"dcgh / cca-itq total wall at {bits} bits: {d['total_wall'] / p['total_wall']:.1f}x")
    return rows


# ------------------------------------------------------------------------------ scale
def peak_rss_gb() -> float:
    """This process's peak resident memory in GiB: VmHWM of /proc/self/status on Linux.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss`` here: on Linux a child started by fork + exec
    inherits the parent's high-water mark in ru_maxrss, and the parent held the generated data.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def child(datadir: str, n: int, bits: int, dtype: str) -> None:
    """One (n, bits) point in a fresh process: prints one JSON line."""
    from cmhash.data.dataset import CrossModalDataset
    from cmhash.evaluation import evaluate
    from cmhash.methods.registry import get_method

    def load(name: str, rows: int | None = None) -> np.ndarray:
        """The first ``rows`` rows of a saved .npy, read without mapping the rest (a memory map
        would count the file's pages in this process's resident memory as well)."""
        with open(Path(datadir) / f"{name}.npy", "rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)(fh)
            n = shape[0] if rows is None else min(rows, shape[0])
            return np.fromfile(fh, dtype=dtype, count=n * int(np.prod(shape[1:]))).reshape((n, *shape[1:]))

    train = CrossModalDataset(image=load("image", n), text=load("text", n), labels=load("labels", n), name=f"nus-size/{n}")
    query = CrossModalDataset(image=load("q_image"), text=load("q_text"), labels=load("q_labels"), name="nus-size/query")
    data = train.with_splits(train=train, query=query, database=train)
    rss_data = peak_rss_gb()
    model, tw, tc = timed(lambda: get_method("dcgh", preset="nus-wide", dtype=dtype).fit(train, bits, seed=0))
    rss_train = peak_rss_gb()
    res = evaluate(model, data)
    _, pw, pc = timed(lambda: get_method("cca-itq").fit(train, bits, seed=0))
    print(json.dumps({"n": n, "bits": bits, "dtype": dtype, "train_wall": tw, "train_cpu": tc,
                      "peak_rss_gb_after_load": rss_data, "peak_rss_gb_after_train": rss_train,
                      "i2t": 100 * res["i2t"]["map"], "t2i": 100 * res["t2i"]["map"],
                      "cca_itq_train_wall": pw, "cca_itq_train_cpu": pc,
                      "load_avg": os.getloadavg()[0]}))


def run_scale(sizes, bits_list, dtype, bits_n=None) -> list[dict]:
    from cmhash.data.synthetic import make_synthetic

    n_max = max(sizes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dcgh_speed_") as tmp:
        start = time.perf_counter()
        data = make_synthetic(n_max + NUS["n_query"], seed=0, name="nus-size", **NUS)
        for key, split in (("", data.train), ("q_", data.query)):
            np.save(Path(tmp) / f"{key}image.npy", split.image)
            np.save(Path(tmp) / f"{key}text.npy", split.text)
            np.save(Path(tmp) / f"{key}labels.npy", split.labels)
        del data, split
        print(f"\nscale: generated {n_max} training pairs in {time.perf_counter() - start:.0f} s")
        print("| n | bits | train wall s | train CPU s | peak RSS GB | I->T | T->I | CCA-ITQ wall s | load avg |")
        print("|---|---|---|---|---|---|---|---|---|")
        points = [(n, max(bits_list)) for n in sizes] + [(bits_n or n_max, b) for b in bits_list if b != max(bits_list)]
        for n, bits in points:
            out = subprocess.run([sys.executable, __file__, "--child", tmp, str(n), str(bits), dtype],
                                 capture_output=True, text=True, env=os.environ)
            if out.returncode != 0:
                raise RuntimeError(f"child n={n} bits={bits} failed:\n{out.stderr}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"| {n} | {bits} | {row['train_wall']:.1f} | {row['train_cpu']:.1f} | {row['peak_rss_gb_after_train']:.2f}"
                  f" | {row['i2t']:.2f} | {row['t2i']:.2f} | {row['cca_itq_train_wall']:.1f} | {row['load_avg']:.1f} |",
                  flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wiki-bits", default="8,16,32,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="10000,25000,50000,100000,184000")
    ap.add_argument("--scale-bits", default="8,16,32,64")
    ap.add_argument("--bits-n", type=int, default=None, help="n of the bits sweep (default: the largest size)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-wiki", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results (default: %(default)s)")
    args = ap.parse_args()
    from cmhash.io import write_json
    from cmhash.record import versions

    common = dict(versions=versions(), blas_threads=os.environ.get("OPENBLAS_NUM_THREADS", "default"),
                  cpu_count=os.cpu_count(),
                  command="".join(f"{k}={os.environ[k]} " for k in ("OPENBLAS_NUM_THREADS",) if k in os.environ)
                  + "PYTHONPATH=src python benchmarks/dcgh_speed.py " + " ".join(sys.argv[1:]))
    if not args.skip_wiki:
        write_json(args.out / "dcgh_speed_wiki.json",
                   {"wiki": run_wiki([int(b) for b in args.wiki_bits.split(",")], args.repeats), **common})
    if not args.skip_scale:
        rows = run_scale([int(n) for n in args.sizes.split(",")], [int(b) for b in args.scale_bits.split(",")],
                         args.dtype, args.bits_n)
        write_json(args.out / "dcgh_speed_scale.json", {
            "scale": rows, "scale_config": {"generator": NUS, "preset": "nus-wide", "dtype": args.dtype,
                                            "anchors": 1500}, **common})
    print(f"wrote results to {args.out}")

if __name__ == "__main__":
    main()

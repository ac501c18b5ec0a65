"""Benchmarks and evaluation protocols: which file, and which items are query / database / train.

:func:`load_dataset` finds a benchmark's file (or takes a path), reads it with
:mod:`cmhash.data.readers` and splits it by a named protocol:

* ``shipped`` -- the file's own split: query = its test/query part, database = its
  database/train/retrieval part, train = its train part (else the database).
* ``dcgh`` (DCGH, ACM MM 2024, Sec. 4.1) -- query = the paper's count (WIKI 693, MIRFlickr 2,000,
  IAPR 2,000, NUS-WIDE 1,867); database = train = the rest. A file that ships a test part of
  exactly that size (WIKI's 693 test pairs) uses it; otherwise the query is drawn at random
  (seeded) from all items.
* ``deep-supervised`` (DCMH, IDGH, DGHDGH, ...) -- query = 5,000 random items; train = 10,000 random
  items of the rest; database = all but the query (so train is inside the database).
* ``ucch`` (UCCH, TPAMI 2022, ``src/cmdataset.py``) -- query = the last 2,000 (MIRFlickr, IAPR),
  2,100 (NUS-WIDE) or 5,000 (MS-COCO) items in file order (IAPR: database part then test part);
  database = train = the rest.

Files are looked up under ``$CMHASH_DATA`` if set, else ``../shared/data`` relative to the
current directory and to the repository checkout. Every split records the protocol, seed,
source files and their sha256 in ``info``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmhash.data.dataset import CrossModalDataset
from cmhash.data.readers import PathLike, Source, read_source

PROTOCOLS: dict[str, str] = {
    "shipped": "the file's own split: query = its test/query part, database = its database part, "
    "train = its train part (else the database)",
    "dcgh": "DCGH: query = the paper's count (WIKI 693 = the shipped test split, MIRFlickr 2,000, "
    "IAPR 2,000, NUS-WIDE 1,867), database = train = the rest",
    "deep-supervised": "query = 5,000 random items, train = 10,000 random items of the rest, "
    "database = all but the query (seeded)",
    "ucch": "UCCH: query = the last 2,000 / 2,100 / 5,000 items in file order "
    "(MIRFlickr, IAPR / NUS-WIDE / MS-COCO), database = train = the rest",
}
DEEP_SUPERVISED_QUERY = 5000
DEEP_SUPERVISED_TRAIN = 10000


@dataclass(frozen=True)
class Benchmark:
    """A known benchmark: where its files are looked for and its per-protocol query counts.

    ``files`` are candidate file sets (one file, or XAll/YAll/LAll as three files), relative to a
    data root; each is tried under ``<root>/<name>/`` and then ``<root>/``. The first complete set
    wins. ``query`` maps protocol -> query size (protocols absent here do not apply).
    """

    name: str
    title: str
    files: tuple[tuple[str, ...], ...]
    classes: str
    query: dict[str, int] = field(default_factory=dict)
    default_protocol: str = "deep-supervised"
    aliases: tuple[str, ...] = ()
    # A dataset spec (cmhash.data.spec, every key but "files") that reads the candidate file set
    # ``spec_files`` when that set is the one found; other candidates (and a benchmark without a
    # spec) are read by their key layout (cmhash.data.readers).
    spec: dict[str, Any] | None = None
    spec_files: tuple[str, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "wiki", "Wikipedia (Rasiwasia et al. 2010), 2,866 pairs, SIFT-BoVW 128-d / LDA 10-d",
            (("wikiData.mat",), ("wiki.npz",)),
            "10, single-label", {"dcgh": 693}, default_protocol="dcgh",
            spec=dict(
                image=["I_tr", "I_te"], text=["T_tr", "T_te"], labels=["L_tr", "L_te"], parts=["train", "test"],
                labels_format="class-index", labels_base=1, orientation="items-by-features",
                split={"query": "test", "database": "train", "train": "train"},
            ),
            spec_files=("wikiData.mat",),
        ),
        Benchmark(
            "wiki-roph",
            "Wikipedia with RoPH's features (Ding et al., TMM 2017), 2,866 pairs, image 128-d "
            "(zero-mean, CNN-like) / text 100-d, shipped 1-based split",
            (("wiki.mat",),),
            "10, single-label", {}, default_protocol="shipped",
            aliases=("wikiroph", "wiki_roph", "roph"),
            spec=dict(
                image="data/X1", text="data/X2", labels="data/Y", labels_format="multi-hot",
                orientation="features-by-items",
                split={"query": "data/split/ind_test", "database": "data/split/ind_train",
                       "train": "database", "base": 1},
            ),
            spec_files=("wiki.mat",),
        ),
        Benchmark(
            "mirflickr", "MIRFlickr-25K (20,015 cleaned pairs in DCMH/UCCH files)",
            (
                ("mirflickr25k-iall-vgg.mat", "mirflickr25k-yall.mat", "mirflickr25k-lall.mat"),
                ("mirflickr25k-xall.mat", "mirflickr25k-yall.mat", "mirflickr25k-lall.mat"),
                ("MIRFlickr.mat",), ("mirflickr.mat",), ("mirflickr.npz",),
            ),
            "24, multi-label", {"dcgh": 2000, "ucch": 2000, "deep-supervised": 5000},
            aliases=("mirflickr25k", "mirflickr-25k", "flickr"),
        ),
        Benchmark(
            "nus-wide", "NUS-WIDE (top-10 or top-21 concepts)",
            (
                ("nus-wide-tc10-xall-vgg.mat", "nus-wide-tc10-yall.mat", "nus-wide-tc10-lall.mat"),
                ("NUS-WIDE.mat",), ("nus-wide.mat",), ("nus-wide.npz",),
            ),
            "10 or 21, multi-label", {"dcgh": 1867, "ucch": 2100, "deep-supervised": 5000},
            aliases=("nuswide", "nus_wide", "nus-wide-tc10", "nus_wide_tc10"),
        ),
        Benchmark(
            "iapr", "IAPR TC-12",
            (("iapr-tc12-rand.mat",), ("IAPR-TC12.mat",), ("iapr.mat",), ("iapr.npz",)),
            "255 (UCCH file) / 291, multi-label", {"dcgh": 2000, "ucch": 2000, "deep-supervised": 5000},
            aliases=("iapr-tc12", "iapr_tc12", "iaprtc12"),
        ),
        Benchmark(
            "mscoco", "MS-COCO (UCCH's doc2vec file)",
            (("MSCOCO_deep_doc2vec_data_rand.h5py",), ("mscoco.mat",), ("mscoco.npz",)),
            "80, multi-label", {"ucch": 5000, "deep-supervised": 5000},
            aliases=("coco", "ms-coco"),
        ),
        Benchmark(
            "xmedianet", "XMediaNet image-text pairs (IDGH: 4,096-d / 300-d)",
            (("xmedianet.mat",), ("xmedianet.npz",), ("XMediaNet.mat",)),
            "200, single-label", {"deep-supervised": 5000},
        ),
    )
}
_ALIASES = {alias: b.name for b in BENCHMARKS.values() for alias in (b.name, *b.aliases)}


def resolve_benchmark(name: str) -> Benchmark | None:
    return BENCHMARKS.get(_ALIASES.get(name.lower(), ""))


# ------------------------------------------------------------------------------ finding files
def data_roots() -> list[Path]:
    """Where benchmark files are looked for: $CMHASH_DATA alone if set, else ../shared/data
    relative to the current directory and to the repository checkout."""
    env = os.environ.get("CMHASH_DATA")
    if env:
        return [Path(env)]
    repo = Path(__file__).resolve().parents[3]
    roots = [Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"]
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [r.resolve() for r in unique]:
            unique.append(root)
    return unique


def find_benchmark_files(benchmark: Benchmark, roots: Sequence[Path] | None = None) -> tuple[Path, ...] | None:
    """The first complete candidate file set of ``benchmark`` under the data roots, or None."""
    for root in data_roots() if roots is None else roots:
        for folder in (root / benchmark.name, root):
            for candidate in benchmark.files:
                paths = tuple(folder / f for f in candidate)
                if all(p.is_file() for p in paths):
                    return paths
    return None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------- protocols
def load_dataset(
    name_or_path: str | PathLike | Sequence[PathLike],
    protocol: str | None = None,
    seed: int = 0,
    *,
    benchmark: str | None = None,
    allow_pickle: bool = False,
    allow_empty_labels: bool = False,
    **spec: Any,
) -> CrossModalDataset:
    """Load a benchmark by name (``"wiki"``, ``"mirflickr"``, ...) or from file path(s) and split it.

    ``protocol`` is one of :data:`PROTOCOLS`; ``None`` means the benchmark's default
    (WIKI: ``dcgh``; others: ``deep-supervised``), or ``shipped`` for a file of an unknown
    benchmark that ships a query part. ``benchmark`` names the benchmark of a file given by
    path when its name does not say it (needed for ``dcgh`` / ``ucch`` query counts).
    ``seed`` drives every random draw. ``allow_pickle`` must be True to read pickles
    (unpickling runs code); ``allow_empty_labels`` accepts items without labels. Returns the whole item pool with ``train``, ``query`` and
    ``database`` splits.

    A dataset spec (:mod:`cmhash.data.spec`, docs/data.md) reads any other file: pass a spec
    ``.toml`` file, or the file path(s) with the spec's keys as keyword arguments
    (``image="data/X1", text=..., labels=..., split={...}``). A ``.npz`` written by
    ``cmhash data import`` loads with its stored split.
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    from cmhash.data import spec as specs

    single = name_or_path if isinstance(name_or_path, (str, os.PathLike)) else None
    if spec or (single is not None and str(single).lower().endswith(".toml")):
        if spec:
            spec.setdefault("allow_empty_labels", allow_empty_labels)
            chosen = specs.DatasetSpec(files=name_or_path, **spec)
        else:
            chosen = specs.DatasetSpec.from_toml(name_or_path)
        return _load_spec(chosen, protocol, seed, benchmark)
    if single is not None and protocol in (None, "shipped") and specs.is_canonical(single):
        return specs.load_canonical(single)
    files, bench = _locate(name_or_path, benchmark)
    # A benchmark's spec reads its file when the benchmark is named; a file given by path whose
    # name merely matches (any "wiki.mat") is read by its key layout instead.
    named = benchmark is not None or (
        isinstance(name_or_path, str) and resolve_benchmark(name_or_path) is not None and not Path(name_or_path).exists()
    )
    if named and bench is not None and bench.spec is not None and tuple(f.name for f in files) == bench.spec_files:
        chosen = specs.DatasetSpec(files=files, name=bench.name, allow_empty_labels=allow_empty_labels, **bench.spec)
        return _load_spec(chosen, protocol or bench.default_protocol, seed, bench.name)
    display = bench.name if bench else files[0].stem
    source = read_source(files, allow_pickle=allow_pickle, allow_empty_labels=allow_empty_labels, name=display)
    if protocol is None:
        if bench is not None:
            protocol = bench.default_protocol
        elif source.layout.ships_query:
            protocol = "shipped"
        else:
            raise ValueError(
                f"{files[0]}: ships no query split and is not a known benchmark; pass protocol= "
                f"one of {', '.join(PROTOCOLS)} (and benchmark= for dcgh/ucch query counts)"
            )
    pool, ranges = source.pool()
    query, train, database, how = _split(protocol, source, bench, pool, ranges, seed)
    info = {
        "benchmark": bench.name if bench else None,
        "protocol": protocol,
        "protocol_definition": PROTOCOLS[protocol],
        "split": how,
        "split_seed": int(seed),
        "layout": source.layout.name,
        "source": [str(f.resolve()) for f in files],
        "source_sha256": {f.name: file_sha256(f) for f in files},
        "parts": {k: list(v) for k, v in ranges.items()},
        **source.notes,
    }
    full = pool.replace(name=display, info=info)
    return full.with_splits(
        query=full.subset(query, name=f"{display}/query"),
        database=full.subset(database, name=f"{display}/database"),
        train=full.subset(train, name=f"{display}/train"),
    )


def _load_spec(spec: Any, protocol: str | None, seed: int, benchmark: str | None) -> CrossModalDataset:
    """A spec's dataset; a protocol other than ``shipped`` replaces the spec's own split."""
    from cmhash.data.spec import read_spec

    data, rows = read_spec(spec, protocol=protocol, seed=seed, benchmark=benchmark)
    if rows is None:
        raise ValueError(f"{spec.files[0]}: the spec states no split; add a split table or pass protocol=")
    used = data.info["protocol"]
    info = {**data.info, "protocol_definition": PROTOCOLS.get(used, "the spec's split"),
            "split_seed": int(data.info.get("split_seed", seed))}
    if benchmark is not None:
        info["benchmark"] = benchmark
    return data.replace(info=info)


def _locate(
    name_or_path: str | PathLike | Sequence[PathLike], benchmark: str | None
) -> tuple[tuple[Path, ...], Benchmark | None]:
    bench = None
    if benchmark is not None:
        bench = resolve_benchmark(benchmark)
        if bench is None:
            raise ValueError(f"unknown benchmark '{benchmark}'; known: {', '.join(BENCHMARKS)}")
    if isinstance(name_or_path, (list, tuple)):
        files = tuple(Path(p) for p in name_or_path)
    else:
        as_path = Path(name_or_path)
        named = resolve_benchmark(str(name_or_path)) if isinstance(name_or_path, str) else None
        if named is not None and not as_path.exists():
            found = find_benchmark_files(named)
            if found is None:
                looked = ", ".join(str(r) for r in data_roots())
                expected = " or ".join("+".join(c) for c in named.files)
                raise FileNotFoundError(
                    f"benchmark '{named.name}' not found: looked in {looked} (in '{named.name}/' and "
                    f"directly) for {expected}. Set CMHASH_DATA to the folder holding it"
                )
            return found, bench or named
        files = (as_path,)
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(
                f"{f}: no such file (and not a known benchmark name: {', '.join(BENCHMARKS)})"
            )
    if bench is None:  # guess from the file name: wikiData.mat -> wiki
        stems = {f.name for f in files}
        for candidate in BENCHMARKS.values():
            if any(set(c) == stems for c in candidate.files):
                bench = candidate
                break
    return files, bench


def _split(
    protocol: str,
    source: Source,
    bench: Benchmark | None,
    pool: CrossModalDataset,
    ranges: dict[str, tuple[int, int]],
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(query, train, database) row indices into the pool, and a sentence saying how."""
    rng = np.random.default_rng(seed)
    n = len(pool)
    layout = source.layout
    where = f"{source.files[0]} ({bench.name if bench else 'unknown benchmark'})"

    def part(name: str) -> np.ndarray:
        if name in ranges:
            return np.arange(*ranges[name])
        # a part outside the pool (the pickle layout's train): locate its rows in the pool
        return _match_rows(source.parts[name], pool, where)

    if protocol == "shipped" and source.index_split:
        query, database = source.index_split["query"], source.index_split["database"]
        train = source.index_split.get("train", database)
        if np.intersect1d(query, database).size:
            raise ValueError(f"{where}: the shipped query and database item numbers overlap")
        return query, train, database, (
            f"shipped split of the '{layout.name}' layout (item numbers, {layout.index_base}-based)"
        )

    if protocol == "shipped":
        if layout.query is None:
            raise ValueError(f"{where}: the '{layout.name}' layout ships no query split; choose another protocol")
        query, database = part(layout.query), part(layout.database)
        train = part(layout.train) if layout.train else database
        return query, train, database, f"shipped split of the '{layout.name}' layout"

    if protocol == "deep-supervised":
        need = DEEP_SUPERVISED_QUERY + DEEP_SUPERVISED_TRAIN
        if n < need + 1:
            raise ValueError(
                f"{where}: protocol 'deep-supervised' needs more than {need} items "
                f"({DEEP_SUPERVISED_QUERY} query + {DEEP_SUPERVISED_TRAIN} train + a database), "
                f"the file has {n}"
            )
        perm = rng.permutation(n)
        query = np.sort(perm[:DEEP_SUPERVISED_QUERY])
        rest = perm[DEEP_SUPERVISED_QUERY:]
        train = np.sort(rest[:DEEP_SUPERVISED_TRAIN])
        return query, train, np.sort(rest), (
            f"query = {DEEP_SUPERVISED_QUERY} random items, train = {DEEP_SUPERVISED_TRAIN} random "
            "items of the rest, database = all but the query"
        )

    if bench is None or protocol not in bench.query:
        have = ", ".join(b.name for b in BENCHMARKS.values() if protocol in b.query)
        if bench is None:
            raise ValueError(
                f"{where}: protocol '{protocol}' defines query counts only for {have}; pass "
                "benchmark= for a file whose name does not say which it is"
            )
        raise ValueError(
            f"{where}: protocol '{protocol}' is not defined for benchmark '{bench.name}' "
            f"(it is for {have}); protocols for '{bench.name}': {', '.join(bench.query) or 'none'}"
        )
    size = bench.query[protocol]
    if size >= n:
        raise ValueError(f"{where}: protocol '{protocol}' needs more than {size} items, the file has {n}")

    if protocol == "dcgh":
        if layout.query is not None and len(source.parts[layout.query]) == size:
            query = part(layout.query)
            how = f"query = the shipped '{layout.query}' part ({size} items), database = train = the rest"
        else:
            query = np.sort(rng.permutation(n)[:size])
            how = f"query = {size} random items, database = train = the rest"
        rest = np.setdiff1d(np.arange(n), query)
        return query, rest, rest, how

    if protocol == "ucch":
        query = np.arange(n - size, n)
        rest = np.arange(n - size)
        return query, rest, rest, f"query = the last {size} items in file order, database = train = the rest"

    raise ValueError(f"unknown protocol '{protocol}'")  # pragma: no cover - checked by the caller


def _match_rows(sub: CrossModalDataset, pool: CrossModalDataset, where: str) -> np.ndarray:
    """Rows of the pool equal to each row of ``sub`` (image, text and labels all equal)."""
    keys = {_row_key(pool, i): i for i in range(len(pool))}
    rows = []
    for i in range(len(sub)):
        key = _row_key(sub, i)
        if key not in keys:
            raise ValueError(
                f"{where}: train item {i} is not in the retrieval or query parts; the shipped "
                "train split must be drawn from them"
            )
        rows.append(keys[key])
    return np.asarray(rows, dtype=np.int64)


def _row_key(ds: CrossModalDataset, i: int) -> bytes:
    h = hashlib.blake2b(digest_size=16)  # a short key: pools reach 200,000 rows of 1,000 floats
    for arr in (ds.image, ds.text, ds.labels):
        h.update(np.ascontiguousarray(arr[i]).tobytes())
    return h.digest()


def describe() -> list[dict[str, Any]]:
    """One row per known benchmark: protocols with query counts, expected files, what was found."""
    rows = []
    for b in BENCHMARKS.values():
        found = find_benchmark_files(b)
        rows.append(
            {
                "name": b.name,
                "title": b.title,
                "classes": b.classes,
                "protocols": {p: b.query.get(p) for p in PROTOCOLS if p in b.query or p == "deep-supervised"},
                "default_protocol": b.default_protocol,
                "files": [" + ".join(c) for c in b.files],
                "found": [str(p) for p in found] if found else None,
            }
        )
    return rows

"""Readers for the file layouts the cross-modal hashing field ships.

One entry point, :func:`read_source`, reads one file or several (e.g. UCCH's three
``XAll`` / ``YAll`` / ``LAll`` files), recognises the key layout and returns the file's parts
(``train`` / ``test``, ``database`` / ``test``, ``all``, ...) as validated
:class:`~cmhash.data.dataset.CrossModalDataset` objects. Splitting into query / database / train
is the job of :mod:`cmhash.data.protocols`.

Formats: MATLAB v5 ``.mat`` (scipy.io), MATLAB v7.3 ``.mat`` and ``.h5`` / ``.h5py`` / ``.hdf5``
(h5py), ``.npz`` (never with pickles), and pickles (``.pkl`` / ``.pickle``) only with
``allow_pickle=True`` because unpickling runs code from the file.

Orientation: MATLAB stores arrays column-major, so a v7.3 file read through h5py shows every
matrix transposed (d x n). Files written by MATLAB (a ``MATLAB 7.3`` header or ``MATLAB_class``
attributes) are transposed back; for any HDF5 file the orientation is then checked by matching
row counts across a part's keys, and a part whose arrays agree only when transposed is transposed.

Labels: an n x 1 (or 1 x n) label array holds class indices and becomes one-hot, with one class
count across all parts; indices are 1-based (MATLAB) unless a 0 occurs, then 0-based. Sparse
matrices (scipy.sparse from v5 files, ``MATLAB_sparse`` groups in v7.3 files) are densified.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cmhash.data.dataset import CrossModalDataset, one_hot

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Layout:
    """A key layout: which keys hold each part's (image, text, labels), and what the parts mean.

    ``parts`` is in file order. ``query`` / ``database`` / ``train`` name the shipped parts that
    play those roles (``None`` when the file ships no split); ``pool`` lists the parts that hold
    every item exactly once, in the order protocols index them.
    """

    name: str
    parts: Mapping[str, tuple[str, str, str]]
    origin: str
    query: str | None = None
    database: str | None = None
    train: str | None = None
    pool: tuple[str, ...] = ()
    # A split shipped as item numbers into the pool rather than as separate parts: role
    # ("query" / "database" / "train") -> key of an index array, numbered from ``index_base``.
    index_split: Mapping[str, str] = field(default_factory=dict)
    index_base: int = 0

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for triple in self.parts.values() for k in triple) + tuple(self.index_split.values())

    @property
    def ships_query(self) -> bool:
        return self.query is not None or "query" in self.index_split


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "wiki",
        {"train": ("I_tr", "T_tr", "L_tr"), "test": ("I_te", "T_te", "L_te")},
        "WIKI wikiData.mat of the shallow CMH papers (CMFH, LSSH, SCM, DCGH); labels 1..c",
        query="test", database="train", train="train", pool=("train", "test"),
    ),
    Layout(
        "dcgh",
        {"database": ("XDatabase", "YDatabase", "databaseL"), "test": ("XTest", "YTest", "testL")},
        "DCGH / shallow-CMH MATLAB files: XDatabase, YDatabase, databaseL, XTest, YTest, testL",
        query="test", database="database", train="database", pool=("database", "test"),
    ),
    Layout(
        "iapr",
        {"database": ("VDatabase", "YDatabase", "databaseL"), "test": ("VTest", "YTest", "testL")},
        "IAPR-TC12 as shipped by UCCH (iapr-tc12-rand.mat): VDatabase, YDatabase, databaseL, VTest, ...",
        query="test", database="database", train="database", pool=("database", "test"),
    ),
    Layout(
        "all",
        {"all": ("XAll", "YAll", "LAll")},
        "DCMH / UCCH: XAll (image), YAll (text), LAll (labels); one file or three, v5 or v7.3",
        pool=("all",),
    ),
    Layout(
        "roph",
        {"all": ("data/X1", "data/X2", "data/Y")},
        "RoPH (Ding et al., TMM 2017) wiki.mat: struct data with X1 (image), X2 (text), Y (labels), "
        "stored features x items, and a 1-based split split.ind_train / split.ind_test",
        pool=("all",),
        index_split={"query": "data/split/ind_test", "database": "data/split/ind_train"},
        index_base=1,
    ),
    Layout(
        "npz",
        {"all": ("image", "text", "labels")},
        "cmhash .npz: image, text, labels",
        pool=("all",),
    ),
    Layout(
        "features",
        {p: (f"{p}/image", f"{p}/text", f"{p}/labels") for p in ("database", "query")},
        "cmhash features --query N: database/ and query/ parts, each with image, text, labels",
        query="query", database="database", train="database", pool=("database", "query"),
    ),
    Layout(
        "pickle",
        {p: (f"{p}/image", f"{p}/text", f"{p}/label") for p in ("train", "query", "retrieval")},
        "pickled dicts train / query / retrieval, each with image, text, label (CLIP-hashing repos)",
        query="query", database="retrieval", train="train", pool=("retrieval", "query"),
    ),
)
LAYOUTS_BY_NAME = {layout.name: layout for layout in LAYOUTS}

PICKLE_SUFFIXES = (".pkl", ".pickle")
HDF5_SUFFIXES = (".h5", ".h5py", ".hdf5")
MAT_META_KEYS = ("__header__", "__version__", "__globals__")


@dataclass(frozen=True)
class Source:
    """What :func:`read_source` found: the layout, its parts as datasets, and the files read."""

    layout: Layout
    parts: dict[str, CrossModalDataset]
    files: tuple[Path, ...]
    notes: dict[str, Any] = field(default_factory=dict)
    index_split: dict[str, np.ndarray] = field(default_factory=dict)  # role -> 0-based pool rows

    def pool(self) -> tuple[CrossModalDataset, dict[str, tuple[int, int]]]:
        """Every item once (the layout's pool parts concatenated) and each part's [start, stop)."""
        ranges: dict[str, tuple[int, int]] = {}
        start = 0
        for name in self.layout.pool:
            stop = start + len(self.parts[name])
            ranges[name] = (start, stop)
            start = stop
        chosen = [self.parts[name] for name in self.layout.pool]
        first = chosen[0]
        if len(chosen) == 1:  # no copy of a large single-part file
            return first.replace(name=first.name.split("/")[0]), ranges
        pooled = CrossModalDataset(
            image=np.concatenate([p.image for p in chosen]),
            text=np.concatenate([p.text for p in chosen]),
            labels=np.concatenate([p.labels for p in chosen]),
            views=_concat_optional([p.views for p in chosen]),
            ids=_concat_optional([p.ids for p in chosen]),
            name=first.name.split("/")[0],
            allow_empty_labels=any(p.allow_empty_labels for p in chosen),
        )
        return pooled, ranges


# ------------------------------------------------------------------------------------- files
def read_arrays(path: PathLike, *, allow_pickle: bool = False) -> dict[str, Any]:
    """The arrays of one file by key, with nested groups/dicts flattened to ``"a/b"`` keys.

    MATLAB v7.3 matrices come back in MATLAB's orientation (transposed back); sparse matrices
    are densified. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the
    file for an unreadable one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path, allow_pickle)
    if suffix == ".npz":
        return _read_npz(path)
    import h5py

    if suffix in HDF5_SUFFIXES or h5py.is_hdf5(path):
        return _read_hdf5(path)
    if suffix == ".mat":
        return _read_mat_v5(path)
    raise ValueError(
        f"{path}: unknown file type '{suffix}'; expected .mat (v5 or v7.3), .h5/.h5py/.hdf5, "
        ".npz, or .pkl/.pickle (with allow_pickle=True)"
    )


def _read_mat_v5(path: Path) -> dict[str, Any]:
    import scipy.io
    import scipy.sparse

    try:
        raw = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises many types for damaged files
        raise ValueError(
            f"{path}: cannot read as a MATLAB .mat file (v5 via scipy; v7.3 would be HDF5): "
            f"corrupt or truncated? ({type(exc).__name__}: {exc})"
        ) from exc
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in MAT_META_KEYS:
            continue
        out.update(_mat_struct_fields(key, value))
    return {k: v.toarray() if scipy.sparse.issparse(v) else v for k, v in out.items()}


def _mat_struct_fields(name: str, value: Any) -> dict[str, Any]:
    """A MATLAB scalar struct (scipy: a 1 x 1 record array) as ``name/field`` keys, recursively."""
    if isinstance(value, np.ndarray) and value.dtype.names and value.size == 1:
        record = value.reshape(-1)[0]
        out: dict[str, Any] = {}
        for field_name in value.dtype.names:
            out.update(_mat_struct_fields(f"{name}/{field_name}", record[field_name]))
        return out
    return {name: value}


def _is_matlab_hdf5(path: Path, handle: Any) -> bool:
    with open(path, "rb") as fh:
        if fh.read(10) == b"MATLAB 7.3":
            return True
    found = []

    def visit(_name: str, obj: Any) -> None:
        if "MATLAB_class" in obj.attrs:
            found.append(True)

    handle.visititems(visit)
    return bool(found)


def _read_hdf5(path: Path) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {}
    try:
        with h5py.File(path, "r") as fh:
            matlab = _is_matlab_hdf5(path, fh)

            def visit(name: str, obj: Any) -> None:
                if name.startswith("#"):  # MATLAB's #refs# / #subsystem# internals
                    return
                if isinstance(obj, h5py.Group):
                    if "MATLAB_sparse" in obj.attrs:
                        out[name] = _matlab_sparse(obj)
                    return
                if any(part in out for part in _parents(name)):
                    return  # inside a sparse group already read
                if obj.dtype.kind not in "biuf":
                    return  # strings, references, cells: not feature data
                arr = obj[()]
                out[name] = arr.T if (matlab and np.ndim(arr) >= 2) else arr

            fh.visititems(visit)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{path}: cannot read as HDF5 (MATLAB v7.3 / h5py): corrupt or truncated? "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return out


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _matlab_sparse(group: Any) -> np.ndarray:
    """A MATLAB v7.3 sparse matrix (CSC: data, ir, jc; rows in the MATLAB_sparse attribute)."""
    import scipy.sparse

    rows = int(group.attrs["MATLAB_sparse"])
    jc = group["jc"][()].astype(np.int64)
    ir = group["ir"][()].astype(np.int64) if "ir" in group else np.zeros(0, np.int64)
    data = group["data"][()] if "data" in group else np.zeros(0)
    mat = scipy.sparse.csc_matrix((data, ir, jc), shape=(rows, jc.size - 1))
    return mat.toarray()


def _read_npz(path: Path) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle
        raise ValueError(f"{path}: cannot read as .npz: not a zip archive (corrupt or truncated?)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(
                f"{path}: holds object arrays (pickles); cmhash reads .npz files of plain arrays only"
            ) from exc
        raise ValueError(f"{path}: cannot read as .npz: corrupt or truncated? ({exc})") from exc
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise ValueError(
            f"{path}: cannot read as .npz: corrupt or truncated? ({type(exc).__name__}: {exc})"
        ) from exc


def _read_pickle(path: Path, allow_pickle: bool) -> dict[str, Any]:
    if not allow_pickle:
        raise ValueError(
            f"{path}: refusing to unpickle: loading a pickle runs code from the file. "
            "Pass allow_pickle=True only for files you trust"
        )
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except Exception as exc:  # UnpicklingError, EOFError, ImportError, ... from a damaged file
        raise ValueError(
            f"{path}: cannot unpickle: corrupt or truncated? ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    if {"image", "text", "label"} <= set(obj):  # one part per file: train.pkl, query.pkl, ...
        obj = {path.stem: obj}
    return _flatten(obj)


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix=f"{name}/"))
        else:
            out[name] = value
    return out


# ------------------------------------------------------------------------------------ layout
def detect_layout(keys: Sequence[str], where: str) -> Layout:
    """The layout whose keys are all present; else a ValueError listing the keys found."""
    present = set(keys)
    complete = [layout for layout in LAYOUTS if set(layout.keys) <= present]
    if complete:
        return max(complete, key=lambda layout: len(layout.keys))
    best = max(LAYOUTS, key=lambda layout: len(set(layout.keys) & present))
    found = ", ".join(sorted(present)) or "none"
    if set(best.keys) & present:
        missing = [k for k in best.keys if k not in present]
        raise ValueError(
            f"{where}: looks like the '{best.name}' layout ({best.origin}) but is missing key(s) "
            f"{missing}; keys found: {found}"
        )
    expected = "; ".join(f"{layout.name}: {', '.join(layout.keys)}" for layout in LAYOUTS)
    raise ValueError(f"{where}: no known key layout; keys found: {found}. Known layouts: {expected}")


def read_source(
    paths: PathLike | Sequence[PathLike],
    *,
    allow_pickle: bool = False,
    allow_empty_labels: bool = False,
    name: str | None = None,
) -> Source:
    """Read one file or several (their keys are merged) into a :class:`Source`.

    ``allow_empty_labels`` accepts items without any label (refused by default).
    """
    files = (Path(paths),) if isinstance(paths, (str, os.PathLike)) else tuple(Path(p) for p in paths)
    if not files:
        raise ValueError("no files given")
    where = ", ".join(str(f) for f in files)
    arrays: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for path in files:
        for key, value in read_arrays(path, allow_pickle=allow_pickle).items():
            if key in arrays:
                raise ValueError(f"key '{key}' is in both {origin[key]} and {path}; which one is meant?")
            arrays[key], origin[key] = value, path
    layout = detect_layout(list(arrays), where)
    name = name or files[0].stem
    raw_parts = {
        part: _orient(part, [(k, arrays[k], origin[k]) for k in triple])
        for part, triple in layout.parts.items()
    }
    labels, notes = _labels_to_multi_hot({p: v[2] for p, v in raw_parts.items()}, layout, where)
    parts: dict[str, CrossModalDataset] = {}
    for part, (image, text, _) in raw_parts.items():
        keys = layout.parts[part]
        try:
            parts[part] = CrossModalDataset(
                image=_dense(image), text=_dense(text), labels=labels[part], name=f"{name}/{part}",
                allow_empty_labels=allow_empty_labels, **_beside(keys[0], arrays, layout),
            )
        except ValueError as exc:
            raise ValueError(
                f"{origin[keys[0]]}: part '{part}' (keys {', '.join(keys)}): {exc}"
            ) from exc
    n_pool = sum(len(parts[p]) for p in layout.pool)
    index_split = {
        role: _item_numbers(arrays[key], layout.index_base, n_pool, f"{origin[key]}: key '{key}'")
        for role, key in layout.index_split.items()
    }
    return Source(layout=layout, parts=parts, files=files, notes=notes, index_split=index_split)


def _item_numbers(value: Any, base: int, n: int, where: str) -> np.ndarray:
    """Item numbers (``base``-based, any integer-valued dtype) as validated 0-based row indices."""
    raw = _dense(value).reshape(-1)
    if raw.size == 0:
        raise ValueError(f"{where}: empty split index array")
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise ValueError(f"{where}: split indices must be integers, got dtype {raw.dtype}")
    if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(raw, np.round(raw)):
        raise ValueError(f"{where}: split indices must be whole numbers")
    idx = raw.astype(np.int64) - base
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(
            f"{where}: split indices must lie in {base}..{n - 1 + base} ({base}-based, {n} items), "
            f"got {int(raw.min())}..{int(raw.max())}"
        )
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{where}: split indices repeat an item")
    return idx


def _dense(x: Any) -> np.ndarray:
    import scipy.sparse

    return x.toarray() if scipy.sparse.issparse(x) else np.asarray(x)


def _orient(part: str, entries: list[tuple[str, Any, Path]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, text, labels) with items as rows; label vectors (n x 1, 1 x n) flattened."""
    arrs = []
    for key, value, path in entries:
        arr = _dense(value)
        if arr.dtype == object:
            raise ValueError(f"{path}: key '{key}' holds objects (dtype object), not a numeric array")
        arrs.append(arr)
    image, text, labels = arrs
    if labels.ndim == 2 and 1 in labels.shape:
        labels = labels.reshape(-1)
    for key_arr, (key, _, path) in zip((image, text), entries):
        if key_arr.ndim != 2:
            raise ValueError(f"{path}: key '{key}' must be a 2-D matrix, got shape {key_arr.shape}")
    if labels.ndim not in (1, 2):
        raise ValueError(f"{entries[2][2]}: key '{entries[2][0]}' must be 1-D or 2-D, got shape {labels.shape}")

    def rows(img: np.ndarray, txt: np.ndarray, lab: np.ndarray) -> bool:
        return img.shape[0] == txt.shape[0] == lab.shape[0]

    if rows(image, text, labels):
        return image, text, labels
    flipped = (image.T, text.T, labels if labels.ndim == 1 else labels.T)
    if rows(*flipped):  # stored column-major (e.g. MATLAB h5write) or saved transposed
        return flipped
    shapes = ", ".join(f"'{k}' {np.shape(a)}" for (k, _, _), a in zip(entries, (image, text, labels)))
    files = sorted({str(p) for _, _, p in entries})
    raise ValueError(
        f"{', '.join(files)}: part '{part}': row counts differ ({shapes}); every row must be one "
        "image-text pair (transposing does not reconcile them either)"
    )


def _labels_to_multi_hot(
    labels: dict[str, np.ndarray], layout: Layout, where: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    vectors = {p: v for p, v in labels.items() if v.ndim == 1}
    if not vectors:
        return labels, {"labels": "multi-hot as stored"}
    if len(vectors) != len(labels):
        raise ValueError(
            f"{where}: parts {sorted(vectors)} store class indices but parts "
            f"{sorted(set(labels) - set(vectors))} store multi-hot matrices"
        )
    everything = np.concatenate([np.asarray(v).reshape(-1) for v in vectors.values()])
    base = 0 if everything.size and everything.min() == 0 else 1
    try:
        num_classes = int(np.max(everything)) + 1 - base
        out = {p: one_hot(v, num_classes, base=base) for p, v in vectors.items()}
    except ValueError as exc:
        raise ValueError(f"{where}: label class indices: {exc}") from exc
    return out, {"labels": f"class indices ({base}-based) converted to one-hot, {num_classes} classes"}


def _beside(image_key: str, arrays: dict[str, Any], layout: Layout) -> dict[str, np.ndarray]:
    """A cmhash file's optional ``views`` and ``ids`` beside a part's ``image`` key
    (``views`` / ``ids``, or ``<part>/views`` / ``<part>/ids``), as written by ``cmhash features``."""
    if layout.name not in ("npz", "features"):
        return {}
    prefix = image_key[: -len("image")]
    return {k: np.asarray(arrays[prefix + k]) for k in ("views", "ids") if prefix + k in arrays}


def _concat_optional(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    """Parts' views (or ids) joined, when every part has them."""
    return None if any(a is None for a in arrays) else np.concatenate(arrays)

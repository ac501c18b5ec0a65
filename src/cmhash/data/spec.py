"""Dataset specs: say which arrays of any feature file are the images, texts, labels and split.

A spec is one table of keys, given as a TOML file (a ``[dataset]`` table), a mapping, or keyword
arguments to :class:`DatasetSpec` / :func:`cmhash.load_dataset`; the format is documented in
``docs/data.md``. Arrays are named by the paths ``cmhash data inspect FILE`` prints:

* ``/`` separates MATLAB struct fields and HDF5 groups: ``data/X1``, ``data/split/ind_test``;
* ``{k}`` is element ``k`` of a MATLAB cell array, numbered as MATLAB does (1-based, column-major):
  ``X{1}``, ``X{2}``.

Everything a file cannot tell for sure must be stated, and an error says what to state:

* ``orientation`` ("items-by-features" or "features-by-items", for all matrices or per array) may
  be left out only when the item count fixes which axis holds the items;
* ``labels_format`` ("multi-hot" or "class-index") may be left out when the array's shape and
  values decide it; class indices need ``labels_base`` (0 or 1) unless a 0 occurs;
* split index arrays need ``base`` (0 or 1) unless a 0 (then 0-based) or the item count n
  (then 1-based) occurs in one of them.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cmhash.data.dataset import SPLIT_NAMES, CrossModalDataset, one_hot

ORIENTATIONS = ("items-by-features", "features-by-items")
LABEL_FORMATS = ("multi-hot", "class-index")
SPLIT_WORDS = ("rest", "all")  # plus a role name ("train", "database") or a part name
CANONICAL_FORMAT = "cmhash-dataset"
MAT_META_KEYS = ("__header__", "__version__", "__globals__")


# ------------------------------------------------------------------------ arrays in a file
@dataclass
class ArrayEntry:
    """One array of a file: its path (``data/X1``, ``X{2}``), shape, dtype and kind.

    ``kind`` is "dense", "sparse", "text" (characters), "cell" or "struct array" (containers:
    listed, their elements listed under them, not loadable themselves). Shapes are MATLAB's for
    MATLAB files (v7.3 matrices are transposed back).
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    file: Path
    _load: Callable[[], Any] | None = field(default=None, repr=False)

    def load(self) -> Any:
        if self._load is None:
            raise ValueError(f"{self.file}: '{self.path}' is a {self.kind}, not an array; name one of its elements")
        return self._load()


def list_arrays(path: str | os.PathLike) -> dict[str, ArrayEntry]:
    """Every array of a .mat (v5 or v7.3), .h5 / .hdf5 / .h5py or .npz file, by path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _list_npz(path)
    import h5py

    if suffix in (".h5", ".h5py", ".hdf5") or h5py.is_hdf5(path):
        return _list_hdf5(path)
    if suffix == ".mat":
        return _list_mat_v5(path)
    raise ValueError(f"{path}: unknown file type '{suffix}'; a spec reads .mat (v5 or v7.3), .h5/.hdf5/.h5py or .npz")


def _list_npz(path: Path) -> dict[str, ArrayEntry]:
    from cmhash.data.readers import _read_npz

    arrays = _read_npz(path)
    return {k: ArrayEntry(k, v.shape, str(v.dtype), _kind_of(v), path, (lambda v=v: v)) for k, v in arrays.items()}


def _kind_of(arr: np.ndarray) -> str:
    return "text" if arr.dtype.kind in "US" else "dense"


def _list_mat_v5(path: Path) -> dict[str, ArrayEntry]:
    import scipy.io
    import scipy.sparse

    try:
        raw = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises many types for damaged files
        raise ValueError(f"{path}: cannot read as a MATLAB v5 .mat file: corrupt or truncated? ({exc})") from exc
    out: dict[str, ArrayEntry] = {}

    def walk(name: str, value: Any) -> None:
        if scipy.sparse.issparse(value):
            out[name] = ArrayEntry(name, tuple(value.shape), str(value.dtype), "sparse", path, lambda v=value: v)
        elif isinstance(value, np.ndarray) and value.dtype.names:
            if value.size == 1:
                record = value.reshape(-1)[0]
                for field_name in value.dtype.names:
                    walk(f"{name}/{field_name}", record[field_name])
            else:
                out[name] = ArrayEntry(name, value.shape, "struct", "struct array", path)
        elif isinstance(value, np.ndarray) and value.dtype == object:
            out[name] = ArrayEntry(name, value.shape, "cell", "cell", path)
            for k, element in enumerate(value.reshape(-1, order="F"), start=1):
                walk(f"{name}{{{k}}}", element)
        else:
            arr = np.asarray(value)
            out[name] = ArrayEntry(name, arr.shape, str(arr.dtype), _kind_of(arr), path, lambda v=arr: v)

    for key, value in raw.items():
        if key not in MAT_META_KEYS:
            walk(key, value)
    return out


def _list_hdf5(path: Path) -> dict[str, ArrayEntry]:
    import h5py

    from cmhash.data.readers import _is_matlab_hdf5

    out: dict[str, ArrayEntry] = {}

    def loader(obj_name: str, transpose: bool, sparse: bool) -> Callable[[], Any]:
        def load() -> Any:
            with h5py.File(path, "r") as fh:
                obj = fh[obj_name]
                if sparse:
                    from cmhash.data.readers import _matlab_sparse

                    return _matlab_sparse(obj)
                arr = obj[()]
                return arr.T if transpose and arr.ndim >= 2 else arr

        return load

    try:
        with h5py.File(path, "r") as fh:
            matlab = _is_matlab_hdf5(path, fh)

            def walk(name: str, obj: Any) -> None:
                mclass = obj.attrs.get("MATLAB_class", b"")
                mclass = mclass.decode() if isinstance(mclass, bytes) else str(mclass)
                if isinstance(obj, h5py.Group):
                    if "MATLAB_sparse" in obj.attrs:
                        shape = (int(obj.attrs["MATLAB_sparse"]), int(obj["jc"].shape[0]) - 1)
                        out[name] = ArrayEntry(name, shape, mclass or "float64", "sparse", path,
                                               loader(obj.name, False, True))
                        return
                    for key in obj:
                        if not key.startswith("#"):  # MATLAB's #refs# / #subsystem# internals
                            walk(f"{name}/{key}" if name else key, obj[key])
                    return
                shape = obj.shape[::-1] if matlab else obj.shape
                if h5py.check_ref_dtype(obj.dtype) is not None:  # a MATLAB cell: object references
                    out[name] = ArrayEntry(name, shape, "cell", "cell", path)
                    for k, ref in enumerate(obj[()].reshape(-1), start=1):  # C order of the
                        walk(f"{name}{{{k}}}", fh[ref])  # transposed array = MATLAB's linear order
                    return
                if obj.dtype.kind not in "biuf":
                    return
                kind = "text" if mclass == "char" else "dense"
                out[name] = ArrayEntry(name, shape, str(obj.dtype), kind, path, loader(obj.name, matlab, False))

            for key in fh:
                if not key.startswith("#"):
                    walk(key, fh[key])
    except (OSError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot read as HDF5 (MATLAB v7.3 / h5py): corrupt or truncated? ({exc})") from exc
    return out


# ------------------------------------------------------------------------------ the spec
ArrayRef = str | tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """Which arrays of ``files`` hold what. See the module docstring and docs/data.md.

    ``image``, ``text``, ``labels`` (and ``parts``) may be lists: the arrays are concatenated
    along the items, block ``k`` named ``parts[k]``, and a split may name a part.
    ``split`` maps "query" / "train" / "database" to an index array path, a boolean mask path,
    a count (blocks in ``split["order"]``), a part name, another role, "rest" (all items not in
    the query) or "all"; ``split["base"]`` states the numbering of index arrays; or
    ``split = {"protocol": ..., "benchmark": ..., "seed": ...}`` applies a named protocol.
    Left out: database = "rest", train = "database".
    """

    files: tuple[Path, ...]
    image: ArrayRef
    text: ArrayRef
    labels: ArrayRef
    labels_format: str | None = None
    labels_base: int | None = None
    num_classes: int | None = None
    orientation: str | Mapping[str, str] | None = None
    ids: ArrayRef | None = None
    views: ArrayRef | None = None
    parts: tuple[str, ...] = ()
    split: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    allow_empty_labels: bool = False

    KEYS = ("files", "image", "text", "labels", "labels_format", "labels_base", "num_classes",
            "orientation", "ids", "views", "parts", "split", "name", "allow_empty_labels")

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        files = (self.files,) if isinstance(self.files, (str, os.PathLike)) else tuple(self.files)
        if not files:
            raise ValueError("spec: 'files' is empty; name at least one file")
        set_("files", tuple(Path(f) for f in files))
        for key in ("image", "text", "labels"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                if not value or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"spec: '{key}' must be an array path or a non-empty list of them, got {value!r}")
                set_(key, tuple(value))
            elif not isinstance(value, str) or not value:
                raise ValueError(f"spec: '{key}' must name an array (a path as `cmhash data inspect` prints), got {value!r}")
        for key in ("ids", "views"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                set_(key, tuple(value))
            elif value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"spec: '{key}' must name an array or list one per part, got {value!r}")
        blocks = {len(self._blocks(k)) for k in ("image", "text", "labels")}
        for key in ("ids", "views"):
            if getattr(self, key) is not None and len(self._blocks(key)) not in blocks:
                raise ValueError(f"spec: '{key}' must list one array per part, like 'image'")
        if len(blocks) != 1:
            raise ValueError("spec: 'image', 'text' and 'labels' must list the same number of arrays (one per part)")
        (count,) = blocks
        set_("parts", tuple(self.parts))
        if count > 1 and len(self.parts) != count:
            raise ValueError(f"spec: {count} arrays per modality need 'parts' = {count} names, got {list(self.parts)}")
        if self.labels_format is not None and self.labels_format not in LABEL_FORMATS:
            raise ValueError(f"spec: labels_format must be one of {LABEL_FORMATS}, got {self.labels_format!r}")
        if self.labels_base not in (None, 0, 1):
            raise ValueError(f"spec: labels_base must be 0 or 1, got {self.labels_base!r}")
        if self.labels_base is not None and self.labels_format == "multi-hot":
            raise ValueError("spec: labels_base applies to class-index labels, but labels_format is 'multi-hot'")
        orient = self.orientation
        values = orient.values() if isinstance(orient, Mapping) else [] if orient is None else [orient]
        for value in values:
            if value not in ORIENTATIONS:
                raise ValueError(f"spec: orientation must be one of {ORIENTATIONS}, got {value!r}")
        if isinstance(orient, Mapping):
            unknown = set(orient) - {"image", "text", "labels", "views"}
            if unknown:
                raise ValueError(f"spec: orientation names unknown arrays {sorted(unknown)}; use image, text, labels, views")
            set_("orientation", dict(orient))
        set_("split", _check_split(dict(self.split)))

    def _blocks(self, key: str) -> tuple[str, ...]:
        value = getattr(self, key)
        return value if isinstance(value, tuple) else (value,)

    # -------------------------------------------------------------- reading and writing
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> "DatasetSpec":
        """A spec from a mapping (a TOML table); relative files are taken from ``base_dir``."""
        unknown = sorted(set(mapping) - set(cls.KEYS))
        if unknown:
            hint = {k: difflib.get_close_matches(k, cls.KEYS, 1) for k in unknown}
            said = ", ".join(f"'{k}'" + (f" (did you mean '{hint[k][0]}'?)" if hint[k] else "") for k in unknown)
            raise ValueError(f"spec: unknown key(s) {said}; known keys: {', '.join(cls.KEYS)}")
        missing = [k for k in ("files", "image", "text", "labels") if k not in mapping]
        if missing:
            raise ValueError(f"spec: missing key(s) {missing}; a spec names files, image, text and labels")
        values = dict(mapping)
        files = values["files"]
        files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        if base_dir is not None:
            files = [f if Path(f).is_absolute() else Path(base_dir) / f for f in files]
        values["files"] = files
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "DatasetSpec":
        """A spec from a TOML file: its ``[dataset]`` table (or its top level)."""
        from cmhash._toml import read_toml

        path = Path(path)
        raw = read_toml(path, "spec")
        table = raw.get("dataset", raw)
        try:
            return cls.from_mapping(table, base_dir=path.parent)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def as_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready: None values dropped, paths as strings."""
        out = {k: v for k, v in asdict(self).items() if v not in (None, (), {}) and not (k == "allow_empty_labels" and not v)}
        out["files"] = [str(f) for f in self.files]
        for key in ("image", "text", "labels", "parts", "ids", "views"):
            if isinstance(out.get(key), tuple):
                out[key] = list(out[key])
        return out

    def to_toml(self) -> str:
        """The spec as a ``[dataset]`` TOML table (loads back with :meth:`from_toml`)."""
        values = self.as_dict()
        split = values.pop("split", {})
        orient = values.pop("orientation", None)
        lines = ["[dataset]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        if isinstance(orient, str):
            lines.append(f"orientation = {_toml_value(orient)}")
        elif orient:
            lines += ["", "[dataset.orientation]"] + [f"{k} = {_toml_value(v)}" for k, v in orient.items()]
        if split:
            lines += ["", "[dataset.split]"] + [f"{k} = {_toml_value(v)}" for k, v in split.items()]
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def _check_split(split: dict[str, Any]) -> dict[str, Any]:
    known = {*SPLIT_NAMES, "base", "order", "protocol", "benchmark", "seed"}
    unknown = sorted(set(split) - known)
    if unknown:
        raise ValueError(f"spec: split has unknown key(s) {unknown}; known: {sorted(known)}")
    if "protocol" in split and set(split) & set(SPLIT_NAMES):
        raise ValueError("spec: split names a protocol and explicit parts; state one or the other")
    if split.get("base") not in (None, 0, 1):
        raise ValueError(f"spec: split base must be 0 or 1, got {split['base']!r}")
    for role in SPLIT_NAMES:
        value = split.get(role)
        if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int))):
            raise ValueError(f"spec: split '{role}' must be an array path, a count, a part or role name, "
                             f"'rest' or 'all'; got {value!r}")
    counted = [r for r in SPLIT_NAMES if isinstance(split.get(r), int)]
    if counted and sorted(split.get("order", [])) != sorted(counted):
        raise ValueError(
            f"spec: split counts for {counted} need 'order', the counted roles in file order "
            f"(e.g. order = {counted!r}): which block comes first cannot be guessed"
        )
    return split


# ------------------------------------------------------------------------------- loading
def load_spec(spec: "DatasetSpec | str | os.PathLike | Mapping[str, Any]") -> CrossModalDataset:
    """The dataset a spec describes, with its train / query / database splits when it has any."""
    return read_spec(spec)[0]


def read_spec(spec: "DatasetSpec | str | os.PathLike | Mapping[str, Any]", *, protocol: str | None = None,
              seed: int = 0, benchmark: str | None = None) -> tuple[CrossModalDataset, dict[str, np.ndarray] | None]:
    """(dataset, its split as 0-based row indices by role, or None without a split).

    ``protocol`` (other than "shipped") splits by that named protocol instead of the spec's split
    (``seed``; ``benchmark`` for its query counts); a spec whose split names parts tells the
    protocol which part is the shipped query (DCGH uses WIKI's 693 test pairs).
    """
    from cmhash.data.protocols import file_sha256

    if isinstance(spec, (str, os.PathLike)):
        spec = DatasetSpec.from_toml(spec)
    elif isinstance(spec, Mapping):
        spec = DatasetSpec.from_mapping(spec)
    entries = _merged_entries(spec.files)
    name = spec.name or spec.files[0].stem
    where = ", ".join(str(f) for f in spec.files)

    def get(path: str, what: str) -> Any:
        if path not in entries:
            close = difflib.get_close_matches(path, list(entries), 3)
            raise ValueError(
                f"{where}: spec {what} = '{path}': no such array"
                + (f" (close: {', '.join(close)})" if close else "")
                + f"; arrays: {', '.join(list(entries)[:20])}"
                + ("..." if len(entries) > 20 else "") + " (see `cmhash data inspect`)"
            )
        return _dense(entries[path].load())

    notes: dict[str, Any] = {}
    blocks = []
    for ipath, tpath, lpath in zip(spec._blocks("image"), spec._blocks("text"), spec._blocks("labels")):
        raw = {"image": get(ipath, "image"), "text": get(tpath, "text"), "labels": get(lpath, "labels")}
        paths = {"image": ipath, "text": tpath, "labels": lpath}
        blocks.append(_orient_block(raw, paths, spec.orientation, where, notes))
    pool = {key: np.concatenate([b[key] for b in blocks]) if len(blocks) > 1 else blocks[0][key]
            for key in ("image", "text", "labels")}
    n = pool["image"].shape[0]
    starts = np.cumsum([0, *(b["image"].shape[0] for b in blocks)])
    part_rows = {p: np.arange(starts[i], starts[i + 1]) for i, p in enumerate(spec.parts)}
    labels, notes["labels"] = _labels(pool["labels"], spec, where, "+".join(spec._blocks("labels")))
    views = ids = None
    if spec.views:
        orient = _orientation_of(spec.orientation, "views") or notes["orientation"].get("image")
        chunks = [np.asarray(get(path, "views")) for path in spec._blocks("views")]
        chunks = [v.T if v.ndim == 3 and orient == "features-by-items" else v for v in chunks]
        views = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if spec.ids:
        chunks = [_vector(get(path, "ids")) for path in spec._blocks("ids")]
        ids = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    try:
        full = CrossModalDataset(
            image=pool["image"], text=pool["text"], labels=labels, views=views, ids=ids, name=name,
            allow_empty_labels=spec.allow_empty_labels,
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    info: dict[str, Any] = {
        "spec": spec.as_dict(),
        "source": [str(f.resolve()) for f in spec.files],
        "source_sha256": {f.name: file_sha256(f) for f in spec.files},
        "parts": {p: [int(r[0]), int(r[-1]) + 1] for p, r in part_rows.items() if r.size},
        **notes,
    }
    if protocol not in (None, "shipped"):
        by = {"protocol": protocol, "seed": seed, **({"benchmark": benchmark} if benchmark else {})}
    elif "protocol" in spec.split:
        by = spec.split
    else:
        by = None
    if not spec.split and by is None:
        return full.replace(info=info), None
    if by is not None:
        rows, how, used_seed, bench = _protocol_rows(full, spec, part_rows, by)
        info.update(protocol=by["protocol"], split=how, split_seed=used_seed, benchmark=bench)
    else:
        rows, how = _split_rows(spec, get, n, part_rows, where)
        info.update(protocol="shipped", split=how)
    full = full.replace(info=info)
    return full.with_splits(**{role: full.subset(rows[role], name=f"{name}/{role}") for role in SPLIT_NAMES}), rows


def _merged_entries(files: Sequence[Path]) -> dict[str, ArrayEntry]:
    entries: dict[str, ArrayEntry] = {}
    for path in files:
        for key, entry in list_arrays(path).items():
            if key in entries:
                raise ValueError(f"array '{key}' is in both {entries[key].file} and {path}; which one is meant?")
            entries[key] = entry
    return entries


def _dense(x: Any) -> Any:
    return x.toarray() if hasattr(x, "toarray") and hasattr(x, "tocsr") else x


def _vector(arr: np.ndarray) -> np.ndarray:
    """A 1-D view of a vector stored as n, 1 x n or n x 1."""
    arr = np.asarray(arr)
    return arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr


def _orientation_of(orientation: str | Mapping[str, str] | None, key: str) -> str | None:
    return orientation.get(key) if isinstance(orientation, Mapping) else orientation


def _orient_block(raw: dict[str, np.ndarray], paths: dict[str, str], orientation: Any, where: str,
                  notes: dict[str, Any]) -> dict[str, np.ndarray]:
    """(image, text, labels) with items as rows: as stated, or where the item count decides it."""
    arrays = {k: np.asarray(v) for k, v in raw.items()}
    arrays["labels"] = _vector(arrays["labels"])
    for key in ("image", "text"):
        if arrays[key].ndim != 2:
            raise ValueError(f"{where}: {key} '{paths[key]}' must be a 2-D matrix, got shape {arrays[key].shape}")
    if arrays["labels"].ndim not in (1, 2):
        raise ValueError(f"{where}: labels '{paths['labels']}' must be a vector or a matrix, got shape {arrays['labels'].shape}")
    matrices = [k for k in ("image", "text", "labels") if arrays[k].ndim == 2]
    stated = {k: _orientation_of(orientation, k) for k in matrices}
    if all(stated.values()):
        chosen = stated
    else:  # the item count n must be one number every array agrees on
        candidates = set(arrays["image"].shape) & set(arrays["text"].shape)
        if arrays["labels"].ndim == 1:
            candidates &= {arrays["labels"].shape[0]}
        else:
            candidates &= set(arrays["labels"].shape)
        for k, o in stated.items():
            if o:
                candidates &= {arrays[k].shape[0 if o == "items-by-features" else 1]}
        shapes = ", ".join(f"{k} '{paths[k]}' {arrays[k].shape}" for k in ("image", "text", "labels"))
        if len(candidates) != 1:
            raise ValueError(
                f"{where}: cannot tell which axis holds the items ({shapes}; "
                + ("no common size" if not candidates else f"could be {sorted(candidates)} items")
                + "); state orientation = 'items-by-features' or 'features-by-items'"
            )
        (n,) = candidates
        chosen = {}
        for k in matrices:
            if stated[k]:
                chosen[k] = stated[k]
            elif arrays[k].shape[0] == arrays[k].shape[1] == n:
                raise ValueError(f"{where}: {k} '{paths[k]}' is {n} x {n}: state its orientation (orientation = 'items-by-features' or 'features-by-items')")
            else:
                chosen[k] = "items-by-features" if arrays[k].shape[0] == n else "features-by-items"
    for k, o in chosen.items():
        if o == "features-by-items":
            arrays[k] = arrays[k].T
    notes.setdefault("orientation", {}).update(chosen)
    rows = {k: arrays[k].shape[0] for k in arrays}
    if len(set(rows.values())) != 1:
        raise ValueError(
            f"{where}: with orientation {chosen}, the item counts differ ({rows}); every row must be "
            "one image-text pair"
        )
    return arrays


def _labels(arr: np.ndarray, spec: DatasetSpec, where: str, path: str) -> tuple[np.ndarray, str]:
    """Multi-hot labels (items x classes) and a note saying how they were read."""
    fmt = spec.labels_format
    if fmt is None:
        values = np.unique(arr)
        binary = bool(np.isin(values, (0, 1)).all())
        if arr.ndim == 2 and arr.shape[1] > 1 and binary:
            fmt = "multi-hot"
        elif arr.ndim == 1 and not binary:
            fmt = "class-index"
        else:
            raise ValueError(
                f"{where}: labels '{path}' (shape {arr.shape}, values {values[:6]}) could be class "
                "indices or multi-hot: state labels_format = 'class-index' (with labels_base) or 'multi-hot'"
            )
    if fmt == "multi-hot":
        if arr.ndim == 1:
            arr = arr[:, None]
        return arr, f"multi-hot as stored ({arr.shape[1]} classes)"
    if arr.ndim != 1:
        raise ValueError(f"{where}: labels '{path}' has shape {arr.shape}; class-index labels are one number per item")
    base = spec.labels_base
    if base is None:
        if arr.size and np.min(arr) == 0:
            base = 0
        else:
            lo, hi = (int(np.min(arr)), int(np.max(arr))) if arr.size else (0, 0)
            raise ValueError(
                f"{where}: labels '{path}' hold class indices {lo}..{hi} and no 0: state labels_base = 1 "
                f"(classes numbered from 1, as MATLAB does) or labels_base = 0 (then class 0 has no items)"
            )
    try:
        out = one_hot(arr, spec.num_classes, base=base)
    except ValueError as exc:
        raise ValueError(f"{where}: labels '{path}': {exc}") from exc
    return out, f"class indices ({base}-based) converted to one-hot, {out.shape[1]} classes"


def _split_rows(spec: DatasetSpec, get: Callable[[str, str], Any], n: int,
                part_rows: dict[str, np.ndarray], where: str) -> tuple[dict[str, np.ndarray], str]:
    """Row indices (0-based) of query, train and database, and a sentence saying how."""
    split = dict(spec.split)
    split.setdefault("database", "rest")
    split.setdefault("train", "database")
    if "query" not in split:
        raise ValueError(f"{where}: the spec's split names no query: state split.query")
    rows: dict[str, np.ndarray] = {}
    how: dict[str, str] = {}
    # counts: consecutive blocks in the stated order
    start = 0
    for role in split.get("order", []):
        count = split[role]
        if count < 1 or start + count > n:
            raise ValueError(f"{where}: split counts {[split[r] for r in split['order']]} do not fit {n} items")
        rows[role], how[role] = np.arange(start, start + count), f"items {start}..{start + count - 1} (0-based)"
        start += count
    # index arrays and masks; their base is stated or decided together
    arrays = {}
    for role in SPLIT_NAMES:
        value = split[role]
        if isinstance(value, str) and value not in (*SPLIT_WORDS, *SPLIT_NAMES) and value not in part_rows:
            arrays[role] = _vector(get(value, f"split.{role}"))
    integer = {r: a for r, a in arrays.items() if a.dtype != np.bool_}
    base = split.get("base")
    if integer and base is None:
        base = _index_base(integer, split, n, where)
    for role, arr in arrays.items():
        what = f"split.{role} '{split[role]}'"
        if arr.dtype == np.bool_:
            if arr.shape != (n,):
                raise ValueError(f"{where}: {what} is a boolean mask of shape {arr.shape}, expected ({n},)")
            rows[role], how[role] = np.flatnonzero(arr), f"mask '{split[role]}'"
        else:
            rows[role] = _indices(arr, base, n, f"{where}: {what}")
            how[role] = f"'{split[role]}' ({base}-based)"
    for role in SPLIT_NAMES:
        value = split[role]
        if isinstance(value, str) and value in part_rows and role not in rows:
            rows[role], how[role] = part_rows[value], f"part '{value}'"
    for role in SPLIT_NAMES:  # words last: they refer to what is resolved above
        value = split[role]
        if role in rows:
            continue
        if value == "all":
            rows[role], how[role] = np.arange(n), "all items"
        elif value == "rest":
            rows[role], how[role] = np.setdiff1d(np.arange(n), rows["query"]), "all but the query"
    for role in SPLIT_NAMES:
        value = split[role]
        if role not in rows:
            if value not in rows or value == role:
                raise ValueError(f"{where}: split.{role} = '{value}' refers to a split that is not resolved")
            rows[role], how[role] = rows[value], f"the {value} items"
    overlap = np.intersect1d(rows["query"], rows["database"]).size
    sentence = "; ".join(f"{role} = {how[role]} ({rows[role].size})" for role in ("query", "train", "database"))
    if overlap:
        sentence += f"; {overlap} query items are also in the database"
    return rows, sentence


def _index_base(arrays: dict[str, np.ndarray], split: Mapping[str, Any], n: int, where: str) -> int:
    """The base of split index arrays when their values decide it: a 0 means 0-based, n means 1-based."""
    zero = [r for r, a in arrays.items() if a.size and np.min(a) == 0]
    top = [r for r, a in arrays.items() if a.size and np.max(a) == n]
    names = ", ".join(f"{r} '{split[r]}'" for r in arrays)
    if zero and top:
        raise ValueError(f"{where}: split index arrays ({names}) hold both 0 ({zero}) and {n} ({top}): "
                         f"neither 0-based nor 1-based fits {n} items")
    if zero:
        return 0
    if top:
        return 1
    lo = min(int(np.min(a)) for a in arrays.values() if a.size)
    hi = max(int(np.max(a)) for a in arrays.values() if a.size)
    raise ValueError(
        f"{where}: split index arrays ({names}) hold {lo}..{hi} for {n} items, so they could be 0- or "
        "1-based: state split.base = 1 (MATLAB numbering) or 0"
    )


def _indices(arr: np.ndarray, base: int, n: int, where: str) -> np.ndarray:
    """Item numbers (``base``-based) as validated 0-based rows: whole, in range, none repeated."""
    from cmhash.data.readers import _item_numbers

    if arr.ndim != 1:
        raise ValueError(f"{where}: must be a vector of item numbers, got shape {arr.shape}")
    return _item_numbers(arr, base, n, where)


def _protocol_rows(full: CrossModalDataset, spec: DatasetSpec, part_rows: dict[str, np.ndarray],
                   by: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], str, int, str | None]:
    """Rows by the named protocol ``by["protocol"]`` of :mod:`cmhash.data.protocols`, applied to
    the items in file order; the spec's parts (and which of them its split makes the query,
    database and train) are what the protocol sees as the file's shipped parts."""
    from cmhash.data.protocols import PROTOCOLS, _split, resolve_benchmark
    from cmhash.data.readers import Layout, Source

    protocol = by["protocol"]
    if protocol not in PROTOCOLS or protocol == "shipped":
        known = ", ".join(p for p in PROTOCOLS if p != "shipped")
        raise ValueError(f"spec: split protocol '{protocol}' unknown; known: {known} (or give the split's arrays)")
    bench = resolve_benchmark(by["benchmark"]) if "benchmark" in by else None
    if "benchmark" in by and bench is None:
        raise ValueError(f"spec: split benchmark '{by['benchmark']}' is not a known benchmark")
    seed = int(by.get("seed", 0))
    if part_rows:
        roles = {r: spec.split.get(r) for r in SPLIT_NAMES if spec.split.get(r) in part_rows}
        names = tuple(part_rows)
        layout = Layout("spec", {p: ("image", "text", "labels") for p in names}, "a dataset spec", pool=names, **roles)
        parts = {p: full.subset(rows, name=f"{full.name}/{p}") for p, rows in part_rows.items()}
        ranges = {p: (int(rows[0]), int(rows[-1]) + 1) for p, rows in part_rows.items()}
    else:
        layout = Layout("spec", {"all": ("image", "text", "labels")}, "a dataset spec", pool=("all",))
        parts, ranges = {"all": full}, {"all": (0, len(full))}
    source = Source(layout=layout, parts=parts, files=spec.files)
    query, train, database, how = _split(protocol, source, bench, full, ranges, seed)
    return {"query": query, "train": train, "database": database}, how, seed, bench.name if bench else None


# ------------------------------------------------------------------- the canonical form
def save_canonical(data: CrossModalDataset, rows: Mapping[str, np.ndarray], out: str | os.PathLike,
                   provenance: Mapping[str, Any]) -> Path:
    """Write ``data`` and its split (``rows``: 0-based row indices by role) as a cmhash dataset .npz."""
    from cmhash import __version__
    from cmhash.io import save_arrays

    if rows is None or not all(role in rows for role in SPLIT_NAMES):
        raise ValueError(f"dataset '{data.name}': no train / query / database split to write; give the spec a split")
    arrays: dict[str, np.ndarray] = {"image": data.image, "text": data.text, "labels": data.labels}
    if data.ids is not None:
        arrays["ids"] = data.ids
    if data.views is not None:
        arrays["views"] = data.views
    for role in SPLIT_NAMES:
        arrays[f"split_{role}"] = np.asarray(rows[role], dtype=np.int64)
    import datetime

    meta = {
        "format": CANONICAL_FORMAT, "format_version": 1, "name": data.name,
        "index_base": 0, "cmhash_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset_checksum": data.checksum(), "allow_empty_labels": data.allow_empty_labels, **provenance,
    }
    save_arrays(out, arrays, meta)
    return Path(out)


def is_canonical(path: str | os.PathLike) -> bool:
    """True for a .npz written by :func:`save_canonical` (reads only its metadata record)."""
    import zipfile

    path = Path(path)
    if path.suffix.lower() != ".npz" or not zipfile.is_zipfile(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "__meta__" not in npz.files:
                return False
            import json

            return json.loads(npz["__meta__"].tobytes().decode()).get("format") == CANONICAL_FORMAT
    except (ValueError, OSError, KeyError):
        return False


def load_canonical(path: str | os.PathLike) -> CrossModalDataset:
    """A dataset .npz written by ``cmhash data import`` (or :func:`save_canonical`), with its splits."""
    from cmhash.data.protocols import file_sha256
    from cmhash.io import load_arrays

    path = Path(path)
    arrays, meta = load_arrays(path)
    if meta.get("format") != CANONICAL_FORMAT:
        raise ValueError(f"{path}: not a cmhash dataset file (format={meta.get('format')!r})")
    name = meta.get("name") or path.stem
    # selected keys only: a run record spreads info over its dataset entry (name, n, checksum)
    info = {
        "spec": meta.get("spec"), "orientation": meta.get("orientation"), "labels": meta.get("labels"),
        "imported_from_sha256": meta.get("source_sha256"),
        "imported": {k: meta.get(k) for k in ("created", "cmhash_version", "spec_file", "dataset_checksum")},
        "source": [str(path.resolve())], "source_sha256": {path.name: file_sha256(path)},
        "protocol": "shipped", "split": meta.get("split") or "the stored split",
    }
    try:
        full = CrossModalDataset(
            image=arrays["image"], text=arrays["text"], labels=arrays["labels"], views=arrays.get("views"),
            ids=arrays.get("ids"), name=name, info=info, allow_empty_labels=bool(meta.get("allow_empty_labels")),
        )
        splits = {role: full.subset(_indices(arrays[f"split_{role}"], 0, len(full), f"{path}: split_{role}"),
                                    name=f"{name}/{role}") for role in SPLIT_NAMES}
    except KeyError as exc:
        raise ValueError(f"{path}: missing array {exc}; not a complete cmhash dataset file") from exc
    return full.with_splits(**splits)

"""The dataset model: paired image/text features with multi-hot labels and named splits.

A :class:`CrossModalDataset` is validated on construction, so everything downstream (methods,
metrics, the runner) can trust its arrays: 2-D, finite, equal row counts, labels in {0, 1}.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

SPLIT_NAMES = ("train", "query", "database")
MODALITIES = ("image", "text")


def _densified(x: Any) -> Any:
    """scipy.sparse matrices / arrays as dense numpy arrays (np.asarray would make a 0-d object)."""
    return x.toarray() if hasattr(x, "toarray") and hasattr(x, "tocsr") else x


def _as_features(name: str, x: Any, *, where: str) -> np.ndarray:
    try:
        arr = np.asarray(_densified(x))
    except Exception as exc:  # pragma: no cover - numpy gives clear messages itself
        raise ValueError(f"{where}: '{name}' cannot be read as an array: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{where}: '{name}' must be 2-D (items x features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{where}: '{name}' has no rows (shape {arr.shape}); a dataset needs items")
    if arr.shape[1] == 0:
        raise ValueError(f"{where}: '{name}' has no feature columns (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.floating):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{where}: '{name}' must be real-valued numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{where}: '{name}' contains NaN or inf (first at row {bad[0]}, column {bad[1]})"
        )
    return arr


ONE_HOT_HINT = (
    "class indices (one number per item) are converted with cmhash.data.one_hot(labels, base=1) "
    "for classes numbered from 1 (MATLAB), base=0 for classes numbered from 0"
)


def _as_labels(x: Any, *, where: str, allow_empty: bool) -> np.ndarray:
    arr = np.asarray(_densified(x))
    if arr.dtype == object:
        raise ValueError(f"{where}: 'labels' must be a numeric multi-hot matrix, got {type(x).__name__} of objects")
    if arr.ndim != 2:
        raise ValueError(
            f"{where}: 'labels' must be 2-D multi-hot (items x classes), got shape {arr.shape}"
            + (f"; a vector looks like class indices: {ONE_HOT_HINT}" if arr.ndim == 1 else "")
        )
    if arr.shape[1] == 0:
        raise ValueError(f"{where}: 'labels' has no class columns")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ValueError(f"{where}: 'labels' contains NaN or inf")
        values = np.unique(arr)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(_not_multi_hot(arr, values, where))
        arr = arr.astype(np.uint8)
    elif arr.size and arr.max() > 1:
        raise ValueError(_not_multi_hot(arr, np.unique(arr), where))
    if not allow_empty:
        empty = np.flatnonzero(arr.sum(axis=1) == 0)
        if empty.size:
            raise ValueError(
                f"{where}: {empty.size} label rows are empty (first at row {empty[0]}); "
                "pass allow_empty_labels=True if items without labels are intended"
            )
    return arr


def _not_multi_hot(arr: np.ndarray, values: np.ndarray, where: str) -> str:
    message = f"{where}: 'labels' must be multi-hot with values in {{0, 1}}, found {values[:10]}"
    whole = np.issubdtype(values.dtype, np.integer) or bool(np.array_equal(values, np.round(values)))
    if arr.shape[1] == 1 and whole:
        message += f"; one column of whole numbers looks like class indices: {ONE_HOT_HINT}"
    return message


def one_hot(class_index: np.ndarray, num_classes: int | None = None, *, base: int = 1) -> np.ndarray:
    """Class indices (``base``-based, e.g. MATLAB's 1..c) to a multi-hot uint8 matrix."""
    raw = np.asarray(class_index).reshape(-1)
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise ValueError(f"class indices must be integers, got dtype {raw.dtype}")
    if np.issubdtype(raw.dtype, np.floating) and not (
        np.isfinite(raw).all() and (raw == np.round(raw)).all()
    ):
        bad = raw[~(np.isfinite(raw) & (raw == np.round(raw)))][:5]
        raise ValueError(f"class indices must be whole numbers, found {bad}")
    if num_classes is not None and int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if raw.size == 0 and num_classes is None:
        raise ValueError("no class indices given and num_classes is None: the class count is unknown")
    idx = raw.astype(np.int64) - base
    if idx.size and idx.min() < 0:
        raise ValueError(f"class indices must start at {base}, found {idx.min() + base}")
    c = int(idx.max()) + 1 if num_classes is None else int(num_classes)
    if idx.size and idx.max() >= c:
        raise ValueError(f"class index {idx.max() + base} out of range for {c} classes")
    out = np.zeros((idx.size, c), dtype=np.uint8)
    out[np.arange(idx.size), idx] = 1
    return out


@dataclass(frozen=True, eq=False)
class CrossModalDataset:
    """Paired features of two modalities, multi-hot labels and optional named splits.

    Row ``i`` of ``image``, ``text`` and ``labels`` describe the same item (a pair). ``views``
    (n x M x d_image) holds optional augmented image views (DEMO). ``splits`` maps
    ``"train"``, ``"query"``, ``"database"`` to sub-datasets (each a ``CrossModalDataset``).
    ``info`` carries provenance: source file, checksum, protocol, split seed, scenario.
    """

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    views: np.ndarray | None = None
    ids: np.ndarray | None = None
    name: str = "dataset"
    splits: Mapping[str, "CrossModalDataset"] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    allow_empty_labels: bool = False

    def __post_init__(self) -> None:
        where = f"dataset '{self.name}'"
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("image", _as_features("image", self.image, where=where))
        set_("text", _as_features("text", self.text, where=where))
        set_("labels", _as_labels(self.labels, where=where, allow_empty=self.allow_empty_labels))
        n = self.image.shape[0]
        for key in ("text", "labels"):
            if getattr(self, key).shape[0] != n:
                raise ValueError(
                    f"{where}: 'image' has {n} rows but '{key}' has "
                    f"{getattr(self, key).shape[0]}; every row must be one image-text pair"
                )
        if self.views is not None:
            views = np.asarray(self.views)
            if views.ndim != 3 or views.shape[0] != n or views.shape[1] == 0:
                raise ValueError(
                    f"{where}: 'views' must be (items x views x features) with {n} items and at "
                    f"least one view, got shape {views.shape}"
                )
            if views.shape[2] != self.image.shape[1]:
                raise ValueError(
                    f"{where}: 'views' has {views.shape[2]} features per view but 'image' has "
                    f"{self.image.shape[1]}; views are augmented image features of the same size"
                )
            if not (np.issubdtype(views.dtype, np.number) or views.dtype == np.bool_) or np.issubdtype(
                views.dtype, np.complexfloating
            ):
                raise ValueError(f"{where}: 'views' must be numeric, got dtype {views.dtype}")
            if not np.issubdtype(views.dtype, np.floating):
                views = views.astype(np.float64)
            if not np.isfinite(views).all():
                raise ValueError(f"{where}: 'views' contains NaN or inf")
            set_("views", views)
        if self.ids is not None:
            ids = np.asarray(self.ids)
            if ids.shape != (n,):
                raise ValueError(f"{where}: 'ids' must have shape ({n},), got {ids.shape}")
            if np.unique(ids).size != n:
                raise ValueError(f"{where}: 'ids' must be unique, found {n - np.unique(ids).size} duplicates")
            set_("ids", ids)
        for key, split in self.splits.items():
            if key not in SPLIT_NAMES:
                raise ValueError(f"{where}: unknown split '{key}', expected one of {SPLIT_NAMES}")
            if not isinstance(split, CrossModalDataset):
                raise ValueError(f"{where}: split '{key}' must be a CrossModalDataset")
            for arr in ("image", "text"):
                if getattr(split, arr).shape[1] != getattr(self, arr).shape[1]:
                    raise ValueError(
                        f"{where}: split '{key}' has {getattr(split, arr).shape[1]} '{arr}' features "
                        f"but the dataset has {getattr(self, arr).shape[1]}"
                    )
            if split.labels.shape[1] != self.labels.shape[1]:
                raise ValueError(
                    f"{where}: split '{key}' has {split.labels.shape[1]} label classes but the "
                    f"dataset has {self.labels.shape[1]}"
                )
        set_("splits", dict(self.splits))
        set_("info", dict(self.info))

    # ----------------------------------------------------------------- shape
    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    @property
    def dims(self) -> dict[str, int]:
        return {"image": self.image.shape[1], "text": self.text.shape[1]}

    def features(self, modality: str) -> np.ndarray:
        """The feature matrix of ``modality`` ("image" or "text")."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality '{modality}', expected one of {MODALITIES}")
        return self.image if modality == "image" else self.text

    # ---------------------------------------------------------------- splits
    def split(self, name: str) -> "CrossModalDataset":
        if name not in self.splits:
            have = sorted(self.splits) or "none"
            raise KeyError(f"dataset '{self.name}' has no '{name}' split (splits: {have})")
        return self.splits[name]

    @property
    def train(self) -> "CrossModalDataset":
        return self.split("train")

    @property
    def query(self) -> "CrossModalDataset":
        return self.split("query")

    @property
    def database(self) -> "CrossModalDataset":
        return self.split("database")

    def subset(self, indices: np.ndarray, *, name: str | None = None, base: int = 0) -> "CrossModalDataset":
        """Rows ``indices`` (in that order; or a boolean mask) as a new dataset without splits.

        Indices count from ``base`` (0, or 1 for MATLAB's item numbers). Negative indices are
        refused (no counting from the end). 1-based numbers passed as 0-based can be detected
        only when one of them equals n (the item count): that raises with the hint. 1-based
        numbers that all stay below n cannot be told from 0-based ones that skip item 0; state
        ``base=1`` for them (a dataset spec demands the base whenever the values leave it open).
        """
        idx = np.asarray(indices)
        n = len(self)
        where = f"dataset '{self.name}'"
        if base not in (0, 1):
            raise ValueError(f"{where}: base must be 0 or 1, got {base!r}")
        if idx.dtype == np.bool_:
            if idx.shape != (n,):
                raise ValueError(f"{where}: boolean mask must have shape ({n},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise ValueError(
                f"{where}: indices must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}"
            )
        else:
            idx = idx.astype(np.int64) - base
        if idx.size and idx.min() < 0:
            raise ValueError(
                f"{where}: indices must be >= {base} ({base}-based), found {int(idx.min()) + base}; "
                "negative indices (counting from the end) are not accepted"
            )
        if idx.size and idx.max() >= n:
            hint = ""
            if base == 0 and idx.max() == n:
                hint = f"; the largest index equals the item count {n}: 1-based item numbers? pass base=1"
            raise ValueError(
                f"{where}: indices must lie in {base}..{n - 1 + base} for {n} items ({base}-based), "
                f"found {int(idx.max()) + base}{hint}"
            )
        return CrossModalDataset(
            image=self.image[idx],
            text=self.text[idx],
            labels=self.labels[idx],
            views=None if self.views is None else self.views[idx],
            ids=None if self.ids is None else self.ids[idx],
            name=name or self.name,
            info=self.info,
            allow_empty_labels=self.allow_empty_labels,
        )

    def replace(self, **changes: Any) -> "CrossModalDataset":
        """A copy with some fields changed (re-validated)."""
        fields = dict(
            image=self.image, text=self.text, labels=self.labels, views=self.views, ids=self.ids,
            name=self.name, splits=self.splits, info=self.info,
            allow_empty_labels=self.allow_empty_labels,
        )
        fields.update(changes)
        return CrossModalDataset(**fields)

    def with_splits(self, **splits: "CrossModalDataset") -> "CrossModalDataset":
        return self.replace(splits={**self.splits, **splits})

    # ------------------------------------------------------------ provenance
    def checksum(self) -> str:
        """sha256 over the arrays (and those of the splits): identifies the exact data used."""
        h = hashlib.sha256()
        for arr in (self.image, self.text, self.labels, self.views):
            if arr is None:
                continue
            a = np.ascontiguousarray(arr)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.data)
        if self.ids is not None:
            h.update(b"ids")
            h.update("\x1f".join(map(str, self.ids.tolist())).encode())
        for key in sorted(self.splits):
            h.update(key.encode())
            h.update(self.splits[key].checksum().encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        splits = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return (
            f"CrossModalDataset(name={self.name!r}, n={len(self)}, image_dim={self.image.shape[1]}, "
            f"text_dim={self.text.shape[1]}, classes={self.num_classes}"
            + (f", views={self.views.shape[1]}" if self.views is not None else "")
            + (f", splits: {splits}" if splits else "")
            + ")"
        )

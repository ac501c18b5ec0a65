"""Inspect a feature file: list every array and suggest a dataset spec that reads it.

The suggestion is a starting point written out in full (every key stated, with a comment where
it was a guess), so a user reads what will happen before `cmhash data import` runs it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmhash.data.spec import ArrayEntry, DatasetSpec, _index_base, _merged_entries, _vector

SUMMARY_LIMIT = 5_000_000  # arrays up to this many elements get a value summary
IMAGE_HINT = re.compile(r"(^|[/_{])(i|img|image|images|v|vis|visual|x1|xall|iall|photo)s?([_/{}\d]|$)", re.I)
TEXT_HINT = re.compile(r"(^|[/_{])(t|txt|text|texts|tag|tags|bow|y|yall|x2|caption|captions)s?([_/{}\d]|$)", re.I)
LABEL_HINT = re.compile(r"(label|labels|lab|gt|l|y|lall|class|classes|cat|category|target)", re.I)
QUERY_HINT = re.compile(r"(test|query|te\b|_te|tst|val)", re.I)
DATABASE_HINT = re.compile(r"(database|db|retrieval|train|tr\b|_tr)", re.I)


@dataclass
class Inspection:
    """What :func:`inspect_files` found: the arrays, a suggested spec and the guesses it made."""

    entries: dict[str, ArrayEntry]
    summaries: dict[str, str]
    spec: DatasetSpec | None
    guesses: list[str] = field(default_factory=list)
    problem: str | None = None
    layout: str | None = None  # the field's key layout the arrays follow, if any

    def spec_toml(self) -> str:
        """The suggestion as TOML, the guesses as comments above it."""
        if self.spec is None:
            return f"# no spec suggested: {self.problem}\n"
        notes = "".join(f"# check: {g}\n" for g in self.guesses)
        if self.layout:
            notes = f"# {self.layout}\n" + notes
        return notes + self.spec.to_toml()


def inspect_files(files: str | os.PathLike | Sequence[str | os.PathLike]) -> Inspection:
    """List the arrays of ``files`` and suggest a spec (``spec`` is None when no guess fits)."""
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    entries = _merged_entries(paths)
    loaded: dict[str, Any] = {}
    summaries: dict[str, str] = {}
    for path, entry in entries.items():
        if entry._load is None or int(np.prod(entry.shape)) > SUMMARY_LIMIT:
            continue
        value = entry.load()
        value = value.toarray() if hasattr(value, "toarray") else np.asarray(value)
        loaded[path] = value
        summaries[path] = _summary(value)
    resolved = [p.resolve() for p in paths]
    try:
        layout = _known_layout(entries)
        if layout is not None:
            spec, guesses = layout_spec(layout, resolved, entries), []
        else:
            spec, guesses = _suggest(resolved, entries, loaded)
    except _NoSuggestion as exc:
        return Inspection(entries, summaries, None, problem=str(exc))
    said = f"the keys follow the '{layout.name}' layout: {layout.origin}" if layout is not None else None
    return Inspection(entries, summaries, _settled(spec, guesses), guesses, layout=said)


def _known_layout(entries: dict[str, ArrayEntry]) -> Any:
    """The field's key layout these arrays follow (cmhash.data.readers), if any."""
    from cmhash.data.readers import LAYOUTS

    matches = [lay for lay in LAYOUTS if lay.name not in ("npz", "pickle") and set(lay.keys) <= set(entries)]
    return max(matches, key=lambda lay: len(lay.keys)) if matches else None


def layout_spec(layout: Any, files: Sequence[str | os.PathLike],
                entries: dict[str, ArrayEntry] | None = None) -> DatasetSpec:
    """A known key layout (cmhash.data.readers.LAYOUTS) written as a dataset spec for ``files``.

    Orientation and label format are left to :func:`_settled`, which reads them off the data.
    """
    names = list(layout.parts)
    image, text, labels = (tuple(layout.parts[p][k] for p in names) for k in range(3))
    split: dict[str, Any] = {}
    if layout.index_split:
        split = {"base": layout.index_base, **layout.index_split}
        split.setdefault("train", "database")
    elif layout.query is not None:
        split = {"query": layout.query, "database": layout.database, "train": layout.train or "database"}
    one = len(names) == 1
    beside = {}  # cmhash's own files keep views / ids beside each part's image key
    if entries is not None:
        for key in ("views", "ids"):
            paths = tuple(p[: -len("image")] + key for p in image)
            if all(p.endswith("image") for p in image) and all(p in entries for p in paths):
                beside[key] = paths[0] if one else paths
    return DatasetSpec(files=tuple(files), name=Path(files[0]).stem,
                       image=image[0] if one else image, text=text[0] if one else text,
                       labels=labels[0] if one else labels, parts=() if one else tuple(names), split=split,
                       **beside)


def _settled(spec: DatasetSpec, guesses: list[str]) -> DatasetSpec:
    """The suggestion with what its data decides written out: orientation, label format and base."""
    import dataclasses

    from cmhash.data.spec import read_spec

    for _ in range(2):
        try:
            data, _ = read_spec(spec)
        except ValueError as exc:
            if "labels_base" in str(exc) and spec.labels_base is None:
                spec = dataclasses.replace(spec, labels_format="class-index", labels_base=1)
                guesses.append("labels hold class indices without a 0: read as 1-based (MATLAB numbering); "
                               "say labels_base = 0 if class 0 exists")
                continue
            guesses.append(f"the suggestion does not load yet: {exc}")
            return spec
        orient = data.info.get("orientation", {})
        if len(set(orient.values())) == 1:
            orient = next(iter(orient.values()))
        fmt = "class-index" if data.info.get("labels", "").startswith("class indices") else "multi-hot"
        base = spec.labels_base
        if fmt == "class-index" and base is None:
            base = 0  # decided by a 0 in the data
        return dataclasses.replace(spec, orientation=spec.orientation or orient, labels_format=fmt, labels_base=base)
    return spec


class _NoSuggestion(Exception):
    pass


def _summary(value: np.ndarray) -> str:
    if value.size == 0 or value.dtype.kind not in "biuf":
        return ""
    lo, hi = value.min(), value.max()
    if value.dtype.kind == "b" or (lo >= 0 and hi <= 1 and np.isin(value, (0, 1)).all()):
        return "0/1"
    if value.dtype.kind in "iu" or np.array_equal(value, np.round(value)):
        return f"integers {int(lo)}..{int(hi)}"
    return f"{float(lo):.3g}..{float(hi):.3g}"


def _suggest(paths: list[Path], entries: dict[str, ArrayEntry], loaded: dict[str, Any]) -> tuple[DatasetSpec, list[str]]:
    numeric = {p: e for p, e in entries.items() if e._load is not None and e.kind in ("dense", "sparse")}
    matrices = {p: e for p, e in numeric.items() if len(e.shape) == 2 and min(e.shape) > 1}
    vectors = {p: e for p, e in numeric.items() if len(e.shape) in (1, 2) and (len(e.shape) == 1 or min(e.shape) == 1)
               and max(e.shape) > 1}
    # the item count: the size most arrays share (matrices count twice: they are the features)
    votes: dict[int, int] = {}
    for e in matrices.values():
        for size in set(e.shape):
            votes[size] = votes.get(size, 0) + 2
    for e in vectors.values():
        votes[max(e.shape)] = votes.get(max(e.shape), 0) + 1
    if not votes:
        raise _NoSuggestion("no numeric matrices found")
    n = max(votes, key=lambda s: (votes[s], s))
    guesses: list[str] = []
    with_n = {p: e for p, e in matrices.items() if n in e.shape}
    binary = {p for p in with_n if _is_binary(loaded.get(p), numeric[p])}
    label_vectors = [p for p, e in vectors.items() if max(e.shape) == n and _is_whole(loaded.get(p))]
    features = [p for p in with_n if p not in binary or len(with_n) - len(binary) < 2]
    if len(features) < 2:
        raise _NoSuggestion(f"found fewer than two feature matrices with {n} items (arrays: {', '.join(entries)})")
    image, text = _pick_modalities(features, guesses)
    rest = [p for p in with_n if p not in (image, text) and p in binary]
    labels_spec: dict[str, Any]
    if rest:
        labels = max(rest, key=lambda p: (bool(LABEL_HINT.search(p.split("/")[-1])), -len(p)))
        labels_spec = {"labels": labels, "labels_format": "multi-hot"}
    elif label_vectors:
        labels = max(label_vectors, key=lambda p: bool(LABEL_HINT.search(p.split("/")[-1])))
        values = loaded[labels]
        base = 0 if values.min() == 0 else 1
        labels_spec = {"labels": labels, "labels_format": "class-index", "labels_base": base}
        if base == 1:
            guesses.append(f"labels '{labels}' hold class indices {int(values.min())}..{int(values.max())} "
                           "without a 0: read as 1-based (MATLAB numbering); say labels_base = 0 if class 0 exists")
    else:
        raise _NoSuggestion(f"no label array with {n} items found (multi-hot 0/1 matrix or class-index vector)")
    if len(rest) > 1 or len(label_vectors) > 1:
        guesses.append(f"labels: chose '{labels}' among {sorted(set(rest) | set(label_vectors))}")
    orientation = {}
    for role, p in (("image", image), ("text", text), ("labels", labels)):
        shape = numeric[p].shape
        if len(shape) == 2 and min(shape) > 1:
            if shape[0] == shape[1]:
                guesses.append(f"{role} '{p}' is square: orientation guessed")
            orientation[role] = "items-by-features" if shape[0] == n else "features-by-items"
    orient: Any = orientation
    if len(set(orientation.values())) == 1:
        orient = next(iter(orientation.values()))
    split = _suggest_split(vectors, loaded, n, labels, guesses)
    name = paths[0].stem
    spec = DatasetSpec(files=tuple(paths), name=name, image=image, text=text, orientation=orient, split=split,
                       **labels_spec)
    return spec, guesses


def _is_binary(value: Any, entry: ArrayEntry) -> bool:
    if entry.dtype == "bool":
        return True
    return value is not None and value.size > 0 and bool(np.isin(value, (0, 1)).all())


def _is_whole(value: Any) -> bool:
    return value is not None and value.size > 0 and value.dtype.kind in "biuf" and bool(
        np.array_equal(value, np.round(value))) and value.min() >= 0


def _pick_modalities(features: list[str], guesses: list[str]) -> tuple[str, str]:
    image = [p for p in features if IMAGE_HINT.search(p)]
    text = [p for p in features if TEXT_HINT.search(p) and p not in image]
    if image and text:
        return image[0], text[0]
    chosen = (features[0], features[1])
    guesses.append(f"image = '{chosen[0]}', text = '{chosen[1]}' in file order (the names do not say which is which)")
    return chosen


def _suggest_split(vectors: dict[str, ArrayEntry], loaded: dict[str, Any], n: int, labels: str,
                   guesses: list[str]) -> dict[str, Any]:
    """Index vectors named like a split (test / query, train / database), with their base."""
    candidates = {p: _vector(loaded[p]) for p, e in vectors.items()
                  if p != labels and p in loaded and max(e.shape) < n and _is_whole(loaded[p]) and loaded[p].max() <= n}
    query = [p for p in candidates if QUERY_HINT.search(p.split("/")[-1])]
    database = [p for p in candidates if DATABASE_HINT.search(p.split("/")[-1]) and p not in query]
    if not query:
        guesses.append("no split arrays found: add a [dataset.split] table (index arrays, counts, or "
                       "protocol = 'deep-supervised') before `cmhash data import`")
        return {}
    split: dict[str, Any] = {"query": query[0]}
    split["database"] = database[0] if database else "rest"
    split["train"] = "database"
    arrays = {r: candidates[p] for r, p in split.items() if p in candidates}
    try:
        split["base"] = _index_base(arrays, split, n, "")
    except ValueError:
        split["base"] = 1
        guesses.append(f"split indices could be 0- or 1-based: read as 1-based (MATLAB); say base = 0 if not")
    return split

"""A user's raw inputs: a folder of images and a captions file naming, per row, an image, its
caption and its labels.

Captions file formats (chosen by suffix):

* ``.jsonl`` -- one JSON object per line: ``{"image": "cats/1.jpg", "caption": "a cat",
  "labels": ["cat", "indoor"]}``; ``labels`` may be a list or a single name (numbers are names too).
* ``.tsv`` / ``.csv`` -- a header row with the columns ``image``, ``caption`` and ``labels``
  (in any order; more columns are ignored); several labels in one cell are separated by ``|``.

``image`` is a path relative to the images folder. An image may appear in several rows (e.g.
MS-COCO's five captions per image): it is encoded once, and the rows' ids become
``path#1``, ``path#2``, ... Label names are sorted; the label matrix is multi-hot in that order.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CAPTION_SUFFIXES = (".jsonl", ".tsv", ".csv")
LABEL_SEPARATOR = "|"


@dataclass(frozen=True)
class Pairs:
    """Rows of (image file, caption, labels) read from a captions file."""

    images_dir: Path
    image_files: tuple[str, ...]  # per row, relative to images_dir
    captions: tuple[str, ...]
    labels: np.ndarray  # rows x classes, uint8 multi-hot
    label_names: tuple[str, ...]
    ids: tuple[str, ...]
    source: Path

    def __len__(self) -> int:
        return len(self.captions)

    def unique_images(self) -> tuple[list[str], np.ndarray]:
        """The distinct image files (first-seen order) and, per row, the position of its image."""
        position: dict[str, int] = {}
        for name in self.image_files:
            position.setdefault(name, len(position))
        return list(position), np.array([position[name] for name in self.image_files], dtype=np.int64)


def read_pairs(images_dir: str | os.PathLike, captions_file: str | os.PathLike, *,
               allow_unlabelled: bool = False) -> Pairs:
    """Read and check a captions file against an images folder; errors name the file and row."""
    images_dir, captions_file = Path(images_dir), Path(captions_file)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: no such folder (the images folder)")
    if not captions_file.is_file():
        raise FileNotFoundError(f"{captions_file}: no such file (the captions file)")
    suffix = captions_file.suffix.lower()
    if suffix not in CAPTION_SUFFIXES:
        raise ValueError(
            f"{captions_file}: unknown captions format '{suffix}'; expected one of {', '.join(CAPTION_SUFFIXES)}"
        )
    rows = _read_jsonl(captions_file) if suffix == ".jsonl" else _read_table(captions_file, suffix)
    if not rows:
        raise ValueError(f"{captions_file}: no rows; expected one row per image-caption pair")
    image_files, captions, label_sets = [], [], []
    for where, image, caption, labels in rows:
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{where}: 'image' must be a file name relative to {images_dir}, got {image!r}")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: 'caption' must be non-empty text, got {caption!r}")
        path = images_dir / image
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image '{image}' not found in {images_dir}")
        if not labels and not allow_unlabelled:
            raise ValueError(
                f"{where}: no labels; every pair needs at least one label (evaluation and supervised "
                "methods use them). Pass allow_unlabelled=True (--allow-unlabelled) to keep such rows"
            )
        image_files.append(image)
        captions.append(caption.strip())
        label_sets.append(labels)
    names = sorted({name for labels in label_sets for name in labels})
    if not names:
        raise ValueError(f"{captions_file}: no row has a label; a cmhash dataset needs at least one class")
    column = {name: j for j, name in enumerate(names)}
    matrix = np.zeros((len(rows), len(names)), dtype=np.uint8)
    for i, labels in enumerate(label_sets):
        matrix[i, [column[name] for name in labels]] = 1
    return Pairs(images_dir=images_dir, image_files=tuple(image_files), captions=tuple(captions),
                 labels=matrix, label_names=tuple(names), ids=_row_ids(image_files), source=captions_file)


def _row_ids(image_files: list[str]) -> tuple[str, ...]:
    """The image file per row; ``file#k`` (k = 1, 2, ...) when a file has several rows."""
    counts: dict[str, int] = {}
    for name in image_files:
        counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    ids = []
    for name in image_files:
        if counts[name] == 1:
            ids.append(name)
        else:
            seen[name] = seen.get(name, 0) + 1
            ids.append(f"{name}#{seen[name]}")
    return tuple(ids)


def _label_list(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{where}: 'labels' must be a name or a list of names, got {value!r}")
    return sorted({str(v).strip() for v in value if str(v).strip()})


def _read_jsonl(path: Path) -> list[tuple[str, object, object, list[str]]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object with 'image', 'caption', 'labels'")
            missing = [k for k in ("image", "caption") if k not in obj]
            if missing:
                raise ValueError(f"{where}: missing key(s) {missing}; expected 'image', 'caption', 'labels'")
            rows.append((where, obj["image"], obj["caption"], _label_list(obj.get("labels"), where)))
    return rows


def _read_table(path: Path, suffix: str) -> list[tuple[str, object, object, list[str]]]:
    delimiter = "\t" if suffix == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [k for k in ("image", "caption") if k not in header]
        if missing:
            raise ValueError(
                f"{path}: the header row lacks column(s) {missing}; expected columns image, caption, labels "
                f"(found {header})"
            )
        rows = []
        for number, record in enumerate(reader, start=2):
            record = {(k or "").strip(): v for k, v in record.items()}
            where = f"{path}, line {number}"
            labels = (record.get("labels") or "").split(LABEL_SEPARATOR)
            rows.append((where, record["image"], record["caption"], _label_list(labels, where)))
    return rows

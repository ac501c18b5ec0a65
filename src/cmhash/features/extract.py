"""The raw-input pipeline: images folder + captions file -> one feature file with provenance.

The file is a cmhash ``.npz`` that :func:`cmhash.load_dataset` reads (``cmhash.data.readers``):

* without a query split: ``image`` (n x d_i), ``text`` (n x d_t), ``labels`` (n x c, multi-hot),
  ``ids`` (n, the image file per row), optional ``views`` (n x M x d_i);
* with ``query=N``: the same keys under ``database/`` and ``query/`` (layout ``features``), so the
  file's own split is the protocol ``shipped`` and ``cmhash train --dataset FILE`` works as is;
* always: ``label_names`` (c), ``text_vocabulary`` (bag-of-words / TF-IDF / LDA encoders), and the
  provenance record (``__meta__``: encoders, weights files and sha256, preprocessing, DEMO view
  recipe, split, seed, captions file sha256, versions).

Images are encoded once each, even when several rows (captions) name the same file; views are M
augmentations of each image (DEMO, :mod:`cmhash.features.image_encoders`) through the same
encoder, drawn from a torch generator seeded by ``seed``.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmhash.features.image_encoders import ImageEncoder
from cmhash.features.pairs import Pairs, read_pairs
from cmhash.features.text_encoders import TextEncoder
from cmhash.progress import Progress, ensure_progress

FORMAT = "cmhash features 1"


def extract_features(
    images_dir: str | os.PathLike,
    captions_file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    views: int = 0,
    query: int = 0,
    batch_size: int = 32,
    seed: int = 0,
    allow_unlabelled: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Encode every pair of ``captions_file`` and write the feature file ``out``; returns its provenance.

    ``views``: M augmented views per image for DEMO (0: none). ``query``: the number of images
    whose rows form a seeded random query split (0: no split in the file).
    """
    if int(views) != views or views < 0:
        raise ValueError(f"views must be a whole number >= 0, got {views!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    progress = ensure_progress(progress)
    pairs = read_pairs(images_dir, captions_file, allow_unlabelled=allow_unlabelled)
    files, row_image = pairs.unique_images()
    query_rows = _query_rows(query, row_image, len(files), seed)
    image = encode_images(image_encoder, pairs.images_dir, files, batch_size=batch_size, progress=progress)
    view_features = None
    if views:
        view_features = encode_views(image_encoder, pairs.images_dir, files, int(views), seed=seed,
                                     batch_size=batch_size, progress=progress)
    text = text_encoder.encode(pairs.captions, batch_size=max(batch_size, 64), progress=progress)
    progress.close()
    rows = {"image": image[row_image], "text": text, "labels": pairs.labels, "ids": np.asarray(pairs.ids, dtype=str)}
    if view_features is not None:
        rows["views"] = view_features[row_image]
    arrays = _layout(rows, query_rows)
    arrays["label_names"] = np.asarray(pairs.label_names, dtype=str)
    if text_encoder.vocabulary is not None:
        arrays["text_vocabulary"] = text_encoder.vocabulary
    meta = _provenance(pairs, image_encoder, text_encoder, views=int(views), query_rows=query_rows,
                       query_images=int(query), n_images=len(files), seed=seed, batch_size=batch_size,
                       dims=(image.shape[1], text.shape[1]))
    from cmhash.io import save_arrays

    save_arrays(out, arrays, meta)
    return meta


def encode_images(encoder: ImageEncoder, folder: Path, files: Sequence[str], *, batch_size: int = 32,
                  progress: Progress | None = None) -> np.ndarray:
    """Features of each image file (rows in order), through the encoder's evaluation transform."""
    import torch

    progress = ensure_progress(progress)
    progress.start(len(files), "images")
    out = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch = torch.stack([encoder.transform(_open_rgb(folder / name)) for name in chunk])
        out.append(encoder.encode(batch).cpu().numpy())
        progress.advance(len(chunk))
    return np.concatenate(out).astype(np.float32)


def encode_views(encoder: ImageEncoder, folder: Path, files: Sequence[str], views: int, *, seed: int = 0,
                 batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
    """``views`` DEMO augmentations of each image through the encoder: (images x views x d)."""
    import torch

    progress = ensure_progress(progress)
    progress.start(len(files), f"views (M = {views})")
    augment = encoder.view_transform()
    per_batch = max(1, batch_size // views)
    out = []
    with torch.random.fork_rng(devices=[]):  # the transforms draw from torch's global generator
        torch.manual_seed(seed)
        for start in range(0, len(files), per_batch):
            chunk = files[start:start + per_batch]
            images = [_open_rgb(folder / name) for name in chunk]
            batch = torch.stack([augment(img) for img in images for _ in range(views)])
            feats = encoder.encode(batch).cpu().numpy()
            out.append(feats.reshape(len(chunk), views, -1))
            progress.advance(len(chunk))
    return np.concatenate(out).astype(np.float32)


def _open_rgb(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot read as an image ({type(exc).__name__}: {exc})") from exc


def _query_rows(query: int, row_image: np.ndarray, n_images: int, seed: int) -> np.ndarray | None:
    """Rows of ``query`` seeded random images (all their captions), or None for no split."""
    if int(query) != query or query < 0:
        raise ValueError(f"query must be a whole number >= 0, got {query!r}")
    if query == 0:
        return None
    if query >= n_images:
        raise ValueError(f"query = {query} images leaves no database: the captions file names {n_images} images")
    chosen = np.random.default_rng(seed).permutation(n_images)[:query]
    return np.flatnonzero(np.isin(row_image, chosen))


def _layout(rows: dict[str, np.ndarray], query_rows: np.ndarray | None) -> dict[str, np.ndarray]:
    if query_rows is None:
        return dict(rows)
    is_query = np.zeros(len(rows["text"]), dtype=bool)
    is_query[query_rows] = True
    arrays = {}
    for part, mask in (("database", ~is_query), ("query", is_query)):
        arrays.update({f"{part}/{key}": value[mask] for key, value in rows.items()})
    return arrays


def _provenance(pairs: Pairs, image_encoder: ImageEncoder, text_encoder: TextEncoder, *, views: int,
                query_rows: np.ndarray | None, query_images: int, n_images: int, seed: int, batch_size: int,
                dims: tuple[int, int]) -> dict[str, Any]:
    from cmhash.features._torchvision_compat import guard_applied
    from cmhash.data.protocols import file_sha256
    from cmhash.record import versions

    libs = versions()
    for name in ("torchvision", "open_clip", "sklearn", "PIL"):
        module = sys.modules.get(name)
        if module is not None:
            libs[name] = getattr(module, "__version__", "?")
    n = len(pairs)
    return {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "images_dir": str(pairs.images_dir.resolve()),
        "captions_file": str(pairs.source.resolve()),
        "captions_sha256": file_sha256(pairs.source),
        "items": n, "images": n_images, "classes": len(pairs.label_names),
        "dims": {"image": dims[0], "text": dims[1]},
        "image": image_encoder.provenance(),
        "text": text_encoder.provenance(),
        "views": None if not views else {"per_image": views, "seed": seed, **image_encoder.view_provenance()},
        "split": ({"query": 0, "database": n, "note": "no split in the file; state one when loading"}
                  if query_rows is None else
                  {"query": int(query_rows.size), "database": n - int(query_rows.size),
                   "drawn": "every row of query_images images drawn by numpy default_rng(seed).permutation",
                   "query_images": query_images, "seed": seed}),
        "seed": seed, "batch_size": batch_size,
        "versions": libs,
        "torchvision_compat_guard": guard_applied(),
    }

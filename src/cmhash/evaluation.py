"""Evaluate a trained model on a dataset's query/database splits in both directions."""

from __future__ import annotations

from typing import Any

from cmhash.codes import PackedCodes
from cmhash.data.dataset import CrossModalDataset
from cmhash.methods.base import HashModel
from cmhash.metrics import mean_average_precision

DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image")}


def database_codes(model: HashModel, database: CrossModalDataset, modality: str) -> PackedCodes:
    """The model's own database codes (e.g. DCGH's H) if it has them, else encode the database."""
    codes = model.database_codes(modality)
    if codes is None:
        return model.encode(modality, database.features(modality))
    if len(codes) != len(database):
        raise ValueError(
            f"the model's {modality} database codes cover {len(codes)} items but the database "
            f"split has {len(database)}; evaluate on the split the model was trained on, or "
            "encode the database instead"
        )
    return codes


def direction_codes(model: HashModel, dataset: CrossModalDataset) -> dict[str, tuple[PackedCodes, PackedCodes]]:
    """For each direction ("i2t", "t2i"): (query codes, database codes)."""
    query, database = dataset.query, dataset.database
    return {
        direction: (model.encode(q_mod, query.features(q_mod)), database_codes(model, database, db_mod))
        for direction, (q_mod, db_mod) in DIRECTIONS.items()
    }


def map_by_direction(
    codes: dict[str, tuple[PackedCodes, PackedCodes]], dataset: CrossModalDataset, *, topk: int | None = None
) -> dict[str, Any]:
    """mAP (@all, or @``topk``) of each direction's (query, database) codes."""
    return {
        direction: mean_average_precision(
            q, db, dataset.query.labels, dataset.database.labels, topk=topk
        ).as_dict()
        for direction, (q, db) in codes.items()
    }


def evaluate(model: HashModel, dataset: CrossModalDataset, *, topk: int | None = None) -> dict[str, Any]:
    """mAP (@all, or @``topk``) for image->text and text->image on query vs database."""
    return map_by_direction(direction_codes(model, dataset), dataset, topk=topk)
